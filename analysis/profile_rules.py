"""Which rows count towards each flamegraph metric, and with what weight (the rules are in analysis.profiles).

Self time is recomputed from the call tree instead of read from ``self_ns``: a row's weight is its inclusive
time minus the inclusive time of its traced children, so the weights of a call tree add up to exactly the
inclusive time of its outermost call (the number the report shows), whatever the recorder's notion of self
time. Streamed children are found through ``parent_call_id``; a streamed call whose parent was aggregated
in the kernel is a child of the aggregate row whose call chain equals its path.

Everything here is column arithmetic over numpy arrays (``Rows``): a trace has millions of events, while the
per-value decisions (does this path contain a grow function?) are made once per distinct value.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
from arena_trace.probes.event_layout import EVENT_FLAG_ARENA_LOCK, PATH_DEPTH, unpack_path
from arena_trace.tracer.trace_format import Trace

# Functions that reserve address space with a PROT_NONE mmap and commit it with mprotect.
HEAP_RESERVATION_FUNCTIONS = frozenset({"new_heap"})
# An mmap return value in [-4095, -1] as u64 is an error code, not an address.
_ERROR_RETURN_FLOOR = (1 << 64) - 4096
_NESTING_DOUBLINGS = 6
_MAX_NESTING = 1 << _NESTING_DOUBLINGS  # parent_call_id chains longer than this are treated as corrupt (a cycle)
_CHUNK = 1 << 20  # rows per step when checking call ids, so the check needs no array as long as the trace


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

    def named(self, name: str) -> set[int]:
        return {function_id for function_id, value in self.name.items() if value == name}


def weighted_counts(codes: np.ndarray, weights: np.ndarray | int, length: int) -> np.ndarray:
    """Exact int64 sums of ``weights`` (per row, or one number for every row) per code in [0, length).

    np.add.at, not bincount: bincount sums in float64 (inexact past 2**53) and is several times slower
    (it converts both the codes and the weights).
    """
    sums = np.zeros(length, dtype=np.int64)
    if isinstance(weights, np.ndarray):
        weights = weights.astype(np.int64, copy=False)
    np.add.at(sums, codes, weights)
    return sums


def _lookup(values: np.ndarray, members: set[int]) -> np.ndarray:
    """``values`` in ``members``, for small non-negative integer values: one gather instead of a set search."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= 1 << 20:
        return np.isin(values, np.fromiter(members, dtype=np.int64, count=len(members)))
    table = np.zeros(high + 1, dtype=bool)
    table[[member for member in members if 0 <= member <= high]] = True
    return table[values]


def dense_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values) like pd.factorize, but by table lookup for small non-negative integers.

    Codes follow value order, not first appearance (callers that need an order take it from the rows).
    """
    if len(values) and values.dtype.kind in "iu":
        low, high = int(values.min()), int(values.max())
        if high - low < 1 << 20:
            shifted = values - values.dtype.type(low) if low else values
            present = np.zeros(high - low + 1, dtype=bool)
            present[shifted] = True
            table = np.cumsum(present, dtype=np.int32) - 1
            return table[shifted], np.flatnonzero(present) + low
    codes, distinct = pd.factorize(values)
    return compact(codes), np.asarray(distinct)


def compact(positions: np.ndarray) -> np.ndarray:
    """Row positions or codes as int32 when they fit: these arrays are as long as the trace."""
    return positions.astype(np.int32) if len(positions) < 1 << 31 else positions


def _is_consecutive(values: np.ndarray) -> bool:
    """values == values[0] + arange(len(values)), checked in chunks (no temporary as long as the column)."""
    count = len(values)
    if count == 0 or int(values[-1]) - int(values[0]) != count - 1:
        return False
    for begin in range(0, count - 1, _CHUNK):
        chunk = values[begin:begin + _CHUNK + 1]
        if not np.all(chunk[1:] - chunk[:-1] == 1):
            return False
    return True


def _positions_of(call_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row position of the call id equal to each ``wanted`` value, -1 where there is none."""
    if _is_consecutive(call_ids):
        # The recorder numbers calls in order, so the position is an offset: no hash table over millions of ids.
        first, count = int(call_ids[0]), len(call_ids)
        positions = np.empty(len(wanted), dtype=np.int32 if count < 1 << 31 else np.int64)
        np.subtract(wanted, wanted.dtype.type(first), out=positions, casting="unsafe")
        positions[(wanted < first) | (wanted >= first + count)] = -1
        return positions
    return compact(pd.Index(call_ids).get_indexer(wanted))


