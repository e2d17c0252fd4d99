"""Markdown tables from a results document. The same text is printed by scripts/bench and written between the
generated-block markers of BENCHMARKS.md, so the published figures are always a real run's, unedited."""

from __future__ import annotations

from typing import Any

from benchmarks.common import format_ratio

BEGIN_MARKER = "<!-- scripts/bench: generated results begin -->"
END_MARKER = "<!-- scripts/bench: generated results end -->"


def _met(value: bool | None) -> str:
    return "—" if value is None else ("met" if value else "**missed**")


def _spread(sample: dict[str, Any], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    if not sample or not sample.get("n"):
        return "—"
    return " / ".join(f"{sample[key] * scale:.{digits}f}" for key in ("min", "median", "max")) + unit


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _machine(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    load = results.get("load_average", {})
    return [
        f"Run of {machine['date']}, `scripts/bench{' --quick' if results['quick'] else ''}` at commit "
        f"{machine['arena_trace_commit']}, {results['duration_s']:.0f} s in total.",
        "",
        f"* CPU: {machine['cpu_model']}{' (VM)' if machine['hypervisor'] else ''}, {machine['vcpus']} vCPUs, "
        f"{machine['memory_gib']} GiB; hardware counters: {'yes' if machine['hardware_counters'] else 'none'}",
        f"* kernel {machine['kernel']}, glibc {machine['glibc']}, bcc {machine['bcc']}, {machine['bpftrace']}, "
        f"Python {machine['python']}",
        f"* load average (1/5/15 min) at start {load.get('start')}, at end {load.get('end')} — other work on the "
        "host shows up as spread between repetitions (min / median / max below).",
    ]


def _overhead(section: dict[str, Any]) -> list[str]:
    lines = [f"### 1. Default tier overhead (`arena-trace -p PID`, {section['repetitions']} interleaved "
             "repetitions)", "",
             "Workload elapsed_ns (work only) in ms, min / median / max; ratio = traced ÷ untraced.", ""]
    rows = []
    for row in section["rows"]:
        rows.append([
            f"{row['scenario']} ({row['kind']})",
            _spread(row["untraced_elapsed"], 1e-6), _spread(row["traced_elapsed"], 1e-6),
            format_ratio(row["elapsed_ratio_of_medians"]), format_ratio(row["elapsed_ratio_of_mins"]),
            format_ratio(row["wall_ratio_of_medians"]),
            f"{row['events_per_run']['median'] or 0:,.0f} / {row['events_lost']}",
            _spread(row["tracer_cpu_share"], 100, 0, " %"),
            "—" if row["target"] is None else f"≤ {row['target']:.2f}× {_met(row['met'])}",
        ])
    lines += _table(["scenario", "untraced ms", "traced ms", "ratio of medians", "ratio of mins",
                     "wall ratio (medians)", "events per run / lost", "tracer CPU during work", "target"], rows)
    errors = [f"{row['scenario']}: {error}" for row in section["rows"] for error in row["errors"]]
    return lines + ([""] + [f"* failed run: {error}" for error in errors] if errors else [])


def _full_tier(section: dict[str, Any]) -> list[str]:
    base = section["baseline_elapsed"]
    lines = [f"### 2. Full tier cost per call (1-thread fastpath, {section['iterations']:,} malloc+free pairs, "
             f"{section['repetitions']} interleaved repetitions)", "",
             f"Untraced elapsed: {_spread(base, 1e-6, 1, ' ms')} (min / median / max). Added ns = traced − "
             "untraced elapsed (medians; mins in brackets) ÷ calls.", ""]
    rows = []
    for row in section["rows"]:
        if "probed_calls" not in row:
            rows.append([row["tool"], row["probes"], "—", "—", "—", "—",
                         "unavailable: " + "; ".join(row["errors"])[:200]])
            continue
        rows.append([
            row["tool"], row["probes"], f"{row['probed_calls']:,.0f}",
            f"{row['added_ns_per_probed_call_median']:.0f} ({row['added_ns_per_probed_call_min']:.0f})",
            f"{row['added_ns_per_pair_median']:.0f} ({row['added_ns_per_pair_min']:.0f})",
            f"{row['slowdown_median']:.1f}×", _spread(row["elapsed"], 1e-6, 1, " ms"),
        ])
    lines += _table(["tool", "probes", "probed calls per run", "added ns per probed call",
                     "added ns per malloc+free pair", "slowdown", "traced elapsed"], rows)
    verdict = section["verdict"]
    if verdict:
        lines += ["", f"arena-trace --full: {verdict['per_call_ns']:.0f} ns per probed call (target ≤ 1000: "
                  f"{_met(verdict['per_call_met'])}); {verdict['per_pair_ns']:.0f} ns per malloc+free pair "
                  f"(target ≤ 2200: {_met(verdict['per_pair_met'])})"
                  + (f"; {verdict['versus_funclatency']:.2f}× funclatency per probed call (target ≤ 0.85×: "
                     f"{_met(verdict['versus_funclatency_met'])})" if "versus_funclatency" in verdict else "")
                  + "."]
    return lines


def _throughput(section: dict[str, Any]) -> list[str]:
    lines = [f"### 3. Recording throughput (default tier, {section['seconds']:.0f} s runs, "
             f"{section['repetitions']} repetition(s))", "",
             "Events consumed per second of work (min / median / max), consumer CPU per event (tracer process "
             "CPU over the work window ÷ events in the window), producer slowdown = untraced ÷ traced "
             "iterations done in the same time.", ""]
    rows = []
    for row in section["rows"]:
        rows.append([
            row["scenario"], _spread(row["events_per_second"], 1e-3, 0, " k/s"),
            f"{row['events_lost']:,} / {row['stacks_lost']:,}",
            _spread(row["consumer_cpu_ns_per_event"], 1e-3, 1, " µs"),
            _spread(row["consumer_cpu_share"], 100, 0, " %"),
            "—" if row["producer_slowdown"] is None else f"{row['producer_slowdown']:.2f}×",
        ])
    lines += _table(["scenario", "events consumed", "events / stacks lost", "consumer CPU per event",
                     "consumer CPU share", "producer slowdown"], rows)
    verdict = section["verdict"]
    capacity = verdict.get("consumer_capacity_per_core")
    lines += ["", f"Best rate {verdict['best_events_per_second']:,.0f} events/s (target ≥ 1,000,000: "
              f"{_met(verdict['rate_met'])}); {verdict['events_lost']:,} events lost (target 0: "
              f"{_met(verdict['lost_met'])}); cheapest consumer cost "
              + (f"{verdict['lowest_cpu_ns_per_event'] / 1e3:.1f} µs/event → at most {capacity:,.0f} events/s per "
                 "core of consumer." if capacity else "unmeasured.")]
    return lines


def _analysis(section: dict[str, Any]) -> list[str]:
    lines = ["### 4. Analysis speed (synthetic traces; hot-path table from scripts/bench_analysis.py)", ""]
    rows = []
    for row in section["rows"]:
        export = ("failed: " + row["export_error"]) if "export_error" in row else \
            f"{row['export_events_per_second'] / 1e6:.2f} M/s ({row['export_peak_bytes_per_event']:.0f} B/event)"
        rows.append([
            f"{row['events']:,}", f"{row['hot_path_events_per_second'] / 1e6:.1f} M/s",
            f"{row['load_and_hot_path_events_per_second'] / 1e6:.1f} M/s",
            f"{row['analysis_peak_bytes_per_event']:.1f} B",
            export, f"{row['file_bytes_per_event']:.0f} B",
        ])
    lines += _table(["events", "hot-path table", "read + hot-path table", "peak RSS per event (analysis)",
                     "read + speedscope export (peak RSS/event)", "file size per event"], rows)
    lines += ["", f"Targets: ≥ {section['target_events_per_second'] / 1e6:.0f} M events/s, "
              f"≤ {section['target_bytes_per_event']} B/event."]
    return lines


def _start_stop(section: dict[str, Any]) -> list[str]:
    lines = [f"### 5. Start and stop ({section['repetitions']} repetition(s); seconds, min / median / max)", ""]
    names = {"record_default": "`arena-trace -p PID`", "record_full": "`arena-trace -p PID --full`",
             "run_default": "`arena-trace run -- CMD`"}
    rows = []
    for name, mode in section["modes"].items():
        if not mode:
            continue
        rows.append([names[name], _spread(mode.get("ready_s"), 1, 2), _spread(mode.get("attach_s"), 1, 2),
                     _spread(mode.get("detach_s"), 1, 2), _spread(mode.get("exit_to_cli_exit_s"), 1, 2),
                     _spread(mode.get("cli_wall_s"), 1, 2)])
    lines += _table(["command", "start → \"attached\" line", "footer attach_seconds", "footer detach_seconds",
                     "target exit → CLI exit", "CLI wall time"], rows)
    for tier, split in section["detach_split"].items():
        lines += ["", f"Detach split, {tier} tier ({split['uprobe_events']} uprobe/uretprobe events, "
                  f"{split['tracepoints']} tracepoints): compile {split['compile_s']:.2f} s, attach "
                  f"{split['attach_s']:.2f} s; one uprobe alone {split['single_uprobe_detach_s']:.3f} s, one "
                  f"tracepoint alone {split['single_tracepoint_detach_s']:.3f} s; the other uprobes in parallel "
                  f"(as the tracer does) {split['other_uprobes_parallel_detach_s']:.2f} s, the other tracepoints "
                  f"one by one {split['other_tracepoints_sequential_detach_s']:.2f} s."]
    return lines + [f"* failed: {error}" for error in section["errors"]]


def render(results: dict[str, Any]) -> str:
    lines = _machine(results)
    renderers = {"overhead": _overhead, "full_tier": _full_tier, "throughput": _throughput,
                 "analysis": _analysis, "start_stop": _start_stop}
    for key, renderer in renderers.items():
        if key in results["families"]:
            lines += ["", *renderer(results["families"][key])]
    return "\n".join(lines) + "\n"


def replace_generated_block(document: str, block: str) -> str:
    """BENCHMARKS.md keeps its prose; only the text between the markers is the latest run's."""
    generated = f"{BEGIN_MARKER}\n{block}{END_MARKER}"
    if BEGIN_MARKER in document and END_MARKER in document:
        head, rest = document.split(BEGIN_MARKER, 1)
        return head + generated + rest.split(END_MARKER, 1)[1]
    return document.rstrip("\n") + "\n\n" + generated + "\n"
