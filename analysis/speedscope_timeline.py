"""Time-ordered (evented) speedscope profiles: one per thread, built from the streamed slow-path calls.

Calls nest through ``parent_call_id``; a call whose parent was not streamed (aggregated or lost) is a top-level
call. A top-level call opens its whole root-first stack, a nested call opens only the frames its stack adds
below its parent's. Times are clamped so the result always nests: a child never starts before its parent or a
previous sibling ends and never ends after its parent (clock jitter between probes must not produce an
unbalanced file, which speedscope cannot open).

Everything per call is array arithmetic, level by level of the call trees: which calls are kept, their clamped
times and where their open/close records go in the output. Python only handles what is per distinct stack (the
frames a call opens below what its parent opened), so the cost does not grow with a thread's call count
beyond the kept calls' arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from arena_trace.analysis.profile_rules import Rows, chain_roots, weighted_counts
from arena_trace.analysis.profile_stacks import Frame, StackBuilder

# Beyond this many top-level calls per thread, keep the longest ones: the timeline is for finding stalls,
# and a file with millions of events would be too large for a browser tab.
MAX_TOP_LEVEL_CALLS = 5000


@dataclass
class Timeline:
    """One thread's records in output order: ``opens[i]`` (O, else C), ``frames[frame_ids[i]]``, ``at[i]``."""

    tid: int
    opens: np.ndarray
    frame_ids: np.ndarray
    at: np.ndarray
    frames: list[Frame]
    kept_calls: int
    total_calls: int
    end: int

    @property
    def events(self) -> list[tuple[str, Frame, int]]:
        """(O|C, frame, at) per record (convenient for tests; the exporter reads the arrays)."""
        return [("O" if is_open else "C", self.frames[frame], at) for is_open, frame, at
                in zip(self.opens.tolist(), self.frame_ids.tolist(), self.at.tolist(), strict=True)]


def _common_prefix(first: tuple[Frame, ...], second: tuple[Frame, ...]) -> int:
    length = 0
    for left, right in zip(first, second, strict=False):
        if left != right:
            break
        length += 1
    return length


class _FrameSets:
    """Interns frame tuples: the stacks calls open and the stacks open around them are few distinct tuples."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._frame_ids: dict[Frame, int] = {}
        self.tuples: list[tuple[Frame, ...]] = [()]  # id 0: nothing open (a top-level call)
        self._tuple_ids: dict[tuple[Frame, ...], int] = {(): 0}
        self._opened: dict[tuple[int, int], int] = {}
        self._new: dict[tuple[int, int], int] = {}

    def tuple_id(self, frames: tuple[Frame, ...]) -> int:
        identifier = self._tuple_ids.get(frames)
        if identifier is None:
            identifier = self._tuple_ids[frames] = len(self.tuples)
            self.tuples.append(frames)
        return identifier

    def frame_id(self, frame: Frame) -> int:
        identifier = self._frame_ids.get(frame)
        if identifier is None:
            identifier = self._frame_ids[frame] = len(self.frames)
            self.frames.append(frame)
        return identifier

    def new_frames(self, opened: int, stack: int) -> int:
        """The frames a call with stack ``stack`` opens when ``opened`` is open around it."""
        key = (opened, stack)
        identifier = self._new.get(key)
        if identifier is None:
            outer, frames = self.tuples[opened], self.tuples[stack]
            shared = _common_prefix(outer, frames)
            # A child whose stack does not extend its parent's (different call site) still nests: open its leaf.
            identifier = self._new[key] = self.tuple_id(frames[shared:] if shared == len(outer) else frames[-1:])
        return identifier

    def opened_inside(self, opened: int, new: int) -> int:
        """What is open around the children of a call: its surroundings plus what it opened."""
        key = (opened, new)
        identifier = self._opened.get(key)
        if identifier is None:
            identifier = self._opened[key] = self.tuple_id(self.tuples[opened] + self.tuples[new])
        return identifier

    def flatten(self) -> tuple[np.ndarray, np.ndarray]:
        """Frame ids of all tuples back to back, and where each tuple starts."""
        lengths = [len(frames) for frames in self.tuples]
        starts = np.cumsum([0, *lengths[:-1]]).astype(np.int64)
        flat = np.array([self.frame_id(frame) for frames in self.tuples for frame in frames], dtype=np.int64)
        return flat, starts

    def per_pair(self, function: str, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Apply ``new_frames``/``opened_inside`` once per distinct (left, right) pair."""
        if len(left) == 0:
            return np.zeros(0, dtype=np.int64)
        keys = left.astype(np.int64) << 32 | right.astype(np.int64)
        codes, unique = pd.factorize(keys)
        method = getattr(self, function)
        results = np.array([method(int(key) >> 32, int(key) & 0xFFFFFFFF) for key in unique], dtype=np.int64)
        return results[codes]


