"""The rich text report, identical for live mode and ``arena-trace analyze``.

``render_report(trace, options, console)`` prints every section to ``console``. Every string that comes
from the target (comm, cmdline, thread names, symbols, module paths) goes through ``analysis.text`` so it
can neither inject rich markup nor terminal control sequences. On a console that is not a terminal rich
prints plain text without colour, which is also what tests capture.
"""

from __future__ import annotations

from arena_trace.analysis import findings, growth, locks
from arena_trace.analysis.aggregate import Analysis, AnalysisOptions
from arena_trace.analysis.summary import completeness
from arena_trace.analysis.text import markup_safe, plain
from arena_trace.analysis.units import format_bytes, format_ns, format_share
from arena_trace.tracer.trace_format import Trace
from rich.console import Console
from rich.table import Table
from rich.text import Text

_TEXT_COLUMNS = {"name", "kind", "allocator", "top waiting stack", "syscalls inside", "top stack"}


def _ns(value: float, estimated: bool = False) -> str:
    return ("≈" if estimated else "") + format_ns(value)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold", show_edge=False,
                  pad_edge=False)
    for index, column in enumerate(columns):
        text = index == 0 or column in _TEXT_COLUMNS
        table.add_column(column, justify="left" if text else "right", overflow="fold")
    return table


def hot_path_table(analysis: Analysis, top: int) -> Table:
    table = _table("Hot call paths (inclusive time; ≈ = estimated from log2 histograms)", "call path", "calls",
                   "% calls", "total", "% alloc time", "mean", "p50", "p95", "p99", "max")
    for _, row in analysis.path_stats.head(top).iterrows():
        estimated = bool(row["estimated"])
        table.add_row(plain(row["label"]), f"{int(row['calls']):,}", format_share(row["calls_share"]),
                      _ns(row["total_ns"]), format_share(row["time_share"]), _ns(row["mean_ns"]),
                      _ns(row["p50_ns"], estimated), _ns(row["p95_ns"], estimated), _ns(row["p99_ns"], estimated),
                      _ns(row["max_ns"]))
    return table


def function_table(analysis: Analysis, top: int) -> Table:
    table = _table("Functions", "function", "kind", "calls", "total", "self", "mean", "p50", "p95", "p99", "max")
    for _, row in analysis.function_stats.head(top).iterrows():
        estimated = bool(row["estimated"])
        table.add_row(plain(row["name"]), row["kind"], f"{int(row['calls']):,}", _ns(row["total_ns"]),
                      _ns(row["self_ns"]), _ns(row["mean_ns"]), _ns(row["p50_ns"], estimated),
                      _ns(row["p95_ns"], estimated), _ns(row["p99_ns"], estimated), _ns(row["max_ns"]))
    return table


def arena_table(analysis: Analysis, top: int) -> Table:
    table = _table("Arena lock waits by arena", "arena", "allocator", "waits", "total", "p50", "p99", "max",
                   "threads", "top waiting stack")
    for _, row in locks.arena_table(analysis).head(top).iterrows():
        name = f"{int(row['arena']):#x}" + (" (main_arena)" if row["main"] else "")
        stacks = row["top_stacks"]
        table.add_row(name, row["allocator"], f"{int(row['waits']):,}", _ns(row["total_ns"]), _ns(row["p50_ns"]),
                      _ns(row["p99_ns"]), _ns(row["max_ns"]), str(int(row["threads"])),
                      plain(stacks[0]["label"]) if stacks else "")
    return table


def wait_stack_table(analysis: Analysis, top: int) -> Table:
    waits = locks.lock_wait_mask(analysis)
    with_stack = int((waits & (analysis.column("stack_id") >= 0)).sum())
    sampled = f"; stacks of {with_stack:,} of {int(waits.sum()):,} waits" if with_stack < waits.sum() else ""
    table = _table(f"Arena lock waits by stack (innermost frame first{sampled})", "stack", "waits", "total")
    for stack in locks.stack_table(analysis, top):
        table.add_row(plain(stack["label"]), f"{stack['calls']:,}", _ns(stack["total_ns"]))
    return table


def thread_table(analysis: Analysis, top: int) -> Table:
    table = _table("Threads (streamed calls)", "tid", "name", "arena", "allocator time", "lock-wait time")
    for tid, row in analysis.thread_stats.head(top).iterrows():
        arena = row["arena"]
        arena_text = "" if arena is None else f"{int(arena):#x}" + (
            " (main)" if int(arena) in analysis.main_arena_addresses else "")
        table.add_row(str(tid), plain(row["name"]), arena_text, _ns(row["allocator_ns"]), _ns(row["lock_wait_ns"]))
    return table


def stack_table(analysis: Analysis, top: int) -> Table:
    table = _table("Streamed calls by stack (innermost frame first)", "stack", "calls", "total")
    everything = analysis.column("stack_id") >= 0
    for stack in analysis.top_stacks(everything & analysis.outermost_streamed_allocator, top):
        table.add_row(plain(stack["label"]), f"{stack['calls']:,}", _ns(stack["total_ns"]))
    return table


