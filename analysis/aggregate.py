"""Vectorized tables over a Trace: per function, per call path, per syscall, per thread.

Definitions used everywhere (reports, JSON, findings):

* **Streamed call**: one row of ``trace.events`` (slow-tier functions and syscalls). **Aggregated call**: a
  row of ``trace.aggregates`` (full-tier functions and syscalls counted but not streamed); they carry no
  thread and no time, so ``--tid``/``--since``/``--until`` views leave them out (the report says so).
* A function's totals = streamed calls + aggregated calls. Percentiles are exact (nearest rank) when every
  call was streamed, else estimated from the merged log2 histograms and flagged ``estimated``.
* **Call path**: the enclosing traced functions, outermost first, then the function itself
  ("malloc → _int_malloc → sysmalloc → brk"); a path the BPF side had to truncate starts with "…".
* **Allocator time**: the inclusive time of top-level allocator calls, i.e. calls with no traced caller
  (depth 0) that are allocator functions, or arena-lock futex waits seen without a traced lock-wait
  function around them. Lock-wait calls on locks that are not arenas (stdio, other libc locks) and the
  application's own syscalls are not allocator time. Nested calls are inside their caller's inclusive time,
  so nothing is counted twice. With only the slow tier traced, this is time in the slow paths (sysmalloc,
  arena waits, ...), not time in malloc as a whole. Per-thread and timeline allocator time can only use
  streamed calls: there, a streamed call counts when no streamed allocator call encloses it (a sysmalloc
  inside an aggregated malloc counts).
* **Thread time**: the denominator of a finding's share: trace duration (or the --since/--until window)
  × threads seen (distinct tids in the events and the thread list; 1 with --tid).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from arena_trace.analysis.function_table import ROLE_CODE, FunctionTable, innermost_ancestor, path_contains
from arena_trace.analysis.percentiles import QUANTILES, histogram_of, histogram_percentile, nearest_rank_index
from arena_trace.analysis.stacks import StackTable
from arena_trace.probes.event_layout import (
    EVENT_FLAG_ARENA_LOCK,
    EVENT_FLAG_PATH_TRUNCATED,
    HISTOGRAM_BUCKETS,
    unpack_path,
)
from arena_trace.tracer.trace_format import Trace

BY_CHOICES = ("path", "function", "arena", "thread", "stack")
STAT_COLUMNS = ("calls", "total_ns", "self_ns", "mean_ns", "p50_ns", "p95_ns", "p99_ns", "max_ns", "estimated")
LENGTH_SYSCALLS = ("mmap", "munmap", "mprotect", "madvise")
ARROW = " → "
# The hot-path and function tables walk the events in chunks of this many rows, so that their per-event
# temporaries (int64 group codes, sort orders, int64 sums) cost a few MiB instead of 8+ bytes per event of
# the whole trace (issue 4: at most 64 bytes per event in all, including the 47-byte events frame).
CHUNK_ROWS = 1 << 18


@dataclass(frozen=True)
class AnalysisOptions:
    """What to show; live mode passes ``AnalysisOptions()``. since/until are seconds from the trace start."""

    by: str = "path"
    top: int = 15
    tid: int | None = None
    since: float | None = None
    until: float | None = None
    interval: float | None = None  # timeline bucket width in seconds; None picks about 20 buckets

    @property
    def filtered(self) -> bool:
        return self.tid is not None or self.since is not None or self.until is not None


def _int64(values: np.ndarray) -> np.ndarray:
    # Columns may be narrowed (uint8/16/32) by the reader or uint64 in live mode: compute in int64 so both
    # give identical numbers and differences of addresses or break values cannot wrap.
    return np.asarray(values).astype(np.int64, copy=False)


class Analysis:
    """Lazily computed tables for one trace and one set of options."""

    def __init__(self, trace: Trace, options: AnalysisOptions | None = None) -> None:
        self.trace = trace
        self.options = options or AnalysisOptions()
        self.functions = FunctionTable(trace.metadata.get("functions", []))
        self.stack_table = StackTable(trace)
        events = trace.events
        timestamps = events["timestamp_ns"].to_numpy() if len(events) else np.zeros(0, dtype=np.uint64)
        self.start_ns = int(trace.metadata.get("start_ns") or (timestamps.min() if len(timestamps) else 0))
        self.mask: np.ndarray | None = None
        if self.options.filtered and len(events):
            mask = np.ones(len(events), dtype=bool)
            if self.options.tid is not None:
                mask &= events["tid"].to_numpy() == self.options.tid
            if self.options.since is not None:
                mask &= timestamps >= self.start_ns + int(self.options.since * 1e9)
            if self.options.until is not None:
                mask &= timestamps < self.start_ns + int(self.options.until * 1e9)
            self.mask = mask
        self.aggregates = trace.aggregates.iloc[0:0] if self.options.filtered else trace.aggregates

    # ---- columns of the selected events ----

    def column(self, name: str) -> np.ndarray:
        values = self.trace.events[name].to_numpy()
        return values if self.mask is None else values[self.mask]

    @cached_property
    def event_count(self) -> int:
        return len(self.trace.events) if self.mask is None else int(self.mask.sum())

    @cached_property
    def function_ids(self) -> np.ndarray:
        # uint8: ids are 1..255, and one byte per event keeps the 10 M-event working set small.
        return (self.column("function") & 0xFF).astype(np.uint8, copy=False)

    @cached_property
    def durations(self) -> np.ndarray:
        # The stored unsigned dtype (often narrowed to uint32): numpy sums unsigned ints in uint64, so no
        # int64 copy of the column is needed.
        return self.column("duration_ns")

    @cached_property
    def roles(self) -> np.ndarray:
        return self.functions.role_codes[self.function_ids & 0xFF]

    @cached_property
    def is_syscall(self) -> np.ndarray:
        return self.functions.is_syscall[self.function_ids & 0xFF]

    @cached_property
    def arena_lock(self) -> np.ndarray:
        return (self.column("flags") & EVENT_FLAG_ARENA_LOCK) != 0

    @cached_property
    def top_level_allocator(self) -> np.ndarray:
        """Which selected events count towards allocator time (see the module docstring)."""
        depth0 = self.column("depth") == 0
        return depth0 & _allocator_calls(self.functions, self.function_ids, self.column("flags"))

    @cached_property
    def outermost_streamed_allocator(self) -> np.ndarray:
        """Like top_level_allocator, but "top" among streamed calls only: a sysmalloc inside an aggregated
        malloc counts. Per-thread and timeline allocator time use this (aggregates have no tid or time)."""
        streamed_functions = [function for function in self.functions.by_id
                              if self.functions.is_streamed[function] and not self.functions.is_syscall[function]]
        no_streamed_caller = ~path_contains(self.column("path"), streamed_functions)
        return _allocator_calls(self.functions, self.function_ids, self.column("flags")) & no_streamed_caller

    @cached_property
    def allocator_ns(self) -> int:
        # Summed chunk by chunk with the same rule as top_level_allocator, without caching that mask and
        # the per-event arrays behind it: the hot-path table needs this total but none of those arrays.
        functions, flags, depth, durations = (self.column(name) for name in ("function", "flags", "depth",
                                                                             "duration_ns"))
        streamed = 0
        for rows in _chunks(len(durations)):
            counted = _allocator_calls(self.functions, functions[rows] & 0xFF, flags[rows]) & (depth[rows] == 0)
            # Multiplying by the 0/1 mask is several times faster than boolean indexing and cannot overflow.
            streamed += int(np.multiply(durations[rows], counted).sum(dtype=np.uint64))
        aggregates = self.aggregates
        if len(aggregates) == 0:
            return streamed
        functions = aggregates["function"].to_numpy().astype(np.intp) & 0xFF
        top = (aggregates["path"].to_numpy() == 0) & ~self.functions.is_syscall[functions]
        return streamed + int(aggregates["total_ns"].to_numpy()[top].astype(np.int64).sum())

    # ---- time base ----

    @cached_property
    def duration_ns(self) -> int:
        footer_duration = int(self.trace.footer.get("duration_ns") or 0)
        events = self.trace.events
        if not footer_duration and len(events):
            ends = _int64(events["timestamp_ns"].to_numpy()) + _int64(events["duration_ns"].to_numpy())
            footer_duration = int(ends.max()) - self.start_ns
        begin = int((self.options.since or 0) * 1e9)
        end = int(self.options.until * 1e9) if self.options.until is not None else footer_duration
        return max(0, min(end, footer_duration or end) - begin)

    @cached_property
    def threads_seen(self) -> int:
        if self.options.tid is not None:
            return 1
        tids = set(np.unique(self.column("tid")).tolist())
        tids |= {int(entry["tid"]) for entry in self.trace.metadata.get("threads", []) if "tid" in entry}
        return max(1, len(tids))

    @cached_property
    def thread_time_ns(self) -> int:
        return self.duration_ns * self.threads_seen

    # ---- per function ----

    @cached_property
    def function_stats(self) -> pd.DataFrame:
        """One row per function id seen: name, kind and STAT_COLUMNS, by total time."""
        functions, durations, self_times = (self.column(name) for name in ("function", "duration_ns", "self_ns"))
        grouped = _GroupedDurations(len(durations), durations.dtype)
        function_keys = list(range(256))
        for rows in _chunks(len(durations)):
            grouped.add(functions[rows] & 0xFF, function_keys, durations[rows], self_times[rows])
        rows = _merge_aggregates(grouped.finish(), self._aggregate_groups(lambda function, path: function))
        table = pd.DataFrame.from_dict(rows, orient="index", columns=list(STAT_COLUMNS))
        table.index.name = "function"
        table.insert(0, "name", [self.functions.name(function) for function in table.index])
        table.insert(1, "kind", ["syscall" if self.functions.is_syscall[function] else "function"
                                 for function in table.index])
        return table.sort_values(["total_ns", "name"], ascending=[False, True])

    # ---- per call path ----

    @cached_property
    def path_stats(self) -> pd.DataFrame:
        """One row per call path: names, label, STAT_COLUMNS, calls_share and time_share, by total time."""
        paths, functions, flags, depth, durations, self_times = (
            self.column(name) for name in ("path", "function", "flags", "depth", "duration_ns", "self_ns"))
        grouped = _GroupedDurations(len(durations), durations.dtype)
        for rows in _chunks(len(durations)):
            function_ids = functions[rows] & 0xFF
            chunk_flags = flags[rows]
            # The application's own top-level syscalls are not part of any allocator path (see syscalls).
            hidden = np.take(self.functions.is_syscall, function_ids) & (depth[rows] == 0) & \
                ((chunk_flags & EVENT_FLAG_ARENA_LOCK) == 0)
            codes, keys = _path_keys(paths[rows], function_ids, (chunk_flags & EVENT_FLAG_PATH_TRUNCATED) != 0,
                                     hidden)
            grouped.add(codes, keys, durations[rows], self_times[rows])
        keyed = _merge_aggregates(grouped.finish(), self._aggregate_groups(
            lambda function, path: (path, function, False), skip_top_level_syscalls=True))
        records = []
        for (path, function, was_truncated), values in keyed.items():
            names = [self.functions.name(ancestor) for ancestor in unpack_path(path)] + [self.functions.name(function)]
            label = ("… → " if was_truncated else "") + ARROW.join(names)
            records.append({"path": names, "label": label, "function": function, **values})
        table = pd.DataFrame.from_records(records, columns=["path", "label", "function", *STAT_COLUMNS])
        total_calls = max(1, int(table["calls"].sum())) if len(table) else 1
        table["calls_share"] = table["calls"] / total_calls
        table["time_share"] = table["total_ns"] / self.allocator_ns if self.allocator_ns else 0.0
        return table.sort_values(["total_ns", "label"], ascending=[False, True]).reset_index(drop=True)

    def _aggregate_groups(self, key_of, skip_top_level_syscalls: bool = False) -> dict:
        """Aggregate rows merged per key: calls, totals, max and the summed histogram."""
        groups: dict = {}
        for row in self.aggregates.itertuples(index=False):
            function, path = int(row.function), int(row.path)
            if skip_top_level_syscalls and path == 0 and self.functions.is_syscall[function & 0xFF]:
                continue
            entry = groups.setdefault(key_of(function, path), [0, 0, 0, 0, np.zeros(HISTOGRAM_BUCKETS, np.int64)])
            entry[0] += int(row.calls)
            entry[1] += int(row.total_ns)
            entry[2] += int(row.self_ns)
            entry[3] = max(entry[3], int(row.max_ns))
            entry[4] += np.asarray(row.histogram, dtype=np.int64)
        return groups

    # ---- syscalls ----

    @cached_property
    def syscall_bytes(self) -> np.ndarray:
        """Bytes per selected event: the length for mmap/munmap/mprotect/madvise, the change of the program
        break for brk (negative when it shrinks: difference from the previous brk return, by time), else 0."""
        events = self.trace.events
        result = np.zeros(len(events), dtype=np.int64)
        if len(events):
            functions = events["function"].to_numpy().astype(np.intp) & 0xFF
            names = self.functions.names[functions]
            length = np.isin(names, LENGTH_SYSCALLS)
            result[length] = _int64(events["argument0"].to_numpy()[length])
            brk_rows = np.flatnonzero(names == "brk")
            if len(brk_rows):
                order = brk_rows[np.argsort(events["timestamp_ns"].to_numpy()[brk_rows], kind="stable")]
                returns = _int64(events["return_value"].to_numpy()[order])
                deltas = np.diff(returns, prepend=returns[0])
                result[order] = deltas
        return result if self.mask is None else result[self.mask]

    @cached_property
    def syscall_stats(self) -> pd.DataFrame:
        """Every syscall: calls (streamed + counted), total_ns, bytes (streamed calls; |Δbreak| for brk),
        in_allocator (calls made inside a traced allocator function)."""
        rows: dict[int, dict[str, int]] = {}
        syscall_rows = self.is_syscall
        functions = self.function_ids[syscall_rows] & 0xFF
        if len(functions):
            depth = self.column("depth")[syscall_rows]
            frame = pd.DataFrame({"function": functions, "duration": self.durations[syscall_rows],
                                  "bytes": np.abs(self.syscall_bytes[syscall_rows]),
                                  "inside": (depth > 0).astype(np.int64)})
            grouped = frame.groupby("function").agg(calls=("duration", "size"), total_ns=("duration", "sum"),
                                                    bytes=("bytes", "sum"), in_allocator=("inside", "sum"))
            rows = {int(function): {key: int(value) for key, value in values.items()}
                    for function, values in grouped.to_dict("index").items()}
        for row in self.aggregates.itertuples(index=False):
            function = int(row.function) & 0xFF
            if not self.functions.is_syscall[function]:
                continue
            entry = rows.setdefault(function, {"calls": 0, "total_ns": 0, "bytes": 0, "in_allocator": 0})
            entry["calls"] += int(row.calls)
            entry["total_ns"] += int(row.total_ns)
            entry["in_allocator"] += int(row.calls) if int(row.path) else 0
        table = pd.DataFrame.from_dict(rows, orient="index", columns=["calls", "total_ns", "bytes", "in_allocator"])
        table.insert(0, "name", [self.functions.name(function) for function in table.index])
        return table.sort_values(["total_ns", "name"], ascending=[False, True])

    # ---- threads ----

    @cached_property
    def thread_names(self) -> dict[int, str]:
        return {int(entry["tid"]): str(entry.get("name", "")) for entry in self.trace.metadata.get("threads", [])
                if "tid" in entry}

    @cached_property
    def thread_stats(self) -> pd.DataFrame:
        """tid, name, arena (the one arena_get2 last returned, else the arena it waited on or grew), calls,
        allocator_ns, lock_wait_ns; sorted by allocator time. Streamed calls only (aggregates have no tid)."""
        from arena_trace.analysis.locks import lock_wait_mask

        tids = _int64(self.column("tid"))
        frame = pd.DataFrame({"tid": tids, "allocator": np.where(self.outermost_streamed_allocator, self.durations, 0),
                              "lock_wait": np.where(lock_wait_mask(self), self.durations, 0)})
        table = frame.groupby("tid").agg(calls=("allocator", "size"), allocator_ns=("allocator", "sum"),
                                         lock_wait_ns=("lock_wait", "sum"))
        for tid in self.thread_names:
            if tid not in table.index and (self.options.tid is None or tid == self.options.tid):
                table.loc[tid] = (0, 0, 0)
        arenas = self.thread_arenas
        table.insert(0, "name", [self.thread_names.get(int(tid), "") for tid in table.index])
        # object dtype: a thread without a known arena keeps None instead of turning the column into floats
        table.insert(1, "arena", pd.Series([arenas.get(int(tid)) for tid in table.index], index=table.index,
                                           dtype=object))
        table.index.name = "tid"
        return table.sort_values(["allocator_ns", "lock_wait_ns"], ascending=False)

    @cached_property
    def thread_arenas(self) -> dict[int, int]:
        """Which arena each thread uses, from the events that name one."""
        tids = _int64(self.column("tid"))
        found: dict[int, int] = {}
        # Weakest evidence first so stronger evidence overwrites it: grow argument1, lock waits, arena_get2.
        grow = (self.roles == ROLE_CODE["grow"]) & (self.column("argument1") != 0)
        waits = self.arena_lock & (self.roles == ROLE_CODE["lock-wait"])
        select = self.roles == ROLE_CODE["arena-select"]
        timestamps = self.column("timestamp_ns")
        for mask, column in ((grow, "argument1"), (waits, "argument0"), (select, "return_value")):
            rows = np.flatnonzero(mask)
            rows = rows[np.argsort(timestamps[rows], kind="stable")]
            values = _int64(self.column(column)[rows])
            for tid, value in zip(tids[rows].tolist(), values.tolist(), strict=True):
                if value:
                    found[tid] = value
        return found

    # ---- stacks ----

    def stack_label(self, stack_id: int, frames: int = 4) -> str:
        """Innermost frames joined "a ← b ← c" (caller to the right)."""
        if stack_id < 0:
            return "(no stack)"
        labels = self.stack_table.innermost_first(stack_id)
        if not labels:
            return f"(stack {stack_id} missing)"
        shown = " ← ".join(labels[:frames])
        return shown + (" ← …" if len(labels) > frames else "")

    def top_stacks(self, rows: np.ndarray, limit: int = 3) -> list[dict]:
        """The stacks with the most time among the selected rows (a boolean mask over selected events)."""
        stack_ids = self.column("stack_id")[rows].astype(np.int64)
        durations = self.durations[rows]
        if len(stack_ids) == 0:
            return []
        # Stacks are sampled when a function is hot (a per-function rate limit in BPF): rank the stacks that
        # were captured, rather than letting the calls whose stack was skipped outrank them all as one group.
        captured = stack_ids >= 0
        if captured.any():
            stack_ids, durations = stack_ids[captured], durations[captured]
        frame = pd.DataFrame({"stack": stack_ids, "duration": durations})
        grouped = frame.groupby("stack")["duration"].agg(["size", "sum"]).sort_values(["sum", "size"], ascending=False)
        return [{"stack_id": int(stack), "calls": int(values["size"]), "total_ns": int(values["sum"]),
                 "frames": self.stack_table.root_first(int(stack)) if stack >= 0 else [],
                 "label": self.stack_label(int(stack))}
                for stack, values in grouped.head(limit).iterrows()]

    # ---- arenas seen ----

    @cached_property
    def main_arena_addresses(self) -> set[int]:
        return {int(allocator["main_arena"]) for allocator in self.trace.metadata.get("allocators", [])
                if allocator.get("main_arena") not in (None, "", 0)}

    @cached_property
    def innermost_parent(self) -> np.ndarray:
        return innermost_ancestor(self.column("path"))


def _chunks(rows: int) -> Iterator[slice]:
    for start in range(0, rows, CHUNK_ROWS):
        yield slice(start, min(start + CHUNK_ROWS, rows))


def _allocator_calls(functions: FunctionTable, function_ids: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Calls that are allocator time when no traced allocator call encloses them: allocator functions except
    waits on locks that are not arenas, and arena-lock futex waits (see the module docstring)."""
    # The rule depends only on (function id, arena-lock flag): evaluate it for all 512 combinations and look
    # each event up once, which is several times faster than the same rule over per-event boolean arrays.
    arena_lock = np.array([[False], [True]])
    lock_wait = functions.role_codes == ROLE_CODE["lock-wait"]
    is_syscall = functions.is_syscall
    table = (~is_syscall & ~(lock_wait & ~arena_lock & ~functions.is_native)) | (is_syscall & arena_lock)
    index = function_ids.astype(np.uint16)
    index += ((flags & EVENT_FLAG_ARENA_LOCK) != 0) * np.uint16(256)
    return np.take(table.ravel(), index)


