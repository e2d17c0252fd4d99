"""Family 2: cost per call of `arena-trace --full` next to the alternatives a user would reach for, all on the
same 1-thread fastpath run, interleaved. The added cost is computed from the workload's own elapsed_ns:
added ns per probed call = (traced − untraced elapsed) / calls the tool probed, and per malloc+free pair =
(traced − untraced elapsed) / iterations. One thread, because 2-thread figures on this VM flip by 2x with the
host's load (see the uprobe-cost notes)."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, BenchmarkError, Tracer, arena_trace_tracer, summary, traced_run

# The floor: the cheapest thing a uprobe tool can do, a per-CPU counter on malloc's entry.
BCC_COUNTER_SCRIPT = r"""
import signal, sys
from bcc import BPF
bpf = BPF(text='''
BPF_PERCPU_ARRAY(hits, u64, 1);
int on_malloc(void *ctx) { int zero = 0; u64 *value = hits.lookup(&zero); if (value) (*value)++; return 0; }
''')
bpf.attach_uprobe(name="c", sym="malloc", fn_name="on_malloc", pid=int(sys.argv[1]))
print("attached 1 uprobe", file=sys.stderr, flush=True)
signal.signal(signal.SIGINT, lambda *_: None)
signal.pause()
print("hits", sum(bpf["hits"][0]), flush=True)
"""

BPFTRACE_PROGRAM = ("uprobe:libc:malloc { @s[tid] = nsecs; } "
                    "uretprobe:libc:malloc /@s[tid]/ { @h = hist(nsecs - @s[tid]); delete(@s[tid]); }")


def _variants(trace_path: Path) -> list[dict[str, Any]]:
    """Each tool, how to start it, and which of the workload's calls it probes (for the per-call division)."""
    variants: list[dict[str, Any]] = [
        {"name": "arena-trace --full", "probes": "entry+return on malloc, free, calloc, realloc, _int_malloc, "
         "_int_free (+ default tier); in-kernel per-path aggregates",
         "make": lambda: arena_trace_tracer(trace_path, full=True), "probed": "trace"},
        {"name": "bcc counter uprobe (floor)", "probes": "entry on malloc, per-CPU counter",
         "make": lambda: Tracer("bcc counter", [str(PYTHON), "-c", BCC_COUNTER_SCRIPT, "{pid}"],
                                ready_pattern=r"^attached"), "probed": "malloc"},
    ]
    missing = {tool: shutil.which(tool) is None for tool in ("funclatency-bpfcc", "bpftrace", "memleak-bpfcc")}
    variants.append({"name": "funclatency-bpfcc -p PID c:malloc", "probes": "entry+return on malloc, log2 hist",
                     "make": lambda: Tracer("funclatency", ["funclatency-bpfcc", "-p", "{pid}", "c:malloc"],
                                            minimum_perf_events=2),
                     "probed": "malloc", "unavailable": missing["funclatency-bpfcc"]})
    variants.append({"name": "bpftrace malloc latency hist()", "probes": "entry+return on malloc, tid hash, hist",
                     "make": lambda: Tracer("bpftrace", ["bpftrace", "-p", "{pid}", "-e", BPFTRACE_PROGRAM],
                                            minimum_perf_events=2),
                     "probed": "malloc", "unavailable": missing["bpftrace"]})
    variants.append({"name": "memleak-bpfcc -p PID", "probes": "entry+return on the allocation functions, entry "
                     "on free; a user stack per allocation",
                     "make": lambda: Tracer("memleak", ["memleak-bpfcc", "-p", "{pid}"], minimum_perf_events=10),
                     "probed": "malloc+free", "unavailable": missing["memleak-bpfcc"]})
    return variants


def _probed_calls(variant: dict[str, Any], calls: dict[str, int], trace_path: Path, tracer: Tracer) -> int:
    if variant["probed"] == "trace":
        from arena_trace.analysis.trace_reader import read_trace  # noqa: PLC0415 - heavy, only here

        trace = read_trace(trace_path)
        # Every call the full tier aggregated (malloc, free, _int_malloc, _int_free on this workload) plus
        # the streamed slow-path events: all of them went through an entry+return probe pair.
        return int(trace.aggregates["calls"].sum()) + len(trace.events)
    if variant["probed"] == "malloc" and tracer.name == "bcc counter":
        for line in tracer.output().splitlines():
            if line.startswith("hits "):
                return int(line.split()[1])
    if variant["probed"] == "malloc+free":
        return calls["malloc"] + calls["free"]
    return calls["malloc"]


