"""Weighted stack samples per metric: the one source every flamegraph exporter (speedscope, folded, pprof) reads.

Rules (the ``analyze`` report must use the same ones, ideally by calling ``metric_total``); "rows" means
streamed events plus in-kernel aggregates, with weight ``self_ns``/``duration_ns`` for events and
``self_ns``/``total_ns``/``calls`` for aggregates:

* allocator-time (ns): sum of ``self_ns`` over rows *inside the allocator*: every allocator function row;
  a syscall row only when it ran inside a traced allocator call (non-empty path); a lock-wait-role row only
  when it waited on an arena lock (EVENT_FLAG_ARENA_LOCK) or ran inside an allocator call. Because self times
  add up to the inclusive time of the outermost calls, the flamegraph total equals the allocator time of the
  report, and a frame's width is that function's inclusive time.
* lock-wait (ns): sum of ``duration_ns`` (events) / ``total_ns`` (aggregates) over rows flagged
  EVENT_FLAG_ARENA_LOCK that are not nested inside another lock-wait-role call (so a futex inside
  __lll_lock_wait_private is not counted twice). Arena = ``argument0`` (events).
* grow-time (ns): sum of ``self_ns`` over rows that are grow-role calls or run inside one, which equals the
  inclusive time of the outermost grow calls (new_heap inside sysmalloc is not counted twice).
* heap-growth (bytes): inside grow calls only: positive brk deltas (return value minus the previous brk's
  return value; the first brk seen after attach has no known predecessor and counts 0), mprotect lengths and
  mmap lengths (failed mmaps excluded). mmap/munmap inside a heap-reservation function (glibc new_heap: a
  PROT_NONE reservation that only mprotect commits) are not growth. Aggregated syscalls have no byte counts.
* calls (count): one per event, ``calls`` per aggregate row, over the allocator-time rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import pandas as pd
from arena_trace.analysis.profile_stacks import Frame, StackBuilder
from arena_trace.probes.event_layout import EVENT_FLAG_ARENA_LOCK, EVENT_FLAG_MAIN_ARENA, unpack_path
from arena_trace.tracer.trace_format import Trace

# Functions that reserve address space with a PROT_NONE mmap and commit it with mprotect.
HEAP_RESERVATION_FUNCTIONS = frozenset({"new_heap"})
GROWTH_SYSCALLS = frozenset({"brk", "mmap", "mprotect"})
# An mmap return value in [-4095, -1] as u64 is an error code, not an address.
_ERROR_RETURN_FLOOR = (1 << 64) - 4096


class NothingToExport(ValueError):
    """No metric has any weight (empty trace): exporters refuse to write an empty or broken file."""


class Metric(Enum):
    """(command-line name, speedscope unit, pprof sample type, pprof unit, title)."""

    ALLOCATOR_TIME = ("allocator-time", "nanoseconds", "alloc_time", "nanoseconds", "allocator time")
    LOCK_WAIT = ("lock-wait", "nanoseconds", "lock_wait", "nanoseconds", "arena lock wait")
    GROW_TIME = ("grow-time", "nanoseconds", "grow_time", "nanoseconds", "heap grow time (sysmalloc)")
    HEAP_GROWTH = ("heap-growth", "bytes", "heap_growth", "bytes", "heap bytes grown")
    CALLS = ("calls", "none", "calls", "count", "allocator calls")

    @property
    def cli_name(self) -> str:
        return self.value[0]

    @property
    def speedscope_unit(self) -> str:
        return self.value[1]

    @property
    def pprof_type(self) -> str:
        return self.value[2]

    @property
    def pprof_unit(self) -> str:
        return self.value[3]

    @property
    def title(self) -> str:
        return self.value[4]

    @classmethod
    def from_cli(cls, name: str) -> Metric:
        for metric in cls:
            if metric.cli_name == name:
                return metric
        raise ValueError(f"unknown metric {name!r} (choose from {', '.join(m.cli_name for m in cls)})")


@dataclass(frozen=True)
class Sample:
    frames: tuple[Frame, ...]  # root first
    tid: int | None  # None for in-kernel aggregates: the kernel keeps no thread for them
    arena: int | None = None
    main_arena: bool | None = None


@dataclass
class MetricProfile:
    metric: Metric
    weights: dict[Sample, int] = field(default_factory=dict)

    def add(self, sample: Sample, weight: int) -> None:
        if weight > 0:
            self.weights[sample] = self.weights.get(sample, 0) + int(weight)

    @property
    def total(self) -> int:
        return sum(self.weights.values())

    def threads(self) -> list[int]:
        """Thread ids by descending weight (threads with streamed data only)."""
        per_thread: dict[int, int] = defaultdict(int)
        for sample, weight in self.weights.items():
            if sample.tid is not None:
                per_thread[sample.tid] += weight
        return sorted(per_thread, key=lambda tid: (-per_thread[tid], tid))

    def for_thread(self, tid: int) -> MetricProfile:
        return MetricProfile(self.metric, {s: w for s, w in self.weights.items() if s.tid == tid})


class _Roles:
    """Function-id sets per role, from the trace's function table."""

    def __init__(self, trace: Trace) -> None:
        functions = trace.metadata.get("functions", [])
        self.role = {int(entry["id"]): str(entry.get("role", "")) for entry in functions}
        self.kind = {int(entry["id"]): str(entry.get("kind", "function")) for entry in functions}
        self.name = {int(entry["id"]): str(entry.get("name", "")) for entry in functions}

    def ids(self, role: str) -> set[int]:
        return {function_id for function_id, value in self.role.items() if value == role}

    def is_syscall(self, function_id: int) -> bool:
        return self.kind.get(function_id) == "syscall" or self.role.get(function_id) == "syscall"


