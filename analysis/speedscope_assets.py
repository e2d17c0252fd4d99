"""Where the speedscope web app and its JSON schema are: the npm package ``speedscope`` installed by
``scripts/install-speedscope`` into a project-local directory (no internet needed at run time)."""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT_VARIABLE = "ARENA_TRACE_SPEEDSCOPE_DIR"
INSTALL_HINT = ("install it with `scripts/install-speedscope` (needs the Debian packages nodejs and npm), "
                f"or point ${ENVIRONMENT_VARIABLE} at a directory holding node_modules/speedscope")
_REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
_RELEASE = Path("node_modules", "speedscope", "dist", "release")


def _candidates() -> list[Path]:
    candidates = []
    configured = os.environ.get(ENVIRONMENT_VARIABLE)
    if configured:
        base = Path(configured)
        # Accept the install prefix, the package directory or the release directory itself.
        candidates += [base / _RELEASE, base / "dist" / "release", base]
    candidates.append(_REPOSITORY_ROOT / ".cache" / "speedscope" / _RELEASE)
    return candidates


def release_directory() -> Path | None:
    """The directory holding speedscope's index.html, or None when speedscope is not installed."""
    for candidate in _candidates():
        if (candidate / "index.html").is_file():
            return candidate
    return None


def schema_path() -> Path | None:
    directory = release_directory()
    if directory is None:
        return None
    path = directory / "file-format-schema.json"
    return path if path.is_file() else None
