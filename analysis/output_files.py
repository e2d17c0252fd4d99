"""Writing export files: never over an existing file without --force, never a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from arena_trace.errors import OutputError


def check_writable(path: Path, force: bool, what: str = "") -> Path:
    """Fail early (before any work, before probes are attached) when the output exists and --force was not
    given, or cannot be written; ``what`` names it in the message ("trace file")."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if path.exists() and path.is_dir():
        raise OutputError(f"{label} is a directory")
    if path.exists() and not force:
        raise OutputError(f"{label} already exists (use --force to overwrite)")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"cannot write {label}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise OutputError(f"cannot write {label}: directory {directory} is not writable")
    return path


def write_bytes(path: Path, data: bytes, force: bool) -> None:
    """Write to a temporary file beside ``path`` and move it into place, so a reader (or a crash) never sees a
    partial export; without ``force`` the final link fails if ``path`` appeared in the meantime."""
    check_writable(path, force)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        if force:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    except FileExistsError:
        raise OutputError(f"{path} already exists (use --force to overwrite)") from None
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