def _path_contains(paths: pd.Series, function_ids: set[int]) -> np.ndarray:
    """Vectorised 'does the packed path contain any of these ids' (few distinct paths: memoised per value)."""
    if paths.empty:
        return np.zeros(0, dtype=bool)
    memo = {int(value): bool(function_ids.intersection(unpack_path(int(value)))) for value in paths.unique()}
    return paths.map(lambda value: memo[int(value)]).to_numpy(dtype=bool)


def allocator_time_mask(rows: pd.DataFrame, roles: _Roles) -> np.ndarray:
    """Rows inside the allocator (see the module docstring)."""
    functions = rows["function"].astype(int)
    syscall_ids = {function_id for function_id in roles.kind if roles.is_syscall(function_id)}
    lock_wait_ids = roles.ids("lock-wait")
    in_call = rows["path"].astype("uint64").to_numpy() != 0
    arena_lock = (rows["flags"].astype(int).to_numpy() & EVENT_FLAG_ARENA_LOCK) != 0
    is_syscall = functions.isin(syscall_ids).to_numpy()
    is_lock_wait = functions.isin(lock_wait_ids).to_numpy()
    return np.where(is_syscall, in_call, np.where(is_lock_wait, in_call | arena_lock, True))


def lock_wait_mask(rows: pd.DataFrame, roles: _Roles) -> np.ndarray:
    arena_lock = (rows["flags"].astype(int).to_numpy() & EVENT_FLAG_ARENA_LOCK) != 0
    return arena_lock & ~_path_contains(rows["path"], roles.ids("lock-wait"))


def grow_mask(rows: pd.DataFrame, roles: _Roles) -> np.ndarray:
    grow_ids = roles.ids("grow")
    return rows["function"].astype(int).isin(grow_ids).to_numpy() | _path_contains(rows["path"], grow_ids)


def heap_growth_bytes(events: pd.DataFrame, roles: _Roles) -> np.ndarray:
    """Bytes each event added to the heap (0 for most), following the module docstring's rule."""
    growth = np.zeros(len(events), dtype=np.int64)
    if events.empty:
        return growth
    names = events["function"].astype(int).map(lambda function_id: roles.name.get(function_id, "")).to_numpy()
    inside_grow = _path_contains(events["path"], roles.ids("grow"))
    reservation_ids = {i for i, name in roles.name.items() if name in HEAP_RESERVATION_FUNCTIONS}
    inside_reservation = _path_contains(events["path"], reservation_ids)
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


