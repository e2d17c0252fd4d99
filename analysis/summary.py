"""The ``arena-trace/summary/1`` JSON document (``--json``), documented field by field in
docs/summary-schema.md. ``build_summary(trace, options) -> dict`` is what live mode calls too.

All times are integer nanoseconds and sizes integer bytes; target-controlled strings are passed through
as JSON strings (JSON escaping makes them harmless; consumers that print them must escape them).
"""

from __future__ import annotations

from typing import Any

from arena_trace.analysis import findings, growth, locks
from arena_trace.analysis.aggregate import Analysis, AnalysisOptions
from arena_trace.tracer.trace_format import Trace

SCHEMA = "arena-trace/summary/1"


def completeness(analysis: Analysis) -> dict[str, Any]:
    trace = analysis.trace
    probes = trace.metadata.get("probes", [])
    footer = trace.footer
    statuses = trace.stacks["status"].astype(str) if len(trace.stacks) else None
    distinct_complete = int((statuses == "complete").sum()) if statuses is not None else 0
    captured = int(footer.get("stacks_captured", len(trace.stacks)))
    truncated = int(footer.get("stacks_truncated", len(trace.stacks) - distinct_complete))
    # Counted per captured snapshot (a recording's footer has them); distinct stacks only for old files.
    complete = captured - truncated if "stacks_captured" in footer else distinct_complete
    return {
        "probes_attached": sum(1 for probe in probes if probe.get("attached")),
        "probes_failed": sum(1 for probe in probes if not probe.get("attached")),
        "failed_probes": [str(probe.get("function", "?")) for probe in probes if not probe.get("attached")],
        "events_recorded": int(footer.get("events_recorded", len(trace.events))),
        "events_read": len(trace.events),
        "events_lost": int(footer.get("events_lost") or 0),
        "stacks_captured": captured,
        "stacks_complete": complete,
        "stacks_truncated": truncated,
        "stacks_lost": int(footer.get("stacks_lost") or 0),
        "stacks_skipped": int(footer.get("stacks_skipped") or 0),
        "unresolved_frames": int(footer.get("unresolved_frames") or 0),
        "exit_reason": footer.get("exit_reason"),
        "damage": list(trace.damage),
        "filtered": analysis.options.filtered,
        "aggregates_excluded": analysis.options.filtered and len(trace.aggregates) > 0,
    }


def _stats(row: Any) -> dict[str, Any]:
    return {"calls": int(row["calls"]), "total_ns": int(row["total_ns"]), "self_ns": int(row["self_ns"]),
            "p50_ns": int(row["p50_ns"]), "p95_ns": int(row["p95_ns"]), "p99_ns": int(row["p99_ns"]),
            "max_ns": int(row["max_ns"]), "estimated": bool(row["estimated"])}


def build_summary(trace: Trace, options: AnalysisOptions | None = None,
                  analysis: Analysis | None = None) -> dict[str, Any]:
    analysis = analysis or Analysis(trace, options)
    metadata = trace.metadata
    target = metadata.get("target", {})
    arenas = locks.arena_table(analysis)
    lock_totals = locks.lock_wait_summary(analysis)
    threads = analysis.thread_stats
    window = {"since_s": analysis.options.since, "until_s": analysis.options.until, "tid": analysis.options.tid}
    return {
        "schema": SCHEMA,
        "target": {"pid": target.get("pid"), "comm": target.get("comm"),
                   "allocators": [{key: allocator.get(key) for key in ("name", "path", "build_id", "version")}
                                  for allocator in metadata.get("allocators", [])]},
        "duration_ns": analysis.duration_ns,
        "window": window,
        "threads_seen": analysis.threads_seen,
        "allocator_ns": analysis.allocator_ns,
        "completeness": completeness(analysis),
        "functions": {str(row["name"]): _stats(row) for _, row in analysis.function_stats.iterrows()},
        "paths": [{"path": list(row["path"]), **_stats(row)} for _, row in analysis.path_stats.iterrows()],
        "lock_waits": {
            **lock_totals,
            "arenas": [{"arena": int(row["arena"]), "main": bool(row["main"]), "allocator": row["allocator"],
                        "waits": int(row["waits"]), "total_ns": int(row["total_ns"]), "p50_ns": int(row["p50_ns"]),
                        "p99_ns": int(row["p99_ns"]), "max_ns": int(row["max_ns"]), "threads": int(row["threads"]),
                        "top_stacks": [{key: stack[key] for key in ("frames", "calls", "total_ns")}
                                       for stack in row["top_stacks"]]}
                       for _, row in arenas.iterrows()],
        },
        "grow": [{**{key: value for key, value in entry.items() if key != "top_stacks"},
                  "top_stacks": [{key: stack[key] for key in ("frames", "calls", "total_ns")}
                                 for stack in entry["top_stacks"]]}
                 for entry in growth.grow_table(analysis)],
        "syscalls": {str(row["name"]): {"calls": int(row["calls"]), "total_ns": int(row["total_ns"]),
                                        "bytes": int(row["bytes"]), "in_allocator": int(row["in_allocator"])}
                     for _, row in analysis.syscall_stats.iterrows()},
        "threads": [{"tid": int(tid), "name": row["name"], "arena": None if row["arena"] is None else int(row["arena"]),
                     "calls": int(row["calls"]), "allocator_ns": int(row["allocator_ns"]),
                     "lock_wait_ns": int(row["lock_wait_ns"])} for tid, row in threads.iterrows()],
        "findings": [{"kind": finding.kind, "share": finding.share, "impact_ns": finding.impact_ns,
                      "message": finding.message, "evidence": finding.evidence, "next_step": finding.next_step}
                     for finding in findings.find(analysis)],
    }
