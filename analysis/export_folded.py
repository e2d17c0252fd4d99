"""Folded stacks (``root;caller;leaf weight`` per line), as read by flamegraph.pl, inferno, speedscope and
Pyroscope. One file per metric: the weight is in the metric's unit (ns, bytes or calls)."""

from __future__ import annotations

import re
from pathlib import Path

from arena_trace.analysis.output_files import check_writable, write_bytes
from arena_trace.analysis.profiles import Metric, MetricProfile, NothingToExport, build_profiles
from arena_trace.tracer.trace_format import Trace

# ';' separates frames and a newline ends the line in every folded reader, so neither may appear in a frame
# name. Spaces may stay: readers split the count off at the last space (C++ symbols have spaces).
_SEPARATOR = re.compile(r";")
_LINE_BREAKS = re.compile(r"[\r\n\t]+")


def sanitize(name: str) -> str:
    cleaned = _LINE_BREAKS.sub(" ", _SEPARATOR.sub(":", name)).strip()
    return cleaned or "[empty]"


def folded_lines(profile: MetricProfile) -> list[str]:
    """Lines sorted by stack text; identical stacks from different threads are merged."""
    merged: dict[str, int] = {}
    for sample, weight in profile.weights.items():
        stack = ";".join(sanitize(frame.name) for frame in sample.frames)
        merged[stack] = merged.get(stack, 0) + weight
    return [f"{stack} {weight}" for stack, weight in sorted(merged.items()) if weight > 0]


def output_paths(path: Path, metrics: list[Metric]) -> dict[Metric, Path]:
    """One metric: exactly ``path``; several: ``<stem>.<metric>.folded`` beside it."""
    if len(metrics) == 1:
        return {metrics[0]: path}
    stem = path.name[: -len(".folded")] if path.name.endswith(".folded") else path.stem
    return {metric: path.with_name(f"{stem}.{metric.cli_name}.folded") for metric in metrics}


def export(trace: Trace, path: Path, metric: Metric | None = None, force: bool = False) -> list[Path]:
    """Write the folded file(s); returns the paths written. Metrics with no data get no file."""
    profiles = build_profiles(trace, [metric] if metric else list(Metric))
    with_data = [candidate for candidate, profile in profiles.items() if profile.total > 0]
    if not with_data:
        raise NothingToExport("the trace has no allocator activity to export")
    paths = output_paths(path, with_data if metric is None else [metric])
    for target in paths.values():  # refuse before writing anything, so a failure leaves no partial set
        check_writable(target, force)
    for candidate, target in paths.items():
        write_bytes(target, ("\n".join(folded_lines(profiles[candidate])) + "\n").encode("utf-8"), force)
    return list(paths.values())
