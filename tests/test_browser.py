"""End to end in the real speedscope app, in real headless Chromium (Debian package `chromium`).

Each export is served with `arena-trace view`'s server on 127.0.0.1 and loaded in the sandwich view, whose
table lists frame names as DOM text (the flamegraph itself is drawn on a canvas); the DOM is dumped after a
virtual-time budget. Nothing is skipped: a missing browser or speedscope is a failure saying how to install it.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from arena_trace.analysis import export_pprof, export_speedscope
from arena_trace.analysis.export_folded import folded_lines
from arena_trace.analysis.profiles import Metric, build_profiles
from arena_trace.analysis.speedscope_assets import INSTALL_HINT, release_directory
from export_fixtures import make_export_trace

from arena_trace.commands.view import ProfileServer, load_profile

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
ERROR_TEXTS = ("Something went wrong", "Unrecognized format", "Cannot load a profile")


def chromium() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    pytest.fail("headless Chromium is missing: install it with `apt-get install -y chromium` "
                "(Debian package chromium)")


def speedscope() -> Path:
    directory = release_directory()
    if directory is None:
        pytest.fail(f"the speedscope web app is missing: {INSTALL_HINT}")
    return directory


def page_text(name: str, profile: bytes, view: str = "sandwich") -> tuple[str, str]:
    """(visible DOM text, browser log) of speedscope showing ``profile``."""
    browser = chromium()
    with ProfileServer(speedscope(), name, profile) as server, tempfile.TemporaryDirectory() as user_data:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={user_data}", "--window-size=1280,800", "--virtual-time-budget=5000",
             "--dump-dom", server.url(view)],
            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    text = html.unescape(re.sub(r"<[^>]+>", "\n", result.stdout))
    return re.sub(r"\n\s*", "\n", text), result.stderr


def assert_loaded(text: str, log: str, title: str, names: list[str]) -> None:
    for error in ERROR_TEXTS:
        assert error not in text, f"speedscope shows {error!r}"
    page_errors = [line for line in log.splitlines()
                   if "CONSOLE" in line and re.search(r"Uncaught|Error|rror loading|Failed to", line)]
    assert page_errors == [], page_errors
    assert f"{title} - speedscope" in text, text[:500]  # the document title once a profile has loaded
    missing = [name for name in names if f"\n{name}\n" not in text]
    assert missing == [], f"not shown: {missing}\n{text[:3000]}"


def test_speedscope_export_opens_in_speedscope() -> None:
    document = export_speedscope.build_document(make_export_trace())
    text, log = page_text("trace.speedscope.json", export_speedscope.to_json(document))
    profile_names = [profile["name"] for profile in document["profiles"]]
    assert_loaded(text, log, document["name"], [*profile_names, "sysmalloc", "brk", "__lll_lock_wait_private",
                                                 "handle_request", "[no stack]", "mprotect"])
    assert f"(1/{len(profile_names)})" in text
    # The profile picker shows each profile's total in its unit: these are the report's numbers.
    assert "221.00µs" in text and "264.00 KB" in text and "1,313" in text


def test_timeline_profile_opens_in_speedscope() -> None:
    document = export_speedscope.build_document(make_export_trace())
    index = next(i for i, profile in enumerate(document["profiles"]) if profile["name"].startswith("timeline"))
    document["activeProfileIndex"] = index
    text, log = page_text("timeline.speedscope.json", export_speedscope.to_json(document))
    assert_loaded(text, log, document["name"], ["new_heap", "mmap", "mprotect", "sysmalloc"])
    assert f"({index + 1}/{len(document['profiles'])})" in text


def test_trace_file_served_by_view_opens_in_speedscope(tmp_path: Path) -> None:
    from synthetic import make_trace, write_trace_file

    name, profile = load_profile(write_trace_file(make_trace(), tmp_path / "recording.atrace"))
    assert name == "recording.speedscope.json"
    text, log = page_text(name, profile)
    assert_loaded(text, log, json.loads(profile)["name"],
                  ["allocator time, all threads", "arena lock wait, all threads", "sysmalloc", "arena_get2",
                   "__lll_lock_wait_private", "brk"])


def test_folded_export_opens_in_speedscope() -> None:
    profile = build_profiles(make_export_trace(), [Metric.ALLOCATOR_TIME])[Metric.ALLOCATOR_TIME]
    data = ("\n".join(folded_lines(profile)) + "\n").encode()
    text, log = page_text("allocator-time.folded", data)
    assert_loaded(text, log, "allocator-time.folded", ["sysmalloc", "brk", "handle_request", "[no stack]",
                                                       'worker: "quoted" name'])


def test_pprof_export_opens_in_speedscope() -> None:
    import gzip

    data = gzip.compress(export_pprof.build_profile(make_export_trace()), mtime=0)
    text, log = page_text("trace.pb.gz", data)
    assert_loaded(text, log, "trace.pb.gz", ["sysmalloc", "brk", "handle_request", "__lll_lock_wait_private"])


def test_broken_file_is_detected() -> None:
    """The check above would notice a file speedscope cannot open (the case the validator exists for)."""
    broken = {"$schema": "https://www.speedscope.app/file-format-schema.json", "shared": {"frames": []},
              "profiles": [{"type": "evented", "name": "broken", "unit": "none", "startValue": 0, "endValue": 1,
                            "events": [{"type": "O", "frame": 5, "at": 0}]}]}
    text, _log = page_text("broken.speedscope.json", json.dumps(broken).encode())
    assert "Something went wrong" in text


def test_real_recording_exports_open_in_speedscope(tmp_path: Path) -> None:
    """A real recording of the workload (glibc arena contention), exported by the CLI in all three formats,
    opens in speedscope with the recorded frames, and the speedscope totals equal the analyze report's."""
    import gzip

    from arena_trace.analysis.profiles import metric_total
    from arena_trace.analysis.trace_reader import read_trace
    from tracing import arena_trace, build_native, run_workload_traced

    build_native()
    for _attempt in range(3):  # lock waits depend on scheduling on these ~1-core VMs
        run = run_workload_traced(tmp_path, ["--scenario", "contention", "--threads", "8", "--iterations", "100000"],
                                  environment={"MALLOC_ARENA_MAX": "1"})
        assert run.returncode == 0, run.stderr
        if run.summary["lock_waits"]["waits"]:
            break
    assert run.summary["lock_waits"]["waits"] > 0, "3 runs of the contention scenario saw no arena lock wait"
    frames = ["__lll_lock_wait_private", "worker", "start_thread", "main"]
    outputs = {"speedscope": tmp_path / "real.speedscope.json", "folded": tmp_path / "real.folded",
               "pprof": tmp_path / "real.pb.gz"}
    for output_format, path in outputs.items():
        metric = ["--metric", "allocator-time"] if output_format == "folded" else []
        result = arena_trace("flamegraph", str(run.trace_path), "--format", output_format, "-o", str(path), *metric)
        assert result.returncode == 0, result.stderr
    document = json.loads(outputs["speedscope"].read_text())
    text, log = page_text("real.speedscope.json", outputs["speedscope"].read_bytes())
    assert_loaded(text, log, document["name"], frames)
    lock_profile = next(profile for profile in document["profiles"] if profile["name"].startswith("arena lock wait"))
    trace = read_trace(run.trace_path)
    assert lock_profile["endValue"] - lock_profile["startValue"] == metric_total(trace, Metric.LOCK_WAIT)
    assert metric_total(trace, Metric.LOCK_WAIT) == run.summary["lock_waits"]["total_ns"]
    folded = next(tmp_path.glob("real*.folded"))
    text, log = page_text(folded.name, folded.read_bytes())
    assert_loaded(text, log, folded.name, frames)
    text, log = page_text("real.pb.gz", outputs["pprof"].read_bytes())
    assert_loaded(text, log, "real.pb.gz", frames)
    assert gzip.decompress(outputs["pprof"].read_bytes())
