"""Which rows count towards each flamegraph metric, and with what weight (the rules are in analysis.profiles).

Self time is recomputed from the call tree instead of read from ``self_ns``: a row's weight is its inclusive
time minus the inclusive time of its traced children, so the weights of a call tree add up to exactly the
inclusive time of its outermost call (the number the report shows), whatever the recorder's notion of self
time. Streamed children are found through ``parent_call_id``; a streamed call whose parent was aggregated
in the kernel is a child of the aggregate row whose call chain equals its path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from arena_trace.probes.event_layout import EVENT_FLAG_ARENA_LOCK, PATH_DEPTH, unpack_path
from arena_trace.tracer.trace_format import Trace

# Functions that reserve address space with a PROT_NONE mmap and commit it with mprotect.
HEAP_RESERVATION_FUNCTIONS = frozenset({"new_heap"})
# An mmap return value in [-4095, -1] as u64 is an error code, not an address.
_ERROR_RETURN_FLOOR = (1 << 64) - 4096
_MAX_NESTING = 64  # parent_call_id chains longer than this are treated as corrupt (a cycle)


class Roles:
    """Function attributes from the trace's function table."""

    def __init__(self, trace: Trace) -> None:
        functions = trace.metadata.get("functions", [])
        self.role = {int(entry["id"]): str(entry.get("role", "")) for entry in functions}
        self.kind = {int(entry["id"]): str(entry.get("kind", "function")) for entry in functions}
        self.name = {int(entry["id"]): str(entry.get("name", "")) for entry in functions}
        self.native = {int(entry["id"]) for entry in functions if entry.get("allocator") == "native"}

    def ids(self, role: str) -> set[int]:
        return {function_id for function_id, value in self.role.items() if value == role}

    def syscall_ids(self) -> set[int]:
        return {function_id for function_id in self.kind
                if self.kind[function_id] == "syscall" or self.role[function_id] == "syscall"}


def _int64(series: pd.Series) -> np.ndarray:
    return series.to_numpy().astype(np.int64, copy=False)


def path_contains(paths: pd.Series, function_ids: set[int]) -> np.ndarray:
    """'Does the packed path contain any of these ids', memoised per distinct path (there are few)."""
    if paths.empty:
        return np.zeros(0, dtype=bool)
    memo = {int(value): bool(function_ids.intersection(unpack_path(int(value)))) for value in paths.unique()}
    return paths.map(lambda value: memo[int(value)]).to_numpy(dtype=bool)


def chain_key(path: int, function_id: int) -> int:
    """The packed path a direct child of a call with this path and function carries."""
    depth = len(unpack_path(path))
    return path | (function_id & 0xFF) << (8 * depth) if depth < PATH_DEPTH else path


def event_roots(events: pd.DataFrame) -> np.ndarray:
    """Row position of the outermost streamed ancestor of each event (itself when its parent is not streamed)."""
    count = len(events)
    parents = pd.Index(events["call_id"].to_numpy()).get_indexer(events["parent_call_id"].to_numpy())
    parents[events["parent_call_id"].to_numpy() == events["call_id"].to_numpy()] = -1
    roots = np.arange(count)
    current = parents.copy()
    for _ in range(_MAX_NESTING):
        moving = current >= 0
        if not moving.any():
            break
        roots[moving] = current[moving]
        current[moving] = parents[current[moving]]
    return roots


def _top_level_counts(rows: pd.DataFrame, roles: Roles) -> np.ndarray:
    """The report's rule for an outermost call: syscalls only when they wait on an arena lock, lock-wait
    functions only on arena locks (native_alloc's locks are all arena locks), every other function."""
    functions = rows["function"].astype(int)
    arena_lock = (rows["flags"].astype(int).to_numpy() & EVENT_FLAG_ARENA_LOCK) != 0
    is_syscall = functions.isin(roles.syscall_ids()).to_numpy()
    is_lock_wait = functions.isin(roles.ids("lock-wait")).to_numpy()
    is_native = functions.isin(roles.native).to_numpy()
    return np.where(is_syscall, arena_lock, np.where(is_lock_wait, arena_lock | is_native, True))


def allocator_event_mask(events: pd.DataFrame, roles: Roles) -> np.ndarray:
    """Events inside counted allocator calls: decided by the outermost streamed ancestor. An event whose
    parent was aggregated (non-empty path at the root) lies inside an aggregated function call: counted."""
    if events.empty:
        return np.zeros(0, dtype=bool)
    roots = event_roots(events)
    root_rows = events.iloc[roots]
    orphan = root_rows["path"].astype("uint64").to_numpy() != 0
    return orphan | _top_level_counts(root_rows, roles)