def _longest(durations: np.ndarray, limit: int) -> np.ndarray:
    """Mask of the ``limit`` largest durations, earlier rows first among equal ones (a stable sort's choice)."""
    chosen = np.ones(len(durations), dtype=bool)
    if len(durations) <= limit:
        return chosen
    threshold = np.partition(durations, len(durations) - limit)[len(durations) - limit]
    chosen = durations > threshold
    ties = np.flatnonzero(durations == threshold)
    chosen[ties[:limit - int(chosen.sum())]] = True
    return chosen


def _sibling_order(groups: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Order by group, then start, then row: how calls are visited (sorted by start, stable)."""
    return np.lexsort((np.arange(len(starts)), starts, groups))


def _exclusive_cumsum_by_group(sorted_groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For rows sorted by group: the sum of the values of the group's earlier rows."""
    totals = np.cumsum(values) - values
    first = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]] if len(values) else np.zeros(0, dtype=bool)
    return totals - np.maximum.accumulate(np.where(first, totals, 0))


def build_timelines(events: Rows, selected: np.ndarray, stacks: StackBuilder, stack_groups: np.ndarray,
                    stack_key: Callable[[int], tuple[int, int, int]], base: int, max_threads: int) -> list[Timeline]:
    """Timelines for the ``max_threads`` threads with the most streamed allocator time.

    ``selected``: a mask of the streamed allocator calls among ``events``; ``stack_groups[row]`` is a code whose
    ``stack_key`` is the row's (stack id, path, function), so frames are built once per distinct stack.
    """
    positions = np.flatnonzero(selected)
    count = len(positions)
    if count == 0:
        return []
    rank = np.full(events.count, -1, dtype=np.int32 if events.count < 1 << 31 else np.int64)
    rank[positions] = np.arange(count)
    full_parents = events.parents[positions]
    with_parent = full_parents >= 0
    if selected[full_parents[with_parent]].all():
        # Every streamed call's parent is streamed too (what the allocator rule implies for chains of sane
        # depth): the chains among the selected rows are the full ones, so their roots are too.
        roots = rank[events.roots[positions]]
    else:  # parents outside the selection count as none: walk the chains again within it
        roots = chain_roots(np.where(with_parent, rank[np.maximum(full_parents, 0)], -1))
    del rank, full_parents, with_parent
    durations = events.durations[positions]
    all_tid_codes, tid_values = events.tid_codes
    tid_codes = all_tid_codes[positions]
    time_per_thread = weighted_counts(tid_codes, durations, len(tid_values))
    # Descending time; ties by ascending thread id, as the sorted groupby this replaces gave.
    by_tid = np.argsort(tid_values, kind="stable")
    ranking = by_tid[np.argsort(-time_per_thread[by_tid], kind="stable")][:max_threads]

    thread_rank = np.full(len(tid_values), len(ranking), dtype=np.int64)  # len(ranking): no timeline
    thread_rank[ranking] = np.arange(len(ranking))
    root_positions = np.flatnonzero(roots == np.arange(count))
    root_thread = thread_rank[tid_codes[root_positions]]
    order = np.argsort(root_thread, kind="stable")  # each thread's roots contiguous, in row order
    bounds = np.searchsorted(root_thread[order], np.arange(len(ranking) + 1))
    keep_root = np.zeros(count, dtype=bool)
    total_calls: dict[int, int] = {}
    for thread in range(len(ranking)):
        thread_roots = root_positions[order[bounds[thread]:bounds[thread + 1]]]
        total_calls[thread] = len(thread_roots)
        # Select before building anything per call: a thread may have millions of calls.
        keep_root[thread_roots[_longest(durations[thread_roots], MAX_TOP_LEVEL_CALLS)]] = True
    # A call is kept when the outermost call of its chain is, and it ran on that call's thread.
    kept = np.flatnonzero(keep_root[roots] & (tid_codes == tid_codes[roots]))
    calls = _Calls(kept, positions, roots, tid_codes, thread_rank, events, base, stack_groups)
    frame_sets = _FrameSets()
    return calls.timelines(frame_sets, stacks, stack_key, ranking, tid_values, total_calls)


