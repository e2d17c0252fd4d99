"""Time-ordered (evented) speedscope profiles: one per thread, built from the streamed slow-path calls.

Calls nest through ``parent_call_id``; a call whose parent was not streamed (aggregated or lost) is a top-level
call. A top-level call opens its whole root-first stack, a nested call opens only the frames its stack adds
below its parent's. Times are clamped so the result always nests: a child never starts before its parent or a
previous sibling ends and never ends after its parent (clock jitter between probes must not produce an
unbalanced file, which speedscope cannot open).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from arena_trace.analysis.profile_rules import event_roots
from arena_trace.analysis.profile_stacks import Frame, StackBuilder

# Beyond this many top-level calls per thread, keep the longest ones: the timeline is for finding stalls,
# and a file with millions of events would be too large for a browser tab.
MAX_TOP_LEVEL_CALLS = 5000


@dataclass
class _Call:
    start: int
    end: int
    frames: tuple[Frame, ...]
    children: list[_Call] = field(default_factory=list)


@dataclass
class Timeline:
    tid: int
    events: list[tuple[str, Frame, int]]  # (O|C, frame, at)
    kept_calls: int
    total_calls: int
    end: int


def _common_prefix(first: tuple[Frame, ...], second: tuple[Frame, ...]) -> int:
    length = 0
    for left, right in zip(first, second, strict=False):
        if left != right:
            break
        length += 1
    return length


def _emit(call: _Call, opened: tuple[Frame, ...], lower: int, upper: int,
          output: list[tuple[str, Frame, int]]) -> int:
    """Append the call's events; returns its (clamped) end time."""
    start = min(max(call.start, lower), upper)
    end = min(max(call.end, start), upper)
    shared = _common_prefix(opened, call.frames)
    # A child whose stack does not extend its parent's (different call site) still nests: open its leaf only.
    new_frames = call.frames[shared:] if shared == len(opened) else call.frames[-1:]
    for frame in new_frames:
        output.append(("O", frame, start))
    cursor = start
    for child in sorted(call.children, key=lambda item: item.start):
        cursor = _emit(child, (*opened, *new_frames), cursor, end, output)
    for frame in reversed(new_frames):
        output.append(("C", frame, end))
    return end


def build_timelines(events: pd.DataFrame, stacks: StackBuilder, base: int, max_threads: int) -> list[Timeline]:
    """Timelines for the ``max_threads`` threads with the most streamed allocator time."""
    if events.empty:
        return []
    events = events.reset_index(drop=True)
    roots = event_roots(events)
    is_root = roots == np.arange(len(events))
    durations = events["duration_ns"].to_numpy().astype(np.int64)
    tids = events["tid"].to_numpy()
    time_per_thread = pd.Series(durations).groupby(tids).sum().sort_values(ascending=False, kind="stable")
    timelines = []
    for tid in time_per_thread.index[:max_threads]:
        thread_roots = np.flatnonzero(is_root & (tids == tid))
        total = len(thread_roots)
        if total > MAX_TOP_LEVEL_CALLS:
            # Select before building Python objects: a thread may have millions of calls.
            longest = np.argsort(-durations[thread_roots], kind="stable")[:MAX_TOP_LEVEL_CALLS]
            thread_roots = thread_roots[longest]
        keep = np.isin(roots, thread_roots) & (tids == tid)
        rows = events.loc[keep]
        calls: dict[int, _Call] = {}
        parents: dict[int, int] = {}
        for row in rows[["call_id", "parent_call_id", "timestamp_ns", "duration_ns", "stack_id", "path",
                         "function"]].itertuples(index=False):
            start = int(row.timestamp_ns) - base
            frames = stacks.stack(int(row.stack_id), int(row.path), int(row.function))
            calls[int(row.call_id)] = _Call(start, start + int(row.duration_ns), frames)
            parents[int(row.call_id)] = int(row.parent_call_id)
        top_level = []
        for call_id, call in calls.items():
            parent = calls.get(parents[call_id])
            if parent is not None and parents[call_id] != call_id:
                parent.children.append(call)
            else:
                top_level.append(call)
        output: list[tuple[str, Frame, int]] = []
        cursor = 0
        for root in sorted(top_level, key=lambda call: call.start):
            cursor = _emit(root, (), cursor, max(root.end, cursor), output)
        timelines.append(Timeline(int(tid), output, len(top_level), total, cursor))
    return timelines
