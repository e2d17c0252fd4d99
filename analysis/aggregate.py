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

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from arena_trace.analysis.function_table import ROLE_CODE, FunctionTable, innermost_ancestor, path_contains
from arena_trace.analysis.percentiles import (
    QUANTILES,
    grouped_sorted_durations,
    histogram_of,
    histogram_percentile,
    percentiles_of_sorted,
)
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
        return depth0 & (self._counts_as_allocator | (self.is_syscall & self.arena_lock))

    @cached_property
    def outermost_streamed_allocator(self) -> np.ndarray:
        """Like top_level_allocator, but "top" among streamed calls only: a sysmalloc inside an aggregated
        malloc counts. Per-thread and timeline allocator time use this (aggregates have no tid or time)."""
        streamed_functions = [function for function in self.functions.by_id
                              if self.functions.is_streamed[function] and not self.functions.is_syscall[function]]
        no_streamed_caller = ~path_contains(self.column("path"), streamed_functions)
        return (self._counts_as_allocator | (self.is_syscall & self.arena_lock)) & no_streamed_caller

    @cached_property
    def _counts_as_allocator(self) -> np.ndarray:
        lock_wait = self.roles == ROLE_CODE["lock-wait"]
        native = self.functions.is_native[self.function_ids & 0xFF]
        return ~self.is_syscall & ~(lock_wait & ~self.arena_lock & ~native)

    @cached_property
    def allocator_ns(self) -> int:
        streamed = int(self.durations[self.top_level_allocator].sum())
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
        groups = 256
        stats = _stats(self.function_ids, groups, self.durations, self.column("self_ns"), consume_codes=True)
        rows = _merge_aggregates(stats, self._aggregate_groups(lambda function, path: function))
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
        shown = ~(self.is_syscall & (self.column("depth") == 0) & ~self.arena_lock)  # app syscalls: see syscalls
        everything = bool(shown.all())

        def selected(values: np.ndarray) -> np.ndarray:
            return values if everything else values[shown]  # no copy in the common case

        path_codes, unique_paths = pd.factorize(selected(self.column("path")))
        # One int64 key per (path, function, truncated), built in place to keep the transient memory low.
        path_codes *= 512
        path_codes += selected(self.function_ids).astype(np.int64) * 2
        path_codes += selected((self.column("flags") & EVENT_FLAG_PATH_TRUNCATED) != 0)
        group_codes, unique_keys = _dense_codes(path_codes, len(unique_paths) * 512)
        stats = _stats(group_codes, len(unique_keys), selected(self.durations), selected(self.column("self_ns")),
                       consume_codes=True)
        keyed = {}
        for code, key in enumerate(unique_keys.tolist()):
            if code in stats:
                keyed[(int(unique_paths[key // 512]), (key % 512) // 2, bool(key % 2))] = stats[code]
        keyed = _merge_aggregates(keyed, self._aggregate_groups(lambda function, path: (path, function, False),
                                                                skip_top_level_syscalls=True))
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
        stack_ids = self.column("stack_id")[rows]
        if len(stack_ids) == 0:
            return []
        frame = pd.DataFrame({"stack": stack_ids.astype(np.int64), "duration": self.durations[rows]})
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


def _dense_codes(keys: np.ndarray, key_limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber int64 keys in [0, key_limit) to 0..n-1 in place (no second 8-byte-per-event array, unlike a
    second factorize); returns (codes, the original key of each code)."""
    if key_limit > 1 << 22:
        codes, uniques = pd.factorize(keys)
        return codes, np.asarray(uniques)
    lookup = np.full(key_limit, -1, dtype=np.int64)
    lookup[keys] = 0
    present = np.flatnonzero(lookup >= 0)
    lookup[present] = np.arange(len(present))
    np.take(lookup, keys, out=keys)
    return keys, present


def _stats(codes: np.ndarray, groups: int, durations: np.ndarray, self_times: np.ndarray,
           consume_codes: bool = False) -> dict[int, dict]:
    """STAT_COLUMNS per group code present (exact: streamed events only). consume_codes lets the percentile
    sort reuse the codes array in place (the caller must not use it afterwards)."""
    if len(codes) == 0:
        return {}
    codes = np.asarray(codes).astype(np.int64, copy=False)
    calls = np.bincount(codes, minlength=groups)
    totals = _group_sum(codes, durations, groups)
    self_totals = _group_sum(codes, self_times, groups)
    ordered, starts = grouped_sorted_durations(codes, durations, groups, in_place=consume_codes)
    quantiles = percentiles_of_sorted(ordered, starts)
    result = {}
    for code in np.flatnonzero(calls).tolist():
        count = int(calls[code])
        result[code] = {"calls": count, "total_ns": int(totals[code]), "self_ns": int(self_totals[code]),
                        "mean_ns": int(totals[code]) / count,
                        **{f"p{quantile:g}_ns": int(quantiles[f"p{quantile:g}"][code]) for quantile in QUANTILES},
                        "max_ns": int(quantiles["max"][code]), "estimated": False,
                        "_durations": ordered[starts[code]:starts[code + 1]]}
    return result


def _group_sum(codes: np.ndarray, values: np.ndarray, groups: int) -> np.ndarray:
    # bincount sums in float64, exact while every sum stays below 2^53 ns (104 days); else exact int sums.
    sums = np.bincount(codes, weights=values, minlength=groups)
    if sums.max(initial=0) < 2**53:
        return sums.astype(np.int64)
    return pd.Series(values).groupby(codes).sum().reindex(range(groups), fill_value=0).to_numpy()


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
