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
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import pandas as pd
from arena_trace.analysis.profile_rules import (
    Roles,
    aggregate_self_times,
    allocator_aggregate_mask,
    allocator_event_mask,
    event_self_times,
    grow_mask,
    heap_growth_bytes,
    lock_wait_mask,
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


class ProfileBuilder:
    """Turns a Trace into one MetricProfile per metric."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.roles = Roles(trace)
        self.stacks = StackBuilder(trace)

    def build(self, metrics: Iterable[Metric] = tuple(Metric)) -> dict[Metric, MetricProfile]:
        return {metric: self.build_one(metric) for metric in metrics}

    def build_one(self, metric: Metric) -> MetricProfile:
        profile = MetricProfile(metric)
        events, aggregates = self.trace.events, self.trace.aggregates
        event_self = pd.Series(event_self_times(events), index=events.index)
        aggregate_self = pd.Series(aggregate_self_times(aggregates, events), index=aggregates.index)
        if metric is Metric.ALLOCATOR_TIME:
            self._add_rows(profile, events, allocator_event_mask(events, self.roles), event_self)
            self._add_rows(profile, aggregates, allocator_aggregate_mask(aggregates, self.roles), aggregate_self)
        elif metric is Metric.CALLS:
            ones = pd.Series(np.ones(len(events), dtype=np.int64), index=events.index)
            self._add_rows(profile, events, allocator_event_mask(events, self.roles), ones)
            self._add_rows(profile, aggregates, allocator_aggregate_mask(aggregates, self.roles),
                           aggregates.get("calls"))
        elif metric is Metric.LOCK_WAIT:
            self._add_rows(profile, events, lock_wait_mask(events, self.roles), events.get("duration_ns"),
                           with_arena=True)
            self._add_rows(profile, aggregates, lock_wait_mask(aggregates, self.roles), aggregates.get("total_ns"),
                           with_arena=True)
        elif metric is Metric.GROW_TIME:
            self._add_rows(profile, events, grow_mask(events, self.roles), event_self)
            self._add_rows(profile, aggregates, grow_mask(aggregates, self.roles), aggregate_self)
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
