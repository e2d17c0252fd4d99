"""speedscope export: one JSON file, one shared frame table, several profiles.

Profiles, in this order: for each metric with data, a sampled profile over all threads (the first one is what
speedscope opens), then per-thread sampled profiles for allocator time and lock wait when more than one thread
has data, then one evented (time-ordered) profile per thread of the streamed slow-path calls. Sampled stacks
are root first; weights are in the metric's unit. Every document is validated (analysis.speedscope_validation)
before it is returned or written: a document that fails is a bug and is never written.
Rows aggregated in the kernel have no thread, so per-thread profiles cover streamed calls only (their names
say so) while the all-threads profile has the full total.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from arena_trace.analysis.output_files import write_bytes
from arena_trace.analysis.profile_stacks import Frame
from arena_trace.analysis.profiles import (
    Metric,
    MetricProfile,
    NothingToExport,
    ProfileBuilder,
    thread_names,
)
from arena_trace.analysis.speedscope_timeline import build_timelines
from arena_trace.analysis.speedscope_validation import SCHEMA_URL, validate
from arena_trace.tracer.trace_format import Trace

MAX_THREAD_PROFILES = 16
PER_THREAD_METRICS = (Metric.ALLOCATOR_TIME, Metric.LOCK_WAIT)


class _FrameTable:
    """The shared frame table; frames are keyed by (name, file, line), which is what speedscope displays."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self._index: dict[tuple[str, str | None, int | None], int] = {}

    def __call__(self, frame: Frame) -> int:
        key = (frame.name, frame.file, frame.line)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.frames)
            entry: dict[str, Any] = {"name": frame.name}
            if frame.file:
                entry["file"] = frame.file
                if frame.line:
                    entry["line"] = frame.line
            self.frames.append(entry)
        return index


def _thread_label(tid: int, names: dict[int, str]) -> str:
    name = names.get(tid)
    return f"thread {tid} ({name})" if name else f"thread {tid}"


def _sampled(profile: MetricProfile, name: str, frames: _FrameTable) -> dict[str, Any]:
    # Heaviest stacks first: speedscope does not care, but diffs and eyeballing the file are easier.
    items = sorted(profile.weights.items(), key=lambda item: -item[1])
    samples = [[frames(frame) for frame in sample.frames] for sample, _ in items]
    weights = [weight for _, weight in items]
    return {"type": "sampled", "name": name, "unit": profile.metric.speedscope_unit, "startValue": 0,
            "endValue": sum(weights), "samples": samples, "weights": weights}


def _merge_threadless(profile: MetricProfile) -> MetricProfile:
    """The all-threads view: the same stack from different threads becomes one sample."""
    merged = MetricProfile(profile.metric)
    for sample, weight in profile.weights.items():
        merged.add(type(sample)(sample.frames, None), weight)
    return merged


def build_document(trace: Trace, metric: Metric | None = None, name: str | None = None,
                   timelines: bool = True) -> dict[str, Any]:
    """The validated speedscope document; raises NothingToExport when no metric has data."""
    builder = ProfileBuilder(trace)
    metrics = [metric] if metric else list(Metric)
    profiles = {candidate: builder.build_one(candidate) for candidate in metrics}
    names = thread_names(trace)
    frames = _FrameTable()
    output: list[dict[str, Any]] = []
    for candidate in metrics:
        profile = profiles[candidate]
        if profile.total <= 0:
            continue
        output.append(_sampled(_merge_threadless(profile), f"{candidate.title}, all threads", frames))
    if not output:
        raise NothingToExport("the trace has no allocator activity to export")
    for candidate in metrics:
        profile = profiles[candidate]
        threads = profile.threads()
        if candidate not in PER_THREAD_METRICS or len(threads) < 2:
            continue
        for tid in threads[:MAX_THREAD_PROFILES]:
            label = f"{candidate.title}, {_thread_label(tid, names)}, streamed calls"
            output.append(_sampled(profile.for_thread(tid), label, frames))
    if timelines and metric in (None, Metric.ALLOCATOR_TIME):
        output += _evented_profiles(builder, names, frames)
    target = trace.metadata.get("target", {})
    document = {
        "$schema": SCHEMA_URL,
        "shared": {"frames": frames.frames},
        "profiles": output,
        "name": name or f"arena-trace: {target.get('comm', 'trace')} (pid {target.get('pid', '?')})",
        "activeProfileIndex": 0,
        "exporter": "arena-trace",
    }
    validate(document)
    return document


def _evented_profiles(builder: ProfileBuilder, names: dict[int, str], frames: _FrameTable) -> list[dict[str, Any]]:
    events = builder.events
    if events.empty:
        return []
    selected = builder.allocator_events
    if not selected.any():
        return []
    base = int(events.column("timestamp_ns")[selected].min())
    groups = builder.event_groups
    output = []
    for timeline in build_timelines(events, selected, builder.stacks, groups.codes, lambda code: groups.key(code)[:3],
                                    base, MAX_THREAD_PROFILES):
        if len(timeline.opens) == 0:
            continue
        label = f"timeline, {_thread_label(timeline.tid, names)}"
        if timeline.kept_calls < timeline.total_calls:
            label += f", longest {timeline.kept_calls} of {timeline.total_calls} calls"
        # Frames enter the shared table in the order the records first use them, as one call per record did.
        used = pd.unique(timeline.frame_ids)
        table = np.zeros(len(timeline.frames), dtype=np.int64)
        table[used] = [frames(timeline.frames[frame]) for frame in used.tolist()]
        records = [{"type": "O" if is_open else "C", "frame": frame, "at": at} for is_open, frame, at
                   in zip(timeline.opens.tolist(), table[timeline.frame_ids].tolist(), timeline.at.tolist(),
                          strict=True)]
        output.append({"type": "evented", "name": label, "unit": "nanoseconds", "startValue": 0,
                       "endValue": timeline.end, "events": records})
    return output


def to_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def export(trace: Trace, path: Path, metric: Metric | None = None, force: bool = False) -> None:
    write_bytes(path, to_json(build_document(trace, metric)), force)
