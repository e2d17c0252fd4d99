"""Family 3: recording throughput. In the default tier only slow-path calls and address-space syscalls are
streamed, so the rate is set by how many slow-path events a workload produces; `--full-events` streams every
malloc/free/_int_free call (batched 64 per ring-buffer record), which is the path the ≥ 1 M events/s target is
about. Each scenario below runs for a fixed time under `arena-trace -p PID`, and the figures cover the work
window only:

* consumed events/s = events whose timestamp falls inside the window / window length;
* lost = the footer's events_lost (BPF ring buffer full);
* consumer CPU per event = the tracer process's CPU over the window / events in the window. Its inverse is
  what one core of consumer could absorb, whatever the workload produced.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkError, arena_trace_tracer, summary, traced_run

SCENARIOS: list[dict[str, Any]] = [
    {"name": "glibc fastpath, 2 threads, --full-events (every malloc/free/_int_free streamed)",
     "arguments": ["--scenario", "fastpath", "--threads", "2"], "tracer": ["--full-events"]},
    {"name": "glibc contention, MALLOC_ARENA_MAX=1, 2 threads",
     "arguments": ["--scenario", "contention", "--threads", "2"], "environment": {"MALLOC_ARENA_MAX": "1"}},
    {"name": "native contention, 2 threads (na_lock_wait)",
     "arguments": ["--allocator", "native", "--scenario", "contention", "--threads", "2"]},
    {"name": "glibc mmap-thrash, 1 thread (sysmalloc + mmap + munmap)",
     "arguments": ["--scenario", "mmap-thrash", "--threads", "1"]},
    {"name": "glibc consolidation, 1 thread (malloc_consolidate)",
     "arguments": ["--scenario", "consolidation", "--threads", "1"]},
]


def run(seconds: float, repetitions: int, log, quick: bool = False) -> dict[str, Any]:
    scenarios = SCENARIOS[:3] if quick else SCENARIOS
    rows = []
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as directory:
        for scenario in scenarios:
            samples: dict[str, list] = {"rate": [], "cpu_per_event": [], "events": [], "lost": [],
                                        "window_events": [], "cpu_share": [], "untraced_iterations": [],
                                        "traced_iterations": [], "stacks_lost": [], "errors": []}
            arguments = [*scenario["arguments"], "--duration", str(seconds)]
            for repetition in range(repetitions):
                trace_path = Path(directory) / f"throughput-{repetition}.atrace"
                try:
                    # The untraced run tells how much the probes and the consumer slowed the producer.
                    untraced = traced_run(arguments, None, scenario.get("environment"))
                    tracer = arena_trace_tracer(trace_path, extra=scenario.get("tracer", ()))
                    result = traced_run(arguments, tracer, scenario.get("environment"))
                except BenchmarkError as error:
                    samples["errors"].append(str(error))
                    log(f"  {scenario['name']}: failed: {error}")
                    continue
                from arena_trace.analysis.trace_reader import read_trace  # noqa: PLC0415 - heavy import

                trace = read_trace(trace_path)
                timestamps = trace.events["timestamp_ns"]
                in_window = int(((timestamps >= result.released_ns) & (timestamps <= result.exited_ns)).sum())
                window = (result.exited_ns - result.released_ns) / 1e9
                samples["untraced_iterations"].append(untraced.report["iterations_total"])
                samples["traced_iterations"].append(result.report["iterations_total"])
                samples["events"].append(int(trace.footer.get("events_recorded", 0)))
                samples["lost"].append(int(trace.footer.get("events_lost", 0)))
                samples["stacks_lost"].append(int(trace.footer.get("stacks_lost", 0)))
                samples["window_events"].append(in_window)
                samples["rate"].append(in_window / window)
                if result.tracer_cpu_seconds is not None and in_window:
                    samples["cpu_per_event"].append(result.tracer_cpu_seconds / in_window * 1e9)
                    samples["cpu_share"].append(result.tracer_cpu_seconds / window)
                trace_path.unlink(missing_ok=True)
                log(f"  {scenario['name']}: {in_window / window:,.0f} events/s, "
                    f"{samples['lost'][-1]} lost, tracer CPU {result.tracer_cpu_seconds or 0:.2f} s over "
                    f"{window:.2f} s")
            untraced_iterations = summary(samples["untraced_iterations"])["median"]
            traced_iterations = summary(samples["traced_iterations"])["median"]
            rows.append({
                "scenario": scenario["name"], "arguments": arguments, "environment": scenario.get("environment"),
                "events_per_second": summary(samples["rate"]),
                "events_recorded": summary(samples["events"]), "events_lost": sum(samples["lost"]),
                "stacks_lost": sum(samples["stacks_lost"]),
                "consumer_cpu_ns_per_event": summary(samples["cpu_per_event"]),
                "consumer_cpu_share": summary(samples["cpu_share"]),
                "producer_slowdown": (untraced_iterations / traced_iterations)
                if untraced_iterations and traced_iterations else None,
                "errors": samples["errors"],
            })
    best = max((row["events_per_second"]["median"] or 0 for row in rows), default=0)
    cheapest = min((row["consumer_cpu_ns_per_event"]["median"] for row in rows
                    if row["consumer_cpu_ns_per_event"]["median"]), default=None)
    lost = sum(row["events_lost"] for row in rows)
    return {"seconds": seconds, "repetitions": repetitions, "rows": rows,
            "verdict": {"best_events_per_second": best, "rate_met": best >= 1_000_000, "events_lost": lost,
                        "lost_met": lost == 0, "lowest_cpu_ns_per_event": cheapest,
                        "consumer_capacity_per_core": 1e9 / cheapest if cheapest else None}}
