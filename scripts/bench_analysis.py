#!/usr/bin/env python3
"""Scale benchmark for `arena-trace analyze` (issue 4: >= 5 M events/s for hot-path tables, <= 64 B/event).

Writes synthetic trace files of 1 M and 10 M events, then, in a fresh subprocess per file (so peak RSS is
that run's alone): import, note the baseline RSS, read the file, build the hot-path (per call path) and
per-function tables. Prints events/s and peak RSS per event above the post-import baseline, with ratios to
the targets. Usage: scripts/bench_analysis.py [--events 1000000 10000000] [--directory DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_EVENTS_PER_SECOND = 5_000_000
TARGET_BYTES_PER_EVENT = 64
REPOSITORY = Path(__file__).resolve().parent.parent

# The start of every measuring child: peak and current RSS from /proc (shared with scripts/benchmarks).
MEASURING_PRELUDE = r"""
import json, sys, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
"""

_CHILD = MEASURING_PRELUDE + r"""
from arena_trace.analysis.aggregate import Analysis
from arena_trace.analysis.trace_reader import read_trace
baseline = status("VmRSS")
started = time.perf_counter()
trace = read_trace(sys.argv[1])
loaded = time.perf_counter()
analysis = Analysis(trace)
paths = analysis.path_stats
hot = time.perf_counter()
functions = analysis.function_stats
done = time.perf_counter()
print(json.dumps({"events": len(trace.events), "baseline": baseline, "peak": status("VmHWM"),
                  "load_s": loaded - started, "hot_path_s": hot - loaded, "functions_s": done - hot,
                  "in_memory_bytes": int(trace.events.memory_usage(index=False).sum()), "paths": len(paths)}))
"""


def measure(path: Path) -> dict:
    output = subprocess.run([sys.executable, "-c", _CHILD, str(path)], check=True, capture_output=True, text=True,
                            cwd=REPOSITORY)
    return json.loads(output.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--directory", type=Path, default=None, help="where to write the trace files")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    arguments = parser.parse_args()
    sys.path.insert(0, str(REPOSITORY / "tests"))
    from synthetic import write_large_trace

    with tempfile.TemporaryDirectory(dir=arguments.directory) as directory:
        for count in arguments.events:
            path = Path(directory) / f"bench-{count}.atrace"
            started = time.perf_counter()
            write_large_trace(path, count)
            written = time.perf_counter() - started
            result = measure(path)
            events = result["events"]
            hot_rate = events / result["hot_path_s"]
            end_to_end = events / (result["load_s"] + result["hot_path_s"])
            per_event = (result["peak"] - result["baseline"]) / events
            size = path.stat().st_size / events
            print(f"{events:>11,} events  file {size:5.1f} B/event (written in {written:.1f} s)")
            print(f"    load {result['load_s']:.2f} s, hot-path table {result['hot_path_s']:.2f} s "
                  f"({result['paths']} paths), function table {result['functions_s']:.2f} s")
            print(f"    hot-path table: {hot_rate / 1e6:6.1f} M events/s  ({hot_rate / TARGET_EVENTS_PER_SECOND:.2f}x "
                  f"the 5 M/s target); load + table: {end_to_end / 1e6:.1f} M events/s "
                  f"({end_to_end / TARGET_EVENTS_PER_SECOND:.2f}x)")
            print(f"    memory: peak RSS {result['peak'] / 2**20:.0f} MiB, baseline after imports "
                  f"{result['baseline'] / 2**20:.0f} MiB -> {per_event:.1f} B/event above baseline "
                  f"({TARGET_BYTES_PER_EVENT / per_event:.2f}x the 64 B target; events frame "
                  f"{result['in_memory_bytes'] / events:.0f} B/event)")
            if arguments.keep:
                kept = Path.cwd() / path.name
                path.replace(kept)
                print(f"    kept {kept.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