def _path_keys(paths: np.ndarray, function_ids: np.ndarray, truncated: np.ndarray, hidden: np.ndarray
               ) -> tuple[np.ndarray, list[Hashable]]:
    """Local codes of one chunk and the (path, function, truncated) key of each code; hidden rows get None.

    A packed path uses up to 64 bits, so path, function and flag do not fit one integer: the paths are
    numbered first, then (path number, function, truncated) is numbered again as one int64.
    """
    codes, unique_paths = pd.factorize(paths)
    codes <<= 9
    codes |= function_ids.astype(np.int64) << 1
    codes |= truncated
    codes[hidden] = -1
    codes, combined = pd.factorize(codes)
    keys: list[Hashable] = [None if key < 0 else (int(unique_paths[key >> 9]), (key >> 1) & 0xFF, bool(key & 1))
                            for key in combined.tolist()]
    return codes, keys


class _GroupedDurations:
    """Exact STAT_COLUMNS per group, accumulated chunk by chunk in the durations' stored (narrow) dtype.

    Each chunk is sorted by group (a radix argsort of its small local codes) into ``grouped``, one slot per
    event, and each group remembers its segments; ``finish`` sorts each group's values once for the nearest-rank
    percentiles. This needs two durations per event (``grouped`` and the per-group sorted values, 8 bytes for
    uint32 durations) and no full-length int64 array, unlike sorting one (group << 40 | duration) key.
    """

    def __init__(self, rows: int, dtype: np.dtype) -> None:
        self.grouped = np.empty(rows, dtype=dtype)
        self.filled = 0
        # key -> [calls, total_ns, self_ns, [(start, stop) in grouped, ...]]
        self.groups: dict[Hashable, list] = {}

    def add(self, codes: np.ndarray, keys: list[Hashable], durations: np.ndarray, self_times: np.ndarray) -> None:
        """One chunk: ``codes`` index ``keys``; rows whose key is None are left out."""
        if len(codes) == 0:
            return
        counts = np.bincount(codes, minlength=len(keys))
        # numpy sorts integers of at most 16 bits with a stable radix sort: O(n), unlike int64 codes.
        sortable = codes if codes.dtype.itemsize <= 2 else codes.astype(np.uint16) if len(keys) <= 1 << 16 else codes
        order = np.argsort(sortable, kind="stable")
        start = self.filled
        self.grouped[start:start + len(order)] = durations[order]
        self.filled += len(order)
        present = np.flatnonzero(counts)
        ends = np.cumsum(counts)[present]
        begins = ends - counts[present]
        # Exact integer sums over each group's run (float bincount weights lose precision above 2^53).
        totals = np.add.reduceat(self.grouped[start:self.filled], begins, dtype=np.int64)
        self_totals = np.add.reduceat(self_times[order], begins, dtype=np.int64)
        for index, code in enumerate(present.tolist()):
            key = keys[code]
            if key is None:
                continue
            entry = self.groups.setdefault(key, [0, 0, 0, []])
            entry[0] += int(counts[code])
            entry[1] += int(totals[index])
            entry[2] += int(self_totals[index])
            entry[3].append((start + int(begins[index]), start + int(ends[index])))

    def finish(self) -> dict[Hashable, dict]:
        """STAT_COLUMNS per key, plus ``_durations`` (the group's sorted values) for _merge_aggregates."""
        result = {}
        for key, (calls, total, self_total, segments) in self.groups.items():
            if len(segments) == 1:
                values = self.grouped[segments[0][0]:segments[0][1]]  # sorted in place: no other group uses it
            else:
                values = np.concatenate([self.grouped[begin:end] for begin, end in segments])
            values.sort()
            result[key] = {"calls": calls, "total_ns": total, "self_ns": self_total, "mean_ns": total / calls,
                           **{f"p{quantile:g}_ns": int(values[nearest_rank_index(calls, quantile)])
                              for quantile in QUANTILES},
                           "max_ns": int(values[-1]), "estimated": False, "_durations": values}
        self.groups = {}
        del self.grouped  # the sorted values keep what they need
        return result


def _merge_aggregates(streamed: dict, aggregated: dict) -> dict:
    """Add aggregated calls to streamed groups; such groups get histogram-estimated percentiles."""
    merged = {}
    for key, values in streamed.items():
        merged[key] = {name: value for name, value in values.items() if name != "_durations"}
    for key, (calls, total, self_total, maximum, histogram) in aggregated.items():
        entry = merged.get(key)
        histogram = histogram.copy()
        if entry is not None:
            histogram += histogram_of(streamed[key]["_durations"])
            calls += entry["calls"]
            total += entry["total_ns"]
            self_total += entry["self_ns"]
            maximum = max(maximum, entry["max_ns"])
        if calls == 0:
            continue
        merged[key] = {"calls": calls, "total_ns": total, "self_ns": self_total, "mean_ns": total / calls,
                       **{f"p{quantile:g}_ns": histogram_percentile(histogram, quantile, maximum)
                          for quantile in QUANTILES},
                       "max_ns": maximum, "estimated": True}
    return merged
