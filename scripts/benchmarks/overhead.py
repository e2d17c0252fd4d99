"""Family 1: default-tier overhead. Each scenario runs untraced and traced by `arena-trace -p PID` (default
tier), interleaved, alternating which goes first in each repetition so a drift in the host's load hits both
sides. Run time is the workload's own elapsed_ns (work only: the tracer attaches while the workload waits
for SIGUSR1) and the wall time from SIGUSR1 to the workload's exit."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkError, arena_trace_tracer, ratio, read_footer, summary, traced_run

# Each scenario does >= 0.5 s of work untraced on this machine, so per-run jitter is small next to it.
SCENARIOS: list[dict[str, Any]] = [
    {"name": "fastpath", "kind": "fast path", "target": 1.01,
     "arguments": ["--scenario", "fastpath", "--threads", "1", "--iterations", "8000000"]},
    {"name": "growth", "kind": "slow-path-heavy", "target": 1.05,
     "arguments": ["--scenario", "growth", "--threads", "1", "--iterations", "400000"]},
    {"name": "consolidation", "kind": "slow-path-heavy", "target": 1.05,
     "arguments": ["--scenario", "consolidation", "--threads", "1", "--iterations", "60000"]},
    {"name": "churn", "kind": "thread churn", "target": None,
     "arguments": ["--scenario", "churn", "--threads", "1", "--iterations", "20000"]},
]


def run(repetitions: int, log) -> dict[str, Any]:
    samples: dict[str, dict[str, list]] = {
        scenario["name"]: {"untraced_elapsed": [], "traced_elapsed": [], "untraced_wall": [], "traced_wall": [],
                           "events": [], "events_lost": [], "attach_seconds": [], "detach_seconds": [],
                           "ready_seconds": [], "tracer_cpu": [], "errors": []}
        for scenario in SCENARIOS}
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as directory:
        for repetition in range(repetitions):
            for scenario in SCENARIOS:
                sample = samples[scenario["name"]]
                order = (False, True) if repetition % 2 == 0 else (True, False)
                for traced in order:
                    trace_path = Path(directory) / f"{scenario['name']}-{repetition}.atrace"
                    tracer = arena_trace_tracer(trace_path) if traced else None
                    try:
                        result = traced_run(scenario["arguments"], tracer)
                    except BenchmarkError as error:
                        sample["errors"].append(str(error))
                        log(f"  {scenario['name']} {'traced' if traced else 'untraced'}: failed: {error}")
                        continue
                    side = "traced" if traced else "untraced"
                    sample[f"{side}_elapsed"].append(result.elapsed_ns)
                    sample[f"{side}_wall"].append(result.wall_ns)
                    if traced:
                        footer = read_footer(trace_path)
                        sample["events"].append(footer.get("events_recorded"))
                        sample["events_lost"].append(footer.get("events_lost"))
                        sample["attach_seconds"].append(footer.get("attach_seconds"))
                        sample["detach_seconds"].append(footer.get("detach_seconds"))
                        sample["ready_seconds"].append(tracer.ready_at - tracer.started_at)
                        if result.tracer_cpu_seconds is not None:
                            sample["tracer_cpu"].append(result.tracer_cpu_seconds / (result.wall_ns / 1e9))
                        trace_path.unlink(missing_ok=True)
                    log(f"  rep {repetition + 1}/{repetitions} {scenario['name']:<13} {side:<8} "
                        f"elapsed {result.elapsed_ns / 1e6:8.1f} ms  wall {result.wall_ns / 1e6:8.1f} ms")
    rows = []
    for scenario in SCENARIOS:
        sample = samples[scenario["name"]]
        row: dict[str, Any] = {"scenario": scenario["name"], "kind": scenario["kind"], "target": scenario["target"],
                               "arguments": scenario["arguments"], "errors": sample["errors"]}
        for key in ("untraced_elapsed", "traced_elapsed", "untraced_wall", "traced_wall"):
            row[key] = summary(sample[key])
        for measure in ("elapsed", "wall"):
            untraced, traced = row[f"untraced_{measure}"], row[f"traced_{measure}"]
            row[f"{measure}_ratio_of_medians"] = ratio(traced["median"], untraced["median"])
            row[f"{measure}_ratio_of_mins"] = ratio(traced["min"], untraced["min"])
        row["events_per_run"] = summary([value for value in sample["events"] if value is not None])
        row["events_lost"] = sum(value or 0 for value in sample["events_lost"])
        row["attach_seconds"] = summary([value for value in sample["attach_seconds"] if value is not None])
        row["detach_seconds"] = summary([value for value in sample["detach_seconds"] if value is not None])
        row["ready_seconds"] = summary(sample["ready_seconds"])
        row["tracer_cpu_share"] = summary(sample["tracer_cpu"])  # tracer CPU seconds per second of work
        target = scenario["target"]
        measured = row["elapsed_ratio_of_medians"]
        row["met"] = None if target is None or measured is None else measured <= target
        rows.append(row)
    return {"repetitions": repetitions, "rows": rows}
