"""Heap growth stalls: sysmalloc / new_heap / na_grow calls and the syscalls made inside them.

A syscall belongs to a grow call when that call is among its enclosing traced calls. The nearest grow call
of each syscall is found by walking parent_call_id links (vectorized, at most PATH_DEPTH steps), which is
exact even when the packed path was truncated and lets us say how many stalls reached the kernel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from arena_trace.analysis.aggregate import Analysis, _int64
from arena_trace.analysis.function_table import ROLE_CODE, path_contains
from arena_trace.analysis.percentiles import grouped_percentiles
from arena_trace.analysis.profile_rules import Roles, Rows, heap_growth_bytes
from arena_trace.probes.event_layout import PATH_DEPTH


def enclosing_call(analysis: Analysis, rows: np.ndarray, target: np.ndarray) -> np.ndarray:
    """For each selected row index in ``rows``: the row index of its nearest enclosing call for which
    ``target`` (a mask over selected events) is true, or -1."""
    call_ids = _int64(analysis.column("call_id"))
    parents = _int64(analysis.column("parent_call_id"))
    order = np.argsort(call_ids, kind="stable")
    sorted_ids = call_ids[order]
    result = np.full(len(rows), -1, dtype=np.int64)
    current = parents[rows]
    pending = current != 0
    for _ in range(PATH_DEPTH + 1):
        if not pending.any() or len(sorted_ids) == 0:
            break
        positions = np.minimum(np.searchsorted(sorted_ids, current), len(sorted_ids) - 1)
        found = pending & (sorted_ids[positions] == current)
        candidate = order[positions]
        hit = found & target[candidate]
        result[hit] = candidate[hit]
        # Keep climbing through callers that are streamed but not targets; an unstreamed caller (a full-tier
        # function kept only as an aggregate) ends the chain.
        pending = found & ~hit
        current = np.where(pending, parents[candidate], 0)
    return result


def grow_table(analysis: Analysis, top_stacks: int = 3) -> list[dict]:
    """Per grow function: calls, total/p50/p99/max, stalls that made syscalls, syscalls inside, top stacks."""
    grow = analysis.roles == ROLE_CODE["grow"]
    if not grow.any():
        return []
    syscall_rows = np.flatnonzero(analysis.is_syscall)
    owners = enclosing_call(analysis, syscall_rows, grow)
    inside = owners >= 0
    syscall_rows, owners = syscall_rows[inside], owners[inside]
    function_ids = analysis.function_ids & 0xFF
    codes = np.where(grow, function_ids, 0)
    quantiles = grouped_percentiles(codes[grow], analysis.durations[grow], 256)
    byte_counts = analysis.syscall_bytes
    result = []
    for function in np.unique(function_ids[grow]).tolist():
        calls = grow & (function_ids == function)
        # Syscalls anywhere below a call of this function (through nested grow calls too, e.g. sysmalloc →
        # new_heap → mmap), found from the packed paths.
        below = np.zeros(len(grow), dtype=bool)
        below[syscall_rows] = True
        below &= path_contains(analysis.column("path"), [function])
        syscalls = []
        if below.any():
            frame = pd.DataFrame({"name": analysis.functions.names[function_ids[below]],
                                  "duration": analysis.durations[below], "bytes": np.abs(byte_counts[below]),
                                  "grown": _grown_bytes(analysis, below)})
            grouped = frame.groupby("name").agg(calls=("duration", "size"), total_ns=("duration", "sum"),
                                                bytes=("bytes", "sum"), grown_bytes=("grown", "sum"))
            syscalls = [{"name": str(name), **{key: int(value) for key, value in values.items()}}
                        for name, values in grouped.sort_values("total_ns", ascending=False).iterrows()]
        direct_owner_function = function_ids[owners]
        result.append({
            "function": analysis.functions.name(function),
            "calls": int(calls.sum()), "total_ns": int(analysis.durations[calls].sum()),
            "p50_ns": int(quantiles["p50"][function]), "p99_ns": int(quantiles["p99"][function]),
            "max_ns": int(quantiles["max"][function]),
            "stalls_with_syscalls": int(len(np.unique(owners[direct_owner_function == function]))),
            "syscalls": syscalls,
            "top_stacks": analysis.top_stacks(calls, top_stacks),
        })
    return sorted(result, key=lambda entry: -entry["total_ns"])


def _grown_bytes(analysis: Analysis, rows: np.ndarray) -> np.ndarray:
    """Heap growth of each selected row, by the one rule the flamegraphs use too (profile_rules): brk's
    increase of the break, mmap's length (not new_heap's address-space reservation), mprotect's length
    (how non-main arenas commit memory), all only inside a grow call."""
    grown = heap_growth_bytes(Rows(analysis.trace.events), Roles(analysis.trace))
    if analysis.mask is not None:
        grown = grown[analysis.mask]
    return grown[rows]


def brk_changes(analysis: Analysis) -> pd.DataFrame:
    """Every selected brk call that moved the break: timestamp, change in bytes, and the role of its nearest
    enclosing traced allocator call ("grow", "trim" or "" when none)."""
    names = analysis.functions.names[analysis.function_ids & 0xFF]
    rows = np.flatnonzero(names == "brk")
    changes = analysis.syscall_bytes[rows]
    moved = changes != 0
    rows, changes = rows[moved], changes[moved]
    parent_roles = analysis.functions.role_codes[analysis.innermost_parent[rows]]
    role_names = np.select([parent_roles == ROLE_CODE["grow"], parent_roles == ROLE_CODE["trim"]], ["grow", "trim"],
                           "")
    return pd.DataFrame({"timestamp_ns": _int64(analysis.column("timestamp_ns")[rows]), "bytes": changes,
                         "within": role_names, "duration_ns": analysis.durations[rows]}).sort_values("timestamp_ns")