def run(repetitions: int, iterations: int, log) -> dict[str, Any]:
    arguments = ["--scenario", "fastpath", "--threads", "1", "--iterations", str(iterations)]
    baseline: list[int] = []
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as directory:
        trace_path = Path(directory) / "full.atrace"
        variants = _variants(trace_path)
        samples: dict[str, dict[str, list]] = {variant["name"]: {"elapsed": [], "probed": [], "errors": [],
                                                                 "ready": []}
                                               for variant in variants}
        for repetition in range(repetitions):
            # Baseline between tools and at both ends of the repetition, so it sees the same host load.
            order = variants if repetition % 2 == 0 else list(reversed(variants))
            for index, variant in enumerate([None, *order]):
                if variant is None or index % 2 == 0:
                    result = traced_run(arguments, None)
                    baseline.append(result.elapsed_ns)
                    log(f"  rep {repetition + 1}/{repetitions} untraced {result.elapsed_ns / 1e6:8.1f} ms")
                if variant is None:
                    continue
                sample = samples[variant["name"]]
                if variant.get("unavailable"):
                    sample["errors"].append("not installed (Debian package bpfcc-tools / bpftrace)")
                    continue
                tracer = variant["make"]()
                try:
                    result = traced_run(arguments, tracer)
                    sample["probed"].append(_probed_calls(variant, result.calls, trace_path, tracer))
                except BenchmarkError as error:
                    sample["errors"].append(str(error))
                    log(f"  {variant['name']}: failed: {error}")
                    continue
                sample["elapsed"].append(result.elapsed_ns)
                sample["ready"].append(tracer.ready_at - tracer.started_at)
                log(f"  rep {repetition + 1}/{repetitions} {variant['name']:<34} {result.elapsed_ns / 1e6:8.1f} ms "
                    f"({sample['probed'][-1]} probed calls)")
            result = traced_run(arguments, None)
            baseline.append(result.elapsed_ns)
    base = summary(baseline)
    rows = []
    for variant in variants:
        sample = samples[variant["name"]]
        row: dict[str, Any] = {"tool": variant["name"], "probes": variant["probes"], "errors": sample["errors"],
                               "elapsed": summary(sample["elapsed"]), "ready_seconds": summary(sample["ready"])}
        if sample["elapsed"]:
            probed = statistics.median(sample["probed"])
            row["probed_calls"] = probed
            for statistic in ("median", "min"):
                added = row["elapsed"][statistic] - base[statistic]
                row[f"added_ns_per_probed_call_{statistic}"] = added / probed
                row[f"added_ns_per_pair_{statistic}"] = added / iterations
            row["slowdown_median"] = row["elapsed"]["median"] / base["median"]
        rows.append(row)
    by_name = {row["tool"]: row for row in rows}
    ours = by_name["arena-trace --full"]
    funclatency = by_name["funclatency-bpfcc -p PID c:malloc"]
    verdict: dict[str, Any] = {}
    if "added_ns_per_probed_call_median" in ours:
        verdict["per_call_ns"] = ours["added_ns_per_probed_call_median"]
        verdict["per_call_met"] = verdict["per_call_ns"] <= 1000
        verdict["per_pair_ns"] = ours["added_ns_per_pair_median"]
        verdict["per_pair_met"] = verdict["per_pair_ns"] <= 2200
        if "added_ns_per_probed_call_median" in funclatency:
            verdict["versus_funclatency"] = verdict["per_call_ns"] / funclatency["added_ns_per_probed_call_median"]
            verdict["versus_funclatency_met"] = verdict["versus_funclatency"] <= 0.85
    return {"repetitions": repetitions, "iterations": iterations, "baseline_elapsed": base, "rows": rows,
            "verdict": verdict}
