"""Weighted stack samples per metric: the one source every flamegraph exporter (speedscope, folded, pprof) reads.

Rules (the ``analyze`` report uses the same selection; ``metric_total`` gives each flamegraph's total). "Rows"
are streamed events plus in-kernel aggregates. Weights use self time recomputed from the call tree
(analysis.profile_rules), so each frame's width is its inclusive time and a tree adds up to its outermost call:

* allocator-time (ns): every row inside a counted outermost allocator call, where an outermost call counts
  unless it is a syscall (counted only when flagged EVENT_FLAG_ARENA_LOCK) or a lock-wait function that did
  not wait on an arena lock (a stdio lock). Total = the report's allocator time: inclusive time of the counted
  outermost streamed calls plus ``total_ns`` of the outermost (empty-path, non-syscall) aggregates.
* lock-wait (ns): ``duration_ns`` (events) / ``total_ns`` (aggregates) of rows flagged EVENT_FLAG_ARENA_LOCK
  (or native_alloc lock-wait calls) that are not nested in another lock-wait call; = the report's lock waits.
  Arena = ``argument0`` (events only; aggregates only know main/other from EVENT_FLAG_MAIN_ARENA).
* grow-time (ns): rows that are grow-role calls or run inside one: the inclusive time of the outermost grow
  calls (new_heap inside sysmalloc is not counted twice).
* heap-growth (bytes): inside grow calls only: positive brk deltas (return value minus the previous brk's
  return value, by time; the first brk seen has no predecessor and counts 0), mprotect lengths (how non-main
  arenas commit memory) and mmap lengths (failed mmaps excluded), but not the mmap/munmap of a
  heap-reservation function (glibc new_heap: a PROT_NONE reservation that only mprotect commits).
  Aggregated syscalls carry no byte counts.
* calls (count): one per streamed call, ``calls`` per aggregate row, over the allocator-time rows.
Per-thread views only cover streamed calls: the kernel aggregates keep no thread id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property

import numpy as np
import pandas as pd
from arena_trace.analysis.profile_rules import (
    Roles,
    Rows,
    aggregate_self_times,
    allocator_aggregate_mask,
    allocator_event_mask,
    compact,
    dense_codes,
    event_self_times,
    grow_mask,
    heap_growth_bytes,
    lock_wait_mask,
    weighted_counts,
)
from arena_trace.analysis.profile_stacks import Frame, StackBuilder
from arena_trace.probes.event_layout import EVENT_FLAG_MAIN_ARENA
from arena_trace.tracer.trace_format import Trace


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


# Group keys below this many combinations are used as group codes directly (per-metric sums are arrays of
# this length); above it they are renumbered by hashing.
_DIRECT_GROUP_KEYS = 1 << 22


@dataclass(frozen=True)
class SampleGroups:
    """Rows grouped by (stack_id, path, function, tid): ``codes`` per row; ``key(code)`` gives the values.

    Codes carry no order: samples are ordered by the rows (first appearance), not by code.
    """

    codes: np.ndarray
    count: int  # codes are in [0, count)
    values: tuple[np.ndarray, ...]  # the distinct values of each key column
    combined: np.ndarray | None  # the mixed-radix key of each code, None when the code is the key itself

    def key(self, code: int) -> tuple[int, int, int, int]:
        """(stack_id, path, function, tid) of a group; tid is -1 for aggregates."""
        remaining = int(self.combined[code]) if self.combined is not None else int(code)
        parts = []
        for values in reversed(self.values):
            remaining, part = divmod(remaining, max(len(values), 1))
            parts.append(int(values[part]) if len(values) else -1)
        stack_id, path, function, tid = reversed(parts)
        return stack_id, path, function, tid


def _sample_groups(rows: Rows) -> SampleGroups:
    """Group every row once; each metric then only sums its weights per group code.

    A trace has millions of rows but few distinct (stack, path, function, thread) combinations, so the
    per-group work (frames, Sample objects) is done per group and the per-row work is array arithmetic.
    """
    columns: list[Callable[[], tuple[np.ndarray, np.ndarray]]] = [
        lambda: dense_codes(rows.integers("stack_id") if rows.has("stack_id") else _constant(rows.count)),
        lambda: (rows.path_codes, rows.path_values),
        lambda: dense_codes(rows.functions),
        lambda: rows.tid_codes if rows.is_events else dense_codes(_constant(rows.count)),
    ]
    # Mixed-radix number of the four codes: one int64 key per row. Built column by column so only one
    # column's codes exist at a time next to the key (these arrays are as long as the trace).
    combined = np.zeros(rows.count, dtype=np.int64)
    uniques: list[np.ndarray] = []
    span = 1
    for column in columns:
        codes, values = column()
        size = max(len(values), 1)
        span *= size
        if span >= 1 << 62:  # too many distinct values for one int64 key (never seen in practice)
            return _sample_groups_by_pandas(rows, columns)
        combined *= size
        combined += codes
        uniques.append(np.asarray(values))
        del codes
    if span <= _DIRECT_GROUP_KEYS:
        return SampleGroups(compact(combined), span, tuple(uniques), None)
    codes, keys = pd.factorize(combined)
    return SampleGroups(compact(codes), len(keys), tuple(uniques), np.asarray(keys))


def _constant(count: int) -> np.ndarray:
    return np.full(count, -1, dtype=np.int64)


def _sample_groups_by_pandas(rows: Rows, columns: list[Callable[[], tuple[np.ndarray, np.ndarray]]]
                             ) -> SampleGroups:
    factors = [column() for column in columns]
    frame = pd.DataFrame({str(index): codes for index, (codes, _) in enumerate(factors)})
    codes = frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy()
    count = int(codes.max()) + 1 if len(codes) else 0
    first = np.full(count, rows.count, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(rows.count))
    # One column per key part, each group's own value: key() reads them as a one-value-per-group radix.
    values = tuple(np.asarray(uniques)[part[first]] for part, uniques in factors)
    return _PerGroupKeys(compact(codes), count, values, None)


class _PerGroupKeys(SampleGroups):
    """Groups whose key values are stored per group (the rare pandas fallback)."""

    def key(self, code: int) -> tuple[int, int, int, int]:
        stack_id, path, function, tid = (int(values[code]) for values in self.values)
        return stack_id, path, function, tid


class ProfileBuilder:
    """Turns a Trace into one MetricProfile per metric; per-row values shared by several metrics are kept."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.roles = Roles(trace)
        self.stacks = StackBuilder(trace)
        self.events = Rows(trace.events)
        self.aggregates = Rows(trace.aggregates)

    @cached_property
    def event_self(self) -> np.ndarray:
        return event_self_times(self.events)

    @cached_property
    def aggregate_self(self) -> np.ndarray:
        return aggregate_self_times(self.aggregates, self.events)

    @cached_property
    def allocator_events(self) -> np.ndarray:
        return allocator_event_mask(self.events, self.roles)

    @cached_property
    def allocator_aggregates(self) -> np.ndarray:
        return allocator_aggregate_mask(self.aggregates, self.roles)

    @cached_property
    def event_groups(self) -> SampleGroups:
        return _sample_groups(self.events)

    @cached_property
    def _aggregate_groups(self) -> SampleGroups:
        return _sample_groups(self.aggregates)

    def build(self, metrics: Iterable[Metric] = tuple(Metric)) -> dict[Metric, MetricProfile]:
        return {metric: self.build_one(metric) for metric in metrics}

    def build_one(self, metric: Metric) -> MetricProfile:
        profile = MetricProfile(metric)
        events, aggregates = self.events, self.aggregates
        if metric is Metric.ALLOCATOR_TIME:
            self._add_rows(profile, events, self.allocator_events, lambda: self.event_self)
            self._add_rows(profile, aggregates, self.allocator_aggregates, lambda: self.aggregate_self)
        elif metric is Metric.CALLS:
            self._add_rows(profile, events, self.allocator_events, lambda: 1)
            self._add_rows(profile, aggregates, self.allocator_aggregates, _column(aggregates, "calls"))
        elif metric is Metric.LOCK_WAIT:
            self._add_rows(profile, events, lock_wait_mask(events, self.roles), _column(events, "duration_ns"),
                           with_arena=True)
            self._add_rows(profile, aggregates, lock_wait_mask(aggregates, self.roles),
                           _column(aggregates, "total_ns"), with_arena=True)
        elif metric is Metric.GROW_TIME:
            self._add_rows(profile, events, grow_mask(events, self.roles), lambda: self.event_self)
            self._add_rows(profile, aggregates, grow_mask(aggregates, self.roles), lambda: self.aggregate_self)
        elif metric is Metric.HEAP_GROWTH:
            growth = heap_growth_bytes(events, self.roles)
            self._add_rows(profile, events, growth > 0, lambda: growth)
        return profile

    def _add_rows(self, profile: MetricProfile, rows: Rows, mask: np.ndarray,
                  weights: Callable[[], np.ndarray | int] | None, with_arena: bool = False) -> None:
        """Add the selected rows' weights (an array per row, or one number for every row) per sample.

        ``weights`` is called only when a row is selected: self times cost a pass over the call tree.
        Samples are added in the order their first row appears, as the former per-row grouping did
        (pprof writes samples in that order, speedscope breaks weight ties by it).
        """
        if rows.empty or weights is None or not mask.any():
            return
        groups = self.event_groups if rows.is_events else self._aggregate_groups
        codes = groups.codes[mask]
        chosen = weights()
        values = chosen[mask] if isinstance(chosen, np.ndarray) else None
        if with_arena:
            arenas = rows.uint64("argument0")[mask] if rows.has("argument0") else np.zeros(len(codes), np.uint64)
            main = (rows.flags[mask] & EVENT_FLAG_MAIN_ARENA) != 0
            arena_codes, arena_values = pd.factorize(arenas)
            arena_count = max(len(arena_values), 1)
            if groups.count * arena_count * 2 >= 1 << 62:  # never in practice: thousands of groups and arenas
                keys = pd.MultiIndex.from_arrays([codes, arena_codes, main])
                sub_codes, unique_keys = keys.factorize()
                decoded = [(int(group), int(arena), bool(is_main)) for group, arena, is_main in unique_keys]
            else:
                sub_codes, unique_combined = pd.factorize((codes.astype(np.int64) * arena_count + arena_codes) * 2
                                                          + main)
                decoded = [(int(key) // 2 // arena_count, int(key) // 2 % arena_count, bool(key % 2))
                           for key in unique_combined]
            sums = _sums(sub_codes, values, len(decoded), chosen)
            for index, (group, arena_code, is_main) in enumerate(decoded):
                arena = int(arena_values[arena_code]) if len(arena_values) else 0
                profile.add(self._sample(groups, group, rows.is_events, arena or None, is_main), int(sums[index]))
            return
        sums = _sums(codes, values, groups.count, chosen)
        for group in pd.unique(codes):
            profile.add(self._sample(groups, int(group), rows.is_events), int(sums[group]))

    def _sample(self, groups: SampleGroups, group: int, is_event: bool, arena: int | None = None,
                main_arena: bool | None = None) -> Sample:
        stack_id, path, function, tid = groups.key(group)
        return Sample(
            frames=self.stacks.stack(stack_id, path, function),
            tid=tid if is_event else None,
            arena=arena,
            main_arena=main_arena,
        )


def _column(rows: Rows, name: str) -> Callable[[], np.ndarray] | None:
    return (lambda: rows.int64(name)) if rows.has(name) else None


def _sums(codes: np.ndarray, values: np.ndarray | None, length: int, constant: np.ndarray | int) -> np.ndarray:
    """Per-code sums of ``values``, or of ``constant`` per row when every row weighs the same."""
    return weighted_counts(codes, values if values is not None else int(constant), length)


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
