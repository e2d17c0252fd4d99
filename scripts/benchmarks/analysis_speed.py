"""Family 4: analysis speed on synthetic traces. The hot-path table figures come from the colleague's
scripts/bench_analysis.py (its trace generator and its measuring child, reused as is); this module adds the
speedscope export of the same files, measured the same way: a fresh process per file, events/s over
read + export, and peak RSS per event above the post-import baseline."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_analysis import MEASURING_PRELUDE

from benchmarks.common import PYTHON, REPOSITORY, BenchmarkError

_EXPORT_CHILD = MEASURING_PRELUDE + r"""
from arena_trace.analysis.trace_reader import read_trace
from arena_trace.commands.flamegraph import export
baseline = status("VmRSS")
started = time.perf_counter()
trace = read_trace(sys.argv[1])
loaded = time.perf_counter()
export(trace, "speedscope", sys.argv[2], force=True)
done = time.perf_counter()
print(json.dumps({"events": len(trace.events), "baseline": baseline, "peak": status("VmHWM"),
                  "load_s": loaded - started, "export_s": done - loaded}))
"""


def _bench_analysis_module():
    """scripts/bench_analysis.py is a script, not a package module: load it by path."""
    path = REPOSITORY / "scripts" / "bench_analysis.py"
    specification = importlib.util.spec_from_file_location("bench_analysis", path)
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module


def _export(trace_path: Path, output: Path, timeout: float) -> dict[str, Any]:
    try:
        completed = subprocess.run([str(PYTHON), "-c", _EXPORT_CHILD, str(trace_path), str(output)],
                                   capture_output=True, text=True, cwd=REPOSITORY, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"speedscope export did not finish within {timeout:.0f} s") from None
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no message"])[-1]
        raise BenchmarkError(f"speedscope export failed (status {completed.returncode}): {last}")
    return json.loads(completed.stdout)


def run(event_counts: list[int], log, export_timeout: float = 240) -> dict[str, Any]:
    bench_analysis = _bench_analysis_module()
    sys.path.insert(0, str(REPOSITORY / "tests"))
    from synthetic import write_large_trace  # noqa: PLC0415 - tests/ is put on the path just above

    rows = []
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as directory:
        for count in event_counts:
            path = Path(directory) / f"bench-{count}.atrace"
            started = time.perf_counter()
            write_large_trace(path, count)
            written = time.perf_counter() - started
            result = bench_analysis.measure(path)
            events = result["events"]
            row: dict[str, Any] = {
                "events": events, "file_bytes_per_event": path.stat().st_size / events, "write_s": written,
                "load_s": result["load_s"], "hot_path_s": result["hot_path_s"],
                "hot_path_events_per_second": events / result["hot_path_s"],
                "load_and_hot_path_events_per_second": events / (result["load_s"] + result["hot_path_s"]),
                "analysis_peak_bytes_per_event": (result["peak"] - result["baseline"]) / events,
                "paths": result["paths"],
            }
            log(f"  {events:,} events: hot-path table {row['hot_path_events_per_second'] / 1e6:.1f} M events/s, "
                f"load + table {row['load_and_hot_path_events_per_second'] / 1e6:.1f} M events/s, "
                f"{row['analysis_peak_bytes_per_event']:.1f} B/event")
            output = Path(directory) / f"bench-{count}.speedscope.json"
            try:
                exported = _export(path, output, export_timeout)
                row["export_s"] = exported["export_s"]
                row["export_events_per_second"] = events / exported["export_s"]
                row["load_and_export_events_per_second"] = events / (exported["load_s"] + exported["export_s"])
                row["export_peak_bytes_per_event"] = (exported["peak"] - exported["baseline"]) / events
                row["speedscope_bytes"] = output.stat().st_size
                log(f"  {events:,} events: speedscope export {row['export_events_per_second'] / 1e6:.2f} M events/s, "
                    f"{row['export_peak_bytes_per_event']:.0f} B/event, file {row['speedscope_bytes'] / 2**20:.1f} MiB")
            except BenchmarkError as error:
                row["export_error"] = str(error)
                log(f"  {events:,} events: {error}")
            output.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            rows.append(row)
    return {"rows": rows, "target_events_per_second": bench_analysis.TARGET_EVENTS_PER_SECOND,
            "target_bytes_per_event": bench_analysis.TARGET_BYTES_PER_EVENT}