def grow_section(analysis: Analysis) -> Table | None:
    entries = growth.grow_table(analysis, top_stacks=1)
    if not entries:
        return None
    table = _table("Heap growth stalls (sysmalloc, new_heap, na_grow) and the syscalls inside them", "function",
                   "calls", "total", "p50", "p99", "max", "syscalls inside", "top stack")
    for entry in entries:
        inside = ", ".join(f"{syscall['name']} ×{syscall['calls']} {_ns(syscall['total_ns'])} "
                           f"{format_bytes(syscall['bytes'])}" for syscall in entry["syscalls"]) or "none"
        stack = entry["top_stacks"][0]["label"] if entry["top_stacks"] else ""
        table.add_row(plain(entry["function"]), f"{entry['calls']:,}", _ns(entry["total_ns"]), _ns(entry["p50_ns"]),
                      _ns(entry["p99_ns"]), _ns(entry["max_ns"]), inside, plain(stack))
    return table


def syscall_table(analysis: Analysis) -> Table:
    table = _table("Syscalls of the target (bytes: length, or |Δ break| for brk)", "syscall", "calls", "total",
                   "bytes", "inside allocator")
    for _, row in analysis.syscall_stats.iterrows():
        table.add_row(plain(row["name"]), f"{int(row['calls']):,}", _ns(row["total_ns"]), format_bytes(row["bytes"]),
                      f"{int(row['in_allocator']):,}")
    return table


def completeness_line(analysis: Analysis) -> Text:
    facts = completeness(analysis)
    parts = [f"probes {facts['probes_attached']} attached, {facts['probes_failed']} failed"]
    if facts["failed_probes"]:
        parts[-1] += " (" + ", ".join(facts["failed_probes"][:5]) + ")"
    parts.append(f"events {facts['events_read']:,} read, {facts['events_lost']:,} lost")
    stacks = (f"stacks {facts['stacks_complete']:,} complete, {facts['stacks_truncated']:,} truncated, "
              f"{facts['stacks_lost']:,} lost")
    if facts["stacks_skipped"]:
        stacks += f", {facts['stacks_skipped']:,} skipped by the rate limit"
    parts.append(stacks)
    parts.append(f"unresolved frames {facts['unresolved_frames']:,}")
    parts.append("damage: " + "; ".join(facts["damage"]) if facts["damage"] else "file intact")
    if facts["aggregates_excluded"]:
        parts.append("aggregated (--full) calls excluded: they carry no thread or time")
    return plain("Completeness: " + " | ".join(parts))


def header(analysis: Analysis) -> Text:
    trace = analysis.trace
    target = trace.metadata.get("target", {})
    allocators = ", ".join(f"{allocator.get('name')} {allocator.get('version') or ''}".strip()
                           for allocator in trace.metadata.get("allocators", []))
    window = ""
    options = analysis.options
    if options.filtered:
        window = f" | window since={options.since} until={options.until} tid={options.tid}"
    text = (f"arena-trace: pid {target.get('pid')} ({target.get('comm')}) | {_ns(analysis.duration_ns)} | "
            f"{analysis.threads_seen} threads | allocators: {allocators or 'unknown'} | "
            f"allocator time {_ns(analysis.allocator_ns)}{window}")
    return plain(text)


def render_report(trace: Trace, options: AnalysisOptions | None = None, console: Console | None = None,
                  analysis: Analysis | None = None) -> None:
    options = options or AnalysisOptions()
    console = console or Console()
    analysis = analysis or Analysis(trace, options)
    top = options.top
    console.print(header(analysis))
    main = {"path": hot_path_table, "function": function_table, "arena": arena_table, "thread": thread_table,
            "stack": stack_table}[options.by]
    console.print()
    console.print(main(analysis, top))
    if options.by != "arena":
        console.print()
        console.print(arena_table(analysis, top))
    console.print()
    console.print(wait_stack_table(analysis, min(top, 5)))
    grow = grow_section(analysis)
    if grow is not None:
        console.print()
        console.print(grow)
    console.print()
    console.print(syscall_table(analysis))
    if options.by != "thread":
        console.print()
        console.print(thread_table(analysis, top))
    console.print()
    found = findings.find(analysis)
    console.print(Text("Findings (share = impact / thread time)", style="bold"))
    if not found:
        console.print("  none: no allocator problem crossed the evidence thresholds")
    for index, finding in enumerate(found, 1):
        console.print(f"  {index}. [bold]{markup_safe(finding.title)}[/bold] ({format_share(finding.share)} of thread "
                      f"time, {_ns(finding.impact_ns)})")
        console.print(Text("     Evidence: ") + plain(finding.evidence))
        console.print(Text("     Next step: ") + plain(finding.next_step))
    console.print()
    console.print(completeness_line(analysis))
