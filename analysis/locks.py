"""Arena lock waits: which calls count, and the tables by arena, thread and stack.

A wait counts when the tracer marked its lock word as an arena lock (EVENT_FLAG_ARENA_LOCK; for glibc the
futex address of an arena is the arena itself, main_arena is a symbol, other arenas follow the 64 MiB heap
alignment rule), or when it is native_alloc's na_lock_wait (its argument is always the arena). Futex
syscalls made inside a traced lock-wait call are part of that call's wait and are not counted again; a
futex is counted on its own only when no lock-wait function was traced around it. stdio and other libc
locks never count, nor do the application's own futexes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from arena_trace.analysis.aggregate import Analysis, _int64
from arena_trace.analysis.function_table import ROLE_CODE
from arena_trace.analysis.percentiles import grouped_percentiles
from arena_trace.probes.event_layout import EVENT_FLAG_MAIN_ARENA


def lock_wait_mask(analysis: Analysis) -> np.ndarray:
    lock_wait_role = analysis.roles == ROLE_CODE["lock-wait"]
    native = analysis.functions.is_native[analysis.function_ids & 0xFF]
    parent_is_wait = analysis.functions.role_codes[analysis.innermost_parent] == ROLE_CODE["lock-wait"]
    waits = lock_wait_role & (analysis.arena_lock | native)
    futexes = analysis.is_syscall & analysis.arena_lock & ~parent_is_wait
    return waits | futexes


def lock_wait_summary(analysis: Analysis) -> dict:
    mask = lock_wait_mask(analysis)
    return {"waits": int(mask.sum()), "total_ns": int(analysis.durations[mask].sum())}


def arena_table(analysis: Analysis, top_stacks: int = 3) -> pd.DataFrame:
    """Per arena: arena, main, allocator, waits, total_ns, p50/p99/max, threads, top_stacks."""
    mask = lock_wait_mask(analysis)
    columns = ["arena", "main", "allocator", "waits", "total_ns", "p50_ns", "p99_ns", "max_ns", "threads",
               "top_stacks"]
    if not mask.any():
        return pd.DataFrame(columns=columns)
    arenas = _int64(analysis.column("argument0"))[mask]
    codes, unique_arenas = pd.factorize(arenas)
    durations = analysis.durations[mask]
    quantiles = grouped_percentiles(codes, durations, len(unique_arenas))
    main_flag = (analysis.column("flags")[mask] & EVENT_FLAG_MAIN_ARENA) != 0
    tids = analysis.column("tid")[mask]
    native = analysis.functions.is_native[analysis.function_ids[mask] & 0xFF]
    rows_of_mask = np.flatnonzero(mask)
    records = []
    for code, arena in enumerate(unique_arenas.tolist()):
        in_group = codes == code
        selected = np.zeros(len(mask), dtype=bool)
        selected[rows_of_mask[in_group]] = True
        records.append({
            "arena": int(arena),
            "main": bool(main_flag[in_group].any() or int(arena) in analysis.main_arena_addresses),
            "allocator": "native" if native[in_group].all() else "glibc",
            "waits": int(in_group.sum()), "total_ns": int(durations[in_group].sum()),
            "p50_ns": int(quantiles["p50"][code]), "p99_ns": int(quantiles["p99"][code]),
            "max_ns": int(quantiles["max"][code]), "threads": int(len(np.unique(tids[in_group]))),
            "top_stacks": analysis.top_stacks(selected, top_stacks),
        })
    return pd.DataFrame.from_records(records, columns=columns).sort_values("total_ns", ascending=False,
                                                                          ignore_index=True)


def thread_table(analysis: Analysis) -> pd.DataFrame:
    mask = lock_wait_mask(analysis)
    frame = pd.DataFrame({"tid": _int64(analysis.column("tid"))[mask], "duration": analysis.durations[mask]})
    table = frame.groupby("tid")["duration"].agg(waits="size", total_ns="sum").sort_values("total_ns",
                                                                                         ascending=False)
    table.insert(0, "name", [analysis.thread_names.get(int(tid), "") for tid in table.index])
    return table


def stack_table(analysis: Analysis, limit: int = 10) -> list[dict]:
    return analysis.top_stacks(lock_wait_mask(analysis), limit)
