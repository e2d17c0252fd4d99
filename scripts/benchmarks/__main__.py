"""scripts/bench: every benchmark family in one run; prints the tables, writes benchmarks/results.json and the
generated block of BENCHMARKS.md. Run through scripts/bench (it sets up the import path and the venv)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import analysis_speed, full_tier, overhead, report, start_stop, throughput
from benchmarks.common import REPOSITORY, load_average, machine_facts

FAMILIES = ("overhead", "full_tier", "throughput", "analysis", "start_stop")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and no 10 M-event trace "
                        "(about 3 minutes instead of about 10)")
    parser.add_argument("--only", nargs="+", choices=FAMILIES, default=list(FAMILIES), metavar="FAMILY",
                        help=f"run only these families ({', '.join(FAMILIES)})")
    parser.add_argument("--json", type=Path, default=REPOSITORY / "benchmarks" / "results.json",
                        help="where to write the results (default: benchmarks/results.json)")
    parser.add_argument("--markdown", type=Path, default=REPOSITORY / "BENCHMARKS.md",
                        help="document whose generated block is replaced (default: BENCHMARKS.md)")
    parser.add_argument("--no-write", action="store_true", help="print only; write neither file")
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        _log("scripts/bench: tracing needs root: rerun with sudo")
        return 4
    quick = arguments.quick
    started = time.monotonic()
    results: dict[str, Any] = {"schema": "arena-trace/benchmarks/1", "quick": quick, "machine": machine_facts(),
                               "load_average": {"start": load_average()}, "families": {}}
    families = results["families"]
    for family in FAMILIES:
        if family not in arguments.only:
            continue
        _log(f"scripts/bench: {family} (load average {load_average()})")
        family_started = time.monotonic()
        if family == "overhead":
            families[family] = overhead.run(repetitions=2 if quick else 4, log=_log)
        elif family == "full_tier":
            families[family] = full_tier.run(repetitions=1 if quick else 3, iterations=100_000 if quick else 200_000,
                                             log=_log)
        elif family == "throughput":
            families[family] = throughput.run(seconds=2 if quick else 3, repetitions=1, log=_log, quick=quick)
        elif family == "analysis":
            families[family] = analysis_speed.run([1_000_000] if quick else [1_000_000, 10_000_000], log=_log)
        elif family == "start_stop":
            families[family] = start_stop.run(repetitions=1 if quick else 2, log=_log)
        families[family]["seconds_taken"] = round(time.monotonic() - family_started, 1)
        families[family]["load_average_after"] = load_average()
    results["load_average"]["end"] = load_average()
    results["duration_s"] = time.monotonic() - started
    text = report.render(results)
    print(text)
    if not arguments.no_write:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(results, indent=1) + "\n")
        existing = arguments.markdown.read_text() if arguments.markdown.exists() else "# Benchmarks\n"
        arguments.markdown.write_text(report.replace_generated_block(existing, text))
        _log(f"scripts/bench: wrote {arguments.json} and the results block of {arguments.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