class Rows:
    """The columns of an events or aggregates frame as arrays, plus per-row values every metric shares."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.count = len(frame)
        self.is_events = "tid" in frame.columns

    @property
    def empty(self) -> bool:
        return self.count == 0

    def has(self, column: str) -> bool:
        return column in self.frame.columns

    def column(self, name: str) -> np.ndarray:
        return self.frame[name].to_numpy()

    def int64(self, name: str) -> np.ndarray:
        values = self.column(name)
        # Same bits, no copy: the u64 columns hold values that are int64 in every real trace.
        return values.view(np.int64) if values.dtype == np.uint64 else values.astype(np.int64, copy=False)

    def uint64(self, name: str) -> np.ndarray:
        values = self.column(name)
        return values.view(np.uint64) if values.dtype == np.int64 else values.astype(np.uint64, copy=False)

    def integers(self, name: str) -> np.ndarray:
        """A small integer column as stored (u8/u16 in real traces: no wider copy), int64 if it is not integer."""
        values = self.column(name)
        return values if values.dtype.kind in "iu" else values.astype(np.int64)

    @cached_property
    def functions(self) -> np.ndarray:
        return self.integers("function")

    @cached_property
    def flags(self) -> np.ndarray:
        return self.integers("flags")

    @cached_property
    def _path_factors(self) -> tuple[np.ndarray, np.ndarray]:
        codes, uniques = pd.factorize(self.uint64("path"), sort=False)
        return compact(codes), np.asarray(uniques, dtype=np.uint64)

    @property
    def path_codes(self) -> np.ndarray:
        return self._path_factors[0]

    @property
    def path_values(self) -> np.ndarray:
        """The distinct packed paths; ``path_values[path_codes]`` is the path column."""
        return self._path_factors[1]

    def path_contains(self, function_ids: set[int]) -> np.ndarray:
        """'Does the packed path contain any of these ids', decided once per distinct path (there are few)."""
        if self.empty:
            return np.zeros(0, dtype=bool)
        memo = np.array([bool(function_ids.intersection(unpack_path(int(value)))) for value in self.path_values],
                        dtype=bool)
        return memo[self.path_codes]

    @cached_property
    def tid_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(code per row, distinct thread ids): threads are few, and both grouping and timelines need them."""
        return dense_codes(self.integers("tid"))

    def function_in(self, function_ids: set[int]) -> np.ndarray:
        """Row's function is one of ``function_ids``: a lookup in a table indexed by function id (ids are u16)."""
        return _lookup(self.functions, function_ids)

    # --- the call tree (events only) ---

    @cached_property
    def parents(self) -> np.ndarray:
        """Row position of the row whose call_id is this row's parent_call_id (itself included), else -1."""
        return _positions_of(self.column("call_id"), self.column("parent_call_id"))

    @cached_property
    def roots(self) -> np.ndarray:
        """Row position of the outermost streamed ancestor of each event (itself when its parent is not streamed)."""
        return chain_roots(self.parents)

    @cached_property
    def durations(self) -> np.ndarray:
        return self.int64("duration_ns")


def chain_roots(parents: np.ndarray) -> np.ndarray:
    """Follow ``parents`` (row positions, -1 = none, a row that is its own parent has none) to the top,
    at most _MAX_NESTING steps.

    Pointer doubling: ``step`` maps each row to the row 2**k steps up (a top row maps to itself), so
    log2(_MAX_NESTING) gathers reach the top, or exactly _MAX_NESTING steps up in a cycle. Only rows not yet
    at the top take part in a round: most rows are at most a few levels deep.
    """
    positions = np.arange(len(parents), dtype=parents.dtype)
    step = np.where(parents >= 0, parents, positions)
    moving = np.flatnonzero(step != positions)
    del positions
    for _ in range(_NESTING_DOUBLINGS):
        if len(moving) == 0:
            break
        current = step[moving]
        jumped = step[current]  # read every row's old step before writing any new one
        step[moving] = jumped
        moving = moving[jumped != current]  # unchanged: already at the top
    return step


def chain_key(path: int, function_id: int) -> int:
    """The packed path a direct child of a call with this path and function carries."""
    depth = len(unpack_path(path))
    return path | (function_id & 0xFF) << (8 * depth) if depth < PATH_DEPTH else path


def _top_level_counts(rows: Rows, roles: Roles) -> np.ndarray:
    """The report's rule for an outermost call: syscalls only when they wait on an arena lock, lock-wait
    functions only on arena locks (native_alloc's locks are all arena locks), every other function."""
    arena_lock = (rows.flags & EVENT_FLAG_ARENA_LOCK) != 0
    is_syscall = rows.function_in(roles.syscall_ids())
    is_lock_wait = rows.function_in(roles.ids("lock-wait"))
    is_native = rows.function_in(roles.native)
    return np.where(is_syscall, arena_lock, np.where(is_lock_wait, arena_lock | is_native, True))


def allocator_event_mask(events: Rows, roles: Roles) -> np.ndarray:
    """Events inside counted allocator calls: decided by the outermost streamed ancestor. An event whose
    parent was aggregated (non-empty path at the root) lies inside an aggregated function call: counted."""
    if events.empty:
        return np.zeros(0, dtype=bool)
    # Evaluate the rule on every row once, then read it at each row's root (no copy of the root rows).
    counts_as_root = (events.uint64("path") != 0) | _top_level_counts(events, roles)
    return counts_as_root[events.roots]