class ProfileBuilder:
    """Turns a Trace into one MetricProfile per metric."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.roles = _Roles(trace)
        self.stacks = StackBuilder(trace)

    def build(self, metrics: Iterable[Metric] = tuple(Metric)) -> dict[Metric, MetricProfile]:
        return {metric: self.build_one(metric) for metric in metrics}

    def build_one(self, metric: Metric) -> MetricProfile:
        profile = MetricProfile(metric)
        events = self.trace.events
        aggregates = self.trace.aggregates
        if metric is Metric.ALLOCATOR_TIME:
            self._add_rows(profile, events, allocator_time_mask(events, self.roles), events.get("self_ns"))
            self._add_rows(profile, aggregates, allocator_time_mask(aggregates, self.roles),
                           aggregates.get("self_ns"))
        elif metric is Metric.CALLS:
            self._add_rows(profile, events, allocator_time_mask(events, self.roles),
                           pd.Series(np.ones(len(events), dtype=np.int64), index=events.index))
            self._add_rows(profile, aggregates, allocator_time_mask(aggregates, self.roles),
                           aggregates.get("calls"))
        elif metric is Metric.LOCK_WAIT:
            self._add_rows(profile, events, lock_wait_mask(events, self.roles), events.get("duration_ns"),
                           with_arena=True)
            self._add_rows(profile, aggregates, lock_wait_mask(aggregates, self.roles), aggregates.get("total_ns"),
                           with_arena=True)
        elif metric is Metric.GROW_TIME:
            self._add_rows(profile, events, grow_mask(events, self.roles), events.get("self_ns"))
            self._add_rows(profile, aggregates, grow_mask(aggregates, self.roles), aggregates.get("self_ns"))
        elif metric is Metric.HEAP_GROWTH:
            growth = pd.Series(heap_growth_bytes(events, self.roles), index=events.index)
            self._add_rows(profile, events, growth.to_numpy() > 0, growth)
        return profile

    def _add_rows(self, profile: MetricProfile, rows: pd.DataFrame, mask: np.ndarray, weights: pd.Series | None,
                  with_arena: bool = False) -> None:
        if rows.empty or weights is None or not mask.any():
            return
        selected = rows.loc[mask].copy()
        selected["weight"] = weights.loc[mask].astype("int64")
        is_event = "tid" in selected.columns
        selected["stack_id"] = selected["stack_id"].astype(int) if "stack_id" in selected else -1
        selected["tid"] = selected["tid"].astype(int) if is_event else -1
        keys = ["stack_id", "path", "function", "tid"]
        if with_arena:
            flags = selected["flags"].astype(int)
            selected["main"] = (flags & EVENT_FLAG_MAIN_ARENA) != 0
            selected["arena"] = selected["argument0"].astype("uint64") if "argument0" in selected else 0
            keys += ["arena", "main"]
        # Group first: a trace has millions of rows but few distinct (stack, path, thread) combinations.
        grouped = selected.groupby(keys, sort=False)["weight"].sum()
        for key, weight in grouped.items():
            stack_id, path, function_id, tid = (int(part) for part in key[:4])
            sample = Sample(
                frames=self.stacks.stack(stack_id, path, function_id),
                tid=tid if is_event else None,
                arena=(int(key[4]) or None) if with_arena else None,
                main_arena=bool(key[5]) if with_arena else None,
            )
            profile.add(sample, int(weight))


def build_profiles(trace: Trace, metrics: Iterable[Metric] = tuple(Metric)) -> dict[Metric, MetricProfile]:
    return ProfileBuilder(trace).build(metrics)


def metric_total(trace: Trace, metric: Metric) -> int:
    """The total a flamegraph of ``metric`` shows; the report's matching number must equal it."""
    return ProfileBuilder(trace).build_one(metric).total


def thread_names(trace: Trace) -> dict[int, str]:
    return {int(entry["tid"]): str(entry.get("name", "")) for entry in trace.metadata.get("threads", [])}


def has_any_stack(trace: Trace) -> bool:
    builder = StackBuilder(trace)
    events = trace.events
    if events.empty or "stack_id" not in events:
        return False
    return any(builder.has_stack(stack_id) for stack_id in events["stack_id"].unique() if int(stack_id) >= 0)
