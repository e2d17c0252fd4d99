"""Allocator activity over time (``--timeline`` table, ``--plot out.png``).

Each streamed call is attributed to the interval in which it started (its whole duration, even when it
spans a boundary: intervals are meant to show when stalls happened, not to integrate time exactly).
Columns: allocator time (as defined in aggregate.py), arena lock-wait time, heap growth bytes (increase
of the break by brk plus mmap lengths made inside allocator functions), and syscall counts per name.
Aggregated (--full) calls carry no time and are not in the timeline.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from arena_trace.analysis.aggregate import Analysis, _int64
from arena_trace.analysis.locks import lock_wait_mask
from arena_trace.analysis.units import format_bytes, format_ns
from rich.table import Table

TARGET_INTERVALS = 20


def pick_interval(duration_ns: int) -> float:
    """About TARGET_INTERVALS intervals, rounded to 1/2/5 × 10^k seconds."""
    raw = max(duration_ns / 1e9 / TARGET_INTERVALS, 1e-3)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(step * magnitude for step in (1, 2, 5, 10) if step * magnitude >= raw)


def timeline(analysis: Analysis, interval: float | None = None) -> pd.DataFrame:
    interval = interval or pick_interval(analysis.duration_ns)
    width_ns = int(interval * 1e9)
    begin_ns = analysis.start_ns + int((analysis.options.since or 0) * 1e9)
    count = max(1, math.ceil(analysis.duration_ns / width_ns)) if analysis.duration_ns else 1
    starts = _int64(analysis.column("timestamp_ns")) - begin_ns
    bucket = np.clip(starts // width_ns, 0, None)
    count = max(count, int(bucket.max()) + 1 if len(bucket) else 1)
    names = analysis.functions.names[analysis.function_ids & 0xFF]
    changes = analysis.syscall_bytes
    growth = np.where(names == "brk", np.maximum(changes, 0),
                      np.where((names == "mmap") & (analysis.column("depth") > 0), changes, 0))
    table = pd.DataFrame({
        "start_s": (np.arange(count) * width_ns) / 1e9 + (analysis.options.since or 0),
        "allocator_ns": np.bincount(bucket, minlength=count,
                                    weights=np.where(analysis.outermost_streamed_allocator, analysis.durations, 0)
                                    ).astype(np.int64),
        "lock_wait_ns": np.bincount(bucket, weights=np.where(lock_wait_mask(analysis), analysis.durations, 0),
                                    minlength=count).astype(np.int64),
        "growth_bytes": np.bincount(bucket, weights=growth, minlength=count).astype(np.int64),
    })
    for name in sorted(set(names[analysis.is_syscall].tolist())):
        table[name] = np.bincount(bucket[names == name], minlength=count).astype(np.int64)
    return table


def timeline_table(frame: pd.DataFrame, interval: float) -> Table:
    syscalls = [column for column in frame.columns if column not in
                ("start_s", "allocator_ns", "lock_wait_ns", "growth_bytes")]
    table = Table(title=f"Timeline ({interval:g} s intervals, by call start)", title_justify="left",
                  title_style="bold", header_style="bold", show_edge=False, pad_edge=False)
    for column in ("start", "allocator time", "lock wait", "heap growth", *syscalls):
        table.add_column(column, justify="right")
    for _, row in frame.iterrows():
        table.add_row(f"{row['start_s']:.3f} s", format_ns(row["allocator_ns"]), format_ns(row["lock_wait_ns"]),
                      format_bytes(row["growth_bytes"]), *[f"{int(row[name]):,}" for name in syscalls])
    return table


def plot(frame: pd.DataFrame, path: str, title: str) -> None:
    import matplotlib  # lazily: only --plot needs it

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(3, 1, figsize=(10, 7), sharex=True)
    axes[0].step(frame["start_s"], frame["allocator_ns"] / 1e6, where="post", label="allocator time")
    axes[0].step(frame["start_s"], frame["lock_wait_ns"] / 1e6, where="post", label="arena lock wait")
    axes[0].set_ylabel("ms per interval")
    axes[0].legend(loc="upper right")
    axes[1].step(frame["start_s"], frame["growth_bytes"] / (1 << 20), where="post", color="tab:green")
    axes[1].set_ylabel("heap growth MiB")
    syscalls = [column for column in frame.columns if column not in
                ("start_s", "allocator_ns", "lock_wait_ns", "growth_bytes")]
    for name in syscalls:
        axes[2].step(frame["start_s"], frame[name], where="post", label=name)
    axes[2].set_ylabel("syscalls")
    axes[2].set_xlabel("seconds since trace start")
    if syscalls:
        axes[2].legend(loc="upper right", fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
