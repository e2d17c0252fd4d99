"""Findings: what the allocator is losing time to, in plain words, ranked by time impact.

Each finding has an impact in nanoseconds of thread time and ``share`` = impact / thread time (trace
duration × threads seen, see aggregate.py), the evidence it rests on and a concrete next step. A finding is
only produced when its evidence crosses the thresholds below, so a quiet trace yields no findings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from arena_trace.analysis import growth, locks
from arena_trace.analysis.aggregate import Analysis
from arena_trace.analysis.function_table import ROLE_CODE
from arena_trace.analysis.units import format_bytes, format_ns

MIN_LOCK_WAITS = 10
MIN_LOCK_WAIT_NS = 100_000
MIN_SMALL_GROWTHS = 20
SMALL_GROWTH_BYTES = 1 << 20  # a brk step below this is "small" next to glibc's default 128 KiB top pad
MIN_TRIM_CYCLES = 3
MIN_MMAP_PAIRS = 5
MIN_CONSOLIDATIONS = 20
MIN_CONSOLIDATION_NS = 1_000_000
MIN_ARENA_SELECTS = 20
MIN_NATIVE_GROWS = 10
MIN_NATIVE_GROW_NS = 1_000_000


@dataclass(frozen=True)
class Finding:
    kind: str
    impact_ns: int
    share: float
    title: str
    evidence: str
    next_step: str

    @property
    def message(self) -> str:
        return f"{self.title}. {self.evidence}. Next step: {self.next_step}"

    def to_json(self) -> dict:
        return {**asdict(self), "message": self.message}


def _finding(analysis: Analysis, kind: str, impact_ns: int, title: str, evidence: str, next_step: str) -> Finding:
    share = impact_ns / analysis.thread_time_ns if analysis.thread_time_ns else 0.0
    return Finding(kind, int(impact_ns), float(share), title, evidence, next_step)


def _arena_count(analysis: Analysis) -> int:
    """Distinct arenas seen: returned by arena_get2, waited on, or grown (glibc + native)."""
    arenas = set(analysis.thread_arenas.values())
    table = locks.arena_table(analysis, top_stacks=0)
    arenas |= set(table["arena"].tolist())
    return len(arenas)


def lock_contention(analysis: Analysis) -> list[Finding]:
    table = locks.arena_table(analysis, top_stacks=1)
    results = []
    for allocator in ("glibc", "native"):
        rows = table[table["allocator"] == allocator]
        waits, total = int(rows["waits"].sum()), int(rows["total_ns"].sum())
        if waits < MIN_LOCK_WAITS or total < MIN_LOCK_WAIT_NS:
            continue
        worst = rows.iloc[0]
        worst_name = "main_arena" if worst["main"] else f"arena {int(worst['arena']):#x}"
        stacks = worst["top_stacks"]
        where = f"; most waiting from {stacks[0]['label']}" if stacks else ""
        threads, arenas = analysis.threads_seen, _arena_count(analysis)
        evidence = (f"{waits} waits, {format_ns(total)} blocked; {worst_name} alone: {int(worst['waits'])} waits, "
                    f"{format_ns(int(worst['total_ns']))} by {int(worst['threads'])} threads; {threads} threads, "
                    f"{arenas} arenas seen{where}")
        if allocator == "native":
            step = ("give each thread its own na_alloc arena, or refill thread caches with bigger na_alloc_batch "
                    "batches so the arena lock is taken less often")
        elif worst["main"] and total and int(worst["total_ns"]) >= 0.8 * total:
            step = ("threads are funnelled onto main_arena: if MALLOC_ARENA_MAX (GLIBC_TUNABLES="
                    "glibc.malloc.arena_max) is set, raise it to at least the number of busy threads or unset it; "
                    "otherwise reduce allocations in the hot stack above")
        else:
            step = (f"{threads} threads share {arenas} arenas: raise MALLOC_ARENA_MAX / glibc.malloc.arena_max, "
                    "or cut allocations in the hottest waiting stack")
        kind = "arena-lock-contention" if allocator == "glibc" else "native-arena-lock-contention"
        results.append(_finding(analysis, kind, total, f"Threads wait on {allocator} arena locks", evidence, step))
    return results


def small_heap_growth(analysis: Analysis, changes) -> list[Finding]:  # noqa: ANN001 - DataFrame from growth
    grows = changes[(changes["within"] == "grow") & (changes["bytes"] > 0)]
    small = grows[grows["bytes"] < SMALL_GROWTH_BYTES]
    if len(small) < MIN_SMALL_GROWTHS:
        return []
    impact = _grow_time(analysis, "sysmalloc")
    median = int(np.median(small["bytes"]))
    evidence = (f"{len(small)} brk calls inside sysmalloc grew the heap by only {format_bytes(median)} each "
                f"(median), {format_bytes(int(small['bytes'].sum()))} in total; sysmalloc took {format_ns(impact)}")
    step = ("raise the top pad so each growth step is bigger: mallopt(M_TOP_PAD, 64 MiB) or GLIBC_TUNABLES="
            "glibc.malloc.top_pad=67108864; if the heap is also trimmed back, raise M_TRIM_THRESHOLD "
            "(glibc.malloc.trim_threshold) too")
    return [_finding(analysis, "small-heap-growth", impact, "The heap grows in many small brk steps", evidence, step)]


def trim_cycles(analysis: Analysis, changes) -> list[Finding]:  # noqa: ANN001
    signs = np.sign(changes["bytes"].to_numpy())
    within = changes["within"].to_numpy()
    # A cycle: the break shrinks (systrim) and a later sysmalloc grows it again.
    shrink_then_grow = (signs[:-1] < 0) & (within[:-1] == "trim") & (signs[1:] > 0) & (within[1:] == "grow")
    cycles = int(shrink_then_grow.sum())
    if cycles < MIN_TRIM_CYCLES:
        return []
    released = int(-changes.loc[changes["bytes"] < 0, "bytes"].sum())
    impact = _grow_time(analysis, "systrim") + int(changes["duration_ns"].to_numpy()[1:][shrink_then_grow].sum())
    evidence = (f"{cycles} times systrim gave memory back with brk and sysmalloc grew the heap again right after "
                f"({format_bytes(released)} released in total)")
    step = ("raise the trim threshold so freed memory stays in the heap: mallopt(M_TRIM_THRESHOLD, N) or "
            "GLIBC_TUNABLES=glibc.malloc.trim_threshold=N with N above the size that keeps being returned")
    return [_finding(analysis, "brk-trim-cycles", impact, "The heap shrinks and grows back repeatedly", evidence, step)]


def mmap_thrash(analysis: Analysis) -> list[Finding]:
    names = analysis.functions.names[analysis.function_ids & 0xFF]
    inside = analysis.column("depth") > 0
    lengths = analysis.column("argument0")
    maps = inside & (names == "mmap")
    unmaps = inside & (names == "munmap")
    if not maps.any() or not unmaps.any():
        return []
    map_sizes, map_counts = np.unique(lengths[maps], return_counts=True)
    unmap_sizes, unmap_counts = np.unique(lengths[unmaps], return_counts=True)
    common, map_index, unmap_index = np.intersect1d(map_sizes, unmap_sizes, return_indices=True)
    if len(common) == 0:
        return []
    pairs = np.minimum(map_counts[map_index], unmap_counts[unmap_index])
    best = int(np.argmax(pairs))
    if int(pairs[best]) < MIN_MMAP_PAIRS:
        return []
    size = int(common[best])
    paired = (maps | unmaps) & (lengths == size)
    impact = int(analysis.durations[paired].sum())
    evidence = (f"{int(pairs[best])} mmap/munmap pairs of the same {format_bytes(size)} block made by the "
                f"allocator, {format_ns(impact)} in those syscalls")
    step = (f"serve these requests from the heap: mallopt(M_MMAP_THRESHOLD, {size + 4096}) or GLIBC_TUNABLES="
            f"glibc.malloc.mmap_threshold={size + 4096} (a fixed threshold also stops glibc's dynamic adjustment)")
    return [_finding(analysis, "mmap-thrash", impact, "Same-size blocks are mapped and unmapped over and over",
                     evidence, step)]


def consolidation_storm(analysis: Analysis) -> list[Finding]:
    mask = analysis.roles == ROLE_CODE["consolidate"]
    calls, total = int(mask.sum()), int(analysis.durations[mask].sum())
    if calls < MIN_CONSOLIDATIONS or total < MIN_CONSOLIDATION_NS:
        return []
    evidence = f"{calls} consolidations (malloc_consolidate / na_consolidate), {format_ns(total)}"
    step = ("large requests or large frees are merging fastbins each time: keep big buffers alive and reuse them, "
            "or disable fastbins with GLIBC_TUNABLES=glibc.malloc.mxfast=0 and measure")
    return [_finding(analysis, "consolidation-storm", total, "Free-list consolidation runs often", evidence, step)]


def arena_churn(analysis: Analysis) -> list[Finding]:
    mask = analysis.roles == ROLE_CODE["arena-select"]
    calls = int(mask.sum())
    if calls < MIN_ARENA_SELECTS:
        return []
    tids = len(np.unique(analysis.column("tid")[mask]))
    impact = int(analysis.durations[mask].sum())
    evidence = (f"arena_get2 ran {calls} times for {tids} threads, {format_ns(impact)} (each new thread picks or "
                "creates an arena; a new arena maps a 64 MiB heap)")
    step = "reuse threads (a thread pool) instead of creating short-lived ones; MALLOC_ARENA_MAX caps new arenas"
    return [_finding(analysis, "arena-churn", impact, "Many threads start and pick an arena", evidence, step)]


def native_grow_stalls(analysis: Analysis) -> list[Finding]:
    entries = [entry for entry in growth.grow_table(analysis, top_stacks=0) if entry["function"] == "na_grow"]
    if not entries:
        return []
    entry = entries[0]
    if entry["calls"] < MIN_NATIVE_GROWS and entry["total_ns"] < MIN_NATIVE_GROW_NS:
        return []
    mapped = sum(syscall["grown_bytes"] for syscall in entry["syscalls"])
    evidence = (f"na_grow ran {entry['calls']} times, {format_ns(entry['total_ns'])} "
                f"(p99 {format_ns(entry['p99_ns'])}), mapping {format_bytes(mapped)}")
    step = "create the arena with a larger initial size or a larger chunk size so it grows less often"
    return [_finding(analysis, "native-grow-stalls", entry["total_ns"], "native_alloc arenas stall while growing",
                     evidence, step)]


def _grow_time(analysis: Analysis, name: str) -> int:
    function = analysis.functions.id_of(name)
    if function is None:
        return 0
    return int(analysis.durations[(analysis.function_ids & 0xFF) == function].sum())


def find(analysis: Analysis) -> list[Finding]:
    """All findings, largest time impact first."""
    changes = growth.brk_changes(analysis)
    results = [*lock_contention(analysis), *small_heap_growth(analysis, changes), *trim_cycles(analysis, changes),
               *mmap_thrash(analysis), *consolidation_storm(analysis), *arena_churn(analysis),
               *native_grow_stalls(analysis)]
    return sorted(results, key=lambda finding: (-finding.impact_ns, finding.kind))