class _Calls:
    """The kept calls of all timelines as arrays, indexed 0..n-1 in row order."""

    def __init__(self, kept: np.ndarray, positions: np.ndarray, roots: np.ndarray, tid_codes: np.ndarray,
                 thread_rank: np.ndarray, events: Rows, base: int, stack_groups: np.ndarray) -> None:
        rows = positions[kept]
        self.count = len(kept)
        self.thread = thread_rank[tid_codes[kept]]
        self.start = events.int64("timestamp_ns")[rows] - base
        self.end = self.start + events.durations[rows]
        self.stack = stack_groups[rows]
        # The parent, when it is a kept call of the same thread (else the call is top-level in its timeline).
        # Kept calls' parents are found among the kept rows by position (kept is sorted).
        parent_rows = events.parents[rows]
        slot = np.searchsorted(rows, parent_rows)
        found = (parent_rows >= 0) & (slot < len(rows))
        found[found] = rows[slot[found]] == parent_rows[found]
        parent = np.where(found, slot, -1)
        same_thread = parent >= 0
        same_thread[same_thread] = self.thread[parent[same_thread]] == self.thread[same_thread]
        self.parent = np.where(same_thread & (parent != np.arange(self.count)), parent, -1)

    def levels(self) -> list[np.ndarray]:
        """Calls by nesting level below their top-level call; calls in a parent cycle are in none (never shown)."""
        levels = []
        current = np.flatnonzero(self.parent < 0)
        has_parent = self.parent >= 0
        safe_parent = np.maximum(self.parent, 0)
        member = np.zeros(self.count, dtype=bool)
        while len(current):
            levels.append(current)
            member[:] = False
            member[current] = True
            current = np.flatnonzero(has_parent & member[safe_parent])
        return levels

    def timelines(self, frame_sets: _FrameSets, stacks: StackBuilder, stack_key: Callable[[int], tuple[int, int, int]],
                  ranking: np.ndarray, tid_values: np.ndarray, total_calls: dict[int, int]) -> list[Timeline]:
        count = self.count
        levels = self.levels()
        # Frames once per distinct stack among the kept calls.
        stack_codes, distinct = pd.factorize(self.stack)
        stack = np.array([frame_sets.tuple_id(stacks.stack(*stack_key(int(code)))) for code in distinct],
                         dtype=np.int64)[stack_codes]
        opened = np.zeros(count, dtype=np.int64)  # tuple id of what is open around each call
        new = np.zeros(count, dtype=np.int64)  # tuple id of the frames each call opens
        clamped_start = np.zeros(count, dtype=np.int64)
        clamped_end = np.zeros(count, dtype=np.int64)
        sibling_rank: list[np.ndarray] = []  # per level: its calls in visiting order
        for depth, level in enumerate(levels):
            if depth == 0:
                group = self.thread[level]
                order = level[_sibling_order(group, self.start[level])]
                group = self.thread[order]
                # Top level: each call starts no earlier than the previous one ended (the cursor), and is
                # never cut short: cursor = running maximum of the ends, from 0.
                ends = _running_max_by_group(group, self.end[order], np.zeros(len(order), dtype=np.int64))
                before = _previous_in_group(group, ends, 0)
                clamped_start[order] = np.maximum(self.start[order], before)
                clamped_end[order] = ends
            else:
                parent = self.parent[level]
                order = level[_sibling_order(parent, self.start[level])]
                parent = self.parent[order]
                opened[order] = frame_sets.per_pair("opened_inside", opened[parent], new[parent])
                lower, upper = clamped_start[parent], clamped_end[parent]
                # A child starts no earlier than its parent or its previous sibling's end and ends no later
                # than its parent: end = min(max(parent start, running max of the ends), parent end).
                ends = np.minimum(_running_max_by_group(parent, self.end[order], lower), upper)
                before = _previous_in_group(parent, ends, lower)
                clamped_start[order] = np.minimum(np.maximum(self.start[order], before), upper)
                clamped_end[order] = ends
            new[order] = frame_sets.per_pair("new_frames", opened[order], stack[order])
            sibling_rank.append(order)
        lengths = np.array([len(frames) for frames in frame_sets.tuples], dtype=np.int64)
        opens = lengths[new]
        # Records of a call: its opens, its children's records, its closes. Sizes bottom up, offsets top down.
        size = 2 * opens
        for order in reversed(sibling_rank[1:]):
            np.add.at(size, self.parent[order], size[order])
        offset = np.zeros(count, dtype=np.int64)
        for depth, order in enumerate(sibling_rank):
            group = self.thread[order] if depth == 0 else self.parent[order]
            earlier = _exclusive_cumsum_by_group(group, size[order])
            offset[order] = earlier if depth == 0 else offset[group] + opens[group] + earlier
        output = []
        top = sibling_rank[0] if sibling_rank else np.zeros(0, dtype=np.int64)
        reachable = np.zeros(count, dtype=bool)
        for order in sibling_rank:
            reachable[order] = True
        flat, flat_start = frame_sets.flatten()
        for thread, tid_code in enumerate(ranking):
            thread_top = top[self.thread[top] == thread]
            members = np.flatnonzero(reachable & (self.thread == thread))
            total = int(size[thread_top].sum())
            record_open = np.zeros(total, dtype=bool)
            record_frame = np.zeros(total, dtype=np.int64)
            record_at = np.zeros(total, dtype=np.int64)
            repeated = np.repeat(members, opens[members])
            within = np.arange(len(repeated)) - np.repeat(np.cumsum(opens[members]) - opens[members], opens[members])
            first_frame = flat_start[new[repeated]]
            open_slots = offset[repeated] + within
            record_open[open_slots] = True
            record_frame[open_slots] = flat[first_frame + within]
            record_at[open_slots] = clamped_start[repeated]
            close_slots = offset[repeated] + size[repeated] - opens[repeated] + within
            record_frame[close_slots] = flat[first_frame + opens[repeated] - 1 - within]
            record_at[close_slots] = clamped_end[repeated]
            end = int(clamped_end[thread_top].max()) if len(thread_top) else 0
            output.append(Timeline(int(tid_values[tid_code]), record_open, record_frame, record_at,
                                   frame_sets.frames, len(thread_top), total_calls[thread], max(end, 0)))
        return output


def _running_max_by_group(sorted_groups: np.ndarray, values: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """For rows sorted by group: max(initial, values of the group's rows so far)."""
    if len(values) == 0:
        return values.copy()
    return pd.Series(np.maximum(values, initial)).groupby(sorted_groups, sort=False).cummax().to_numpy()


def _previous_in_group(sorted_groups: np.ndarray, values: np.ndarray, first: np.ndarray | int) -> np.ndarray:
    """For rows sorted by group: the previous row's value in the group, ``first`` for a group's first row."""
    previous = np.empty_like(values)
    if len(values) == 0:
        return previous
    previous[1:] = values[:-1]
    starts = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    previous[starts] = first[starts] if isinstance(first, np.ndarray) else first
    return previous