def allocator_aggregate_mask(aggregates: pd.DataFrame, roles: Roles) -> np.ndarray:
    """Aggregates whose outermost function (path[0], or the row's own function) is not a syscall."""
    if aggregates.empty:
        return np.zeros(0, dtype=bool)
    syscalls = roles.syscall_ids()
    outermost = [unpack_path(int(path))[:1] or [int(function)]
                 for path, function in zip(aggregates["path"], aggregates["function"], strict=True)]
    return np.array([ids[0] not in syscalls for ids in outermost], dtype=bool)


def event_self_times(events: pd.DataFrame) -> np.ndarray:
    """Inclusive time minus the inclusive time of streamed children (never negative)."""
    if events.empty:
        return np.zeros(0, dtype=np.int64)
    durations = _int64(events["duration_ns"])
    children = pd.Series(durations).groupby(events["parent_call_id"].to_numpy()).sum()
    child_time = pd.Series(events["call_id"].to_numpy()).map(children).fillna(0).to_numpy().astype(np.int64)
    return np.maximum(durations - child_time, 0)


def aggregate_self_times(aggregates: pd.DataFrame, events: pd.DataFrame) -> np.ndarray:
    """``total_ns`` minus the time of the rows nested directly inside (aggregates by path, streamed calls
    whose parent was not streamed), shared among the rows of one call chain in proportion to their time."""
    if aggregates.empty:
        return np.zeros(0, dtype=np.int64)
    totals = _int64(aggregates["total_ns"])
    paths = aggregates["path"].astype("uint64").to_numpy()
    chains = np.array([chain_key(int(path), int(function))
                       for path, function in zip(paths, aggregates["function"], strict=True)], dtype=np.uint64)
    nested = pd.Series(totals).groupby(paths).sum()
    if not events.empty:
        orphans = events[pd.Index(events["call_id"].to_numpy()).get_indexer(events["parent_call_id"].to_numpy()) < 0]
        nested = nested.add(pd.Series(_int64(orphans["duration_ns"])).groupby(
            orphans["path"].astype("uint64").to_numpy()).sum(), fill_value=0)
    chain_totals = pd.Series(totals).groupby(chains).sum()
    inner = pd.Series(chains).map(nested).fillna(0).to_numpy()
    share = np.divide(totals, pd.Series(chains).map(chain_totals).to_numpy(), out=np.zeros(len(totals)),
                      where=totals > 0)
    return np.maximum(np.rint(totals - inner * share), 0).astype(np.int64)


def lock_wait_mask(rows: pd.DataFrame, roles: Roles) -> np.ndarray:
    """Arena-lock waits not nested in another lock-wait call (the futex inside __lll_lock_wait_private is
    the same wait); native_alloc's lock-wait function waits on arena locks only."""
    if rows.empty:
        return np.zeros(0, dtype=bool)
    arena_lock = (rows["flags"].astype(int).to_numpy() & EVENT_FLAG_ARENA_LOCK) != 0
    functions = rows["function"].astype(int)
    native_wait = functions.isin(roles.ids("lock-wait") & roles.native).to_numpy()
    return (arena_lock | native_wait) & ~path_contains(rows["path"], roles.ids("lock-wait"))


def grow_mask(rows: pd.DataFrame, roles: Roles) -> np.ndarray:
    grow_ids = roles.ids("grow")
    if rows.empty:
        return np.zeros(0, dtype=bool)
    return rows["function"].astype(int).isin(grow_ids).to_numpy() | path_contains(rows["path"], grow_ids)


def heap_growth_bytes(events: pd.DataFrame, roles: Roles) -> np.ndarray:
    """Bytes each event added to the heap (0 for most); see analysis.profiles for the rule."""
    growth = np.zeros(len(events), dtype=np.int64)
    if events.empty:
        return growth
    names = events["function"].astype(int).map(lambda function_id: roles.name.get(function_id, "")).to_numpy()
    inside_grow = path_contains(events["path"], roles.ids("grow"))
    reservation_ids = {i for i, name in roles.name.items() if name in HEAP_RESERVATION_FUNCTIONS}
    inside_reservation = path_contains(events["path"], reservation_ids)
    returns = events["return_value"].astype("uint64").to_numpy()
    lengths = events["argument0"].astype("uint64").to_numpy()

    mapped = (names == "mmap") & inside_grow & ~inside_reservation & (returns < _ERROR_RETURN_FLOOR)
    growth[mapped] = lengths[mapped].astype(np.int64)
    protected = (names == "mprotect") & inside_grow & (returns == 0)
    growth[protected] = lengths[protected].astype(np.int64)

    # The program break is process-wide: each brk's growth is relative to the previous brk's result.
    brk_positions = np.flatnonzero(names == "brk")
    if len(brk_positions) > 1:
        order = brk_positions[np.argsort(events["timestamp_ns"].to_numpy()[brk_positions], kind="stable")]
        breaks = returns[order].astype(np.int64)
        deltas = np.clip(breaks[1:] - breaks[:-1], 0, None)
        later = order[1:]
        growth[later] = np.where(inside_grow[later], deltas, 0)
    return growth
