"""Exact grouped percentiles from streamed events, estimates from log2 histograms.

Exact percentiles use the nearest-rank definition: the p-th percentile of n values is the
ceil(p/100 * n)-th smallest value (numpy's "inverted_cdf"), so it is always an observed duration.
Estimates come from the merged log2 histograms of in-kernel aggregates (bucket b = [2^b, 2^(b+1)) ns):
the bucket holding the nearest-rank position, reported at its geometric middle (2^b * sqrt 2), clipped to
the group's maximum. Reports mark estimates with "≈".
"""

from __future__ import annotations

import math

import numpy as np
from arena_trace.probes.event_layout import HISTOGRAM_BUCKETS

QUANTILES = (50.0, 95.0, 99.0)
# Sorting one combined key (group << 40 | duration) is the fastest exact method; it needs durations below
# 2^40 ns (18 minutes) and fewer than 2^23 groups, otherwise the slower argsort path is taken.
_DURATION_BITS = 40


def nearest_rank_index(count: int, quantile: float) -> int:
    return max(0, math.ceil(quantile / 100.0 * count) - 1)


def grouped_sorted_durations(codes: np.ndarray, durations: np.ndarray, group_count: int, in_place: bool = False
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Durations sorted by (group, duration) and the start offset of each group (length group_count + 1).
    in_place: build the sort key in ``codes`` itself (an int64 array the caller no longer needs)."""
    codes = np.asarray(codes).astype(np.int64, copy=False)
    durations = np.asarray(durations)
    counts = np.bincount(codes, minlength=group_count) if len(codes) else np.zeros(group_count, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)))
    if len(durations) == 0:
        return np.zeros(0, dtype=np.uint64), starts
    if int(durations.max()) < (1 << _DURATION_BITS) and group_count < (1 << 23):
        key = codes if in_place and codes.dtype == np.int64 and codes.flags.writeable else codes.copy()
        key <<= _DURATION_BITS
        key |= durations.astype(np.int64, copy=False)
        key.sort()
        key &= (1 << _DURATION_BITS) - 1  # in place: the sorted durations, with no second 8-byte array
        return key.view(np.uint64), starts
    order = np.lexsort((durations, codes))
    return durations[order].astype(np.uint64), starts


def grouped_percentiles(codes: np.ndarray, durations: np.ndarray, group_count: int,
                        quantiles: tuple[float, ...] = QUANTILES) -> dict[str, np.ndarray]:
    """Per group: exact percentiles ("p50"...) and "max"; groups without values get 0."""
    ordered, starts = grouped_sorted_durations(codes, durations, group_count)
    return percentiles_of_sorted(ordered, starts, quantiles)


def percentiles_of_sorted(ordered: np.ndarray, starts: np.ndarray, quantiles: tuple[float, ...] = QUANTILES
                          ) -> dict[str, np.ndarray]:
    group_count = len(starts) - 1
    counts = np.diff(starts)
    present = counts > 0
    result: dict[str, np.ndarray] = {}
    for quantile in quantiles:
        offsets = np.maximum(np.ceil(quantile / 100.0 * counts).astype(np.int64) - 1, 0)
        values = np.zeros(group_count, dtype=np.uint64)
        values[present] = ordered[(starts[:-1] + offsets)[present]]
        result[f"p{quantile:g}"] = values
    maxima = np.zeros(group_count, dtype=np.uint64)
    maxima[present] = ordered[starts[1:][present] - 1]
    result["max"] = maxima
    return result


def log2_buckets(durations: np.ndarray) -> np.ndarray:
    """Histogram bucket of each duration (0 ns goes to bucket 0, like the BPF side)."""
    values = np.maximum(np.asarray(durations, dtype=np.float64), 1.0)
    return np.minimum(np.floor(np.log2(values)).astype(np.int64), HISTOGRAM_BUCKETS - 1)


def histogram_of(durations: np.ndarray) -> np.ndarray:
    return np.bincount(log2_buckets(durations), minlength=HISTOGRAM_BUCKETS).astype(np.int64)


def histogram_percentile(histogram: np.ndarray, quantile: float, maximum: int) -> int:
    total = int(histogram.sum())
    if total == 0:
        return 0
    position = nearest_rank_index(total, quantile) + 1
    bucket = int(np.searchsorted(np.cumsum(histogram), position))
    return min(int(round((1 << bucket) * math.sqrt(2))), int(maximum)) if maximum else int(
        round((1 << bucket) * math.sqrt(2)))