def allocator_aggregate_mask(aggregates: Rows, roles: Roles) -> np.ndarray:
    """Aggregates whose outermost function (path[0], or the row's own function) is not a syscall."""
    if aggregates.empty:
        return np.zeros(0, dtype=bool)
    syscalls = roles.syscall_ids()
    outermost = [unpack_path(int(path))[:1] or [int(function)]
                 for path, function in zip(aggregates.column("path"), aggregates.column("function"), strict=True)]
    return np.array([ids[0] not in syscalls for ids in outermost], dtype=bool)


def event_self_times(events: Rows) -> np.ndarray:
    """Inclusive time minus the inclusive time of streamed children (never negative).

    A row whose parent_call_id is its own call_id counts as its own child (so its self time is 0), as the
    grouping by parent_call_id this replaces did.
    """
    if events.empty:
        return np.zeros(0, dtype=np.int64)
    durations = events.durations
    has_parent = events.parents >= 0
    child_time = weighted_counts(events.parents[has_parent], durations[has_parent], events.count)
    return np.maximum(durations - child_time, 0)


def aggregate_self_times(aggregates: Rows, events: Rows) -> np.ndarray:
    """``total_ns`` minus the time of the rows nested directly inside (aggregates by path, streamed calls
    whose parent was not streamed), shared among the rows of one call chain in proportion to their time."""
    if aggregates.empty:
        return np.zeros(0, dtype=np.int64)
    totals = aggregates.int64("total_ns")
    paths = aggregates.uint64("path")
    chains = np.array([chain_key(int(path), int(function))
                       for path, function in zip(paths, aggregates.column("function"), strict=True)], dtype=np.uint64)
    nested = pd.Series(totals).groupby(paths).sum()
    if not events.empty:
        orphan = events.parents < 0
        # Per distinct path of the events (few), not per event: the sums are then looked up by path value.
        orphan_time = weighted_counts(events.path_codes[orphan], events.durations[orphan], len(events.path_values))
        present = np.bincount(events.path_codes[orphan], minlength=len(events.path_values)) > 0
        nested = nested.add(pd.Series(orphan_time[present], index=events.path_values[present]), fill_value=0)
    chain_totals = pd.Series(totals).groupby(chains).sum()
    inner = pd.Series(chains).map(nested).fillna(0).to_numpy()
    share = np.divide(totals, pd.Series(chains).map(chain_totals).to_numpy(), out=np.zeros(len(totals)),
                      where=totals > 0)
    return np.maximum(np.rint(totals - inner * share), 0).astype(np.int64)


def lock_wait_mask(rows: Rows, roles: Roles) -> np.ndarray:
    """Arena-lock waits not nested in another lock-wait call (the futex inside __lll_lock_wait_private is
    the same wait); native_alloc's lock-wait function waits on arena locks only."""
    if rows.empty:
        return np.zeros(0, dtype=bool)
    arena_lock = (rows.flags & EVENT_FLAG_ARENA_LOCK) != 0
    native_wait = rows.function_in(roles.ids("lock-wait") & roles.native)
    return (arena_lock | native_wait) & ~rows.path_contains(roles.ids("lock-wait"))


def grow_mask(rows: Rows, roles: Roles) -> np.ndarray:
    grow_ids = roles.ids("grow")
    if rows.empty:
        return np.zeros(0, dtype=bool)
    return rows.function_in(grow_ids) | rows.path_contains(grow_ids)


def heap_growth_bytes(events: Rows, roles: Roles) -> np.ndarray:
    """Bytes each event added to the heap (0 for most); see analysis.profiles for the rule."""
    growth = np.zeros(events.count, dtype=np.int64)
    if events.empty:
        return growth
    inside_grow = events.path_contains(roles.ids("grow"))
    reservation_ids = {i for i, name in roles.name.items() if name in HEAP_RESERVATION_FUNCTIONS}
    inside_reservation = events.path_contains(reservation_ids)
    returns = events.uint64("return_value")
    lengths = events.uint64("argument0")

    mapped = events.function_in(roles.named("mmap")) & inside_grow & ~inside_reservation
    mapped &= returns < _ERROR_RETURN_FLOOR
    growth[mapped] = lengths[mapped].astype(np.int64)
    protected = events.function_in(roles.named("mprotect")) & inside_grow & (returns == 0)
    growth[protected] = lengths[protected].astype(np.int64)

    # The program break is process-wide: each brk's growth is relative to the previous brk's result.
    brk_positions = np.flatnonzero(events.function_in(roles.named("brk")))
    if len(brk_positions) > 1:
        order = brk_positions[np.argsort(events.column("timestamp_ns")[brk_positions], kind="stable")]
        breaks = returns[order].astype(np.int64)
        deltas = np.clip(breaks[1:] - breaks[:-1], 0, None)
        later = order[1:]
        growth[later] = np.where(inside_grow[later], deltas, 0)
    return growth
