"""Percentiles: exact from samples, and Prometheus-style interpolation from histogram buckets.

Plain functions over plain data (no I/O).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["bucket_delta", "histogram_quantile", "percentile", "summary"]

QUANTILES = (0.5, 0.95, 0.99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summary(values: Iterable[float]) -> dict[str, float]:
    """count, p50, p95, p99, max (same unit as the values)."""
    data = sorted(values)
    out = {"count": float(len(data))}
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = percentile(data, q)
    out["max"] = data[-1] if data else math.nan
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile``: ``buckets`` are (upper bound, cumulative count),
    sorted, the last one ``+Inf``. Linear within the bucket; the lowest bucket starts at 0;
    a quantile in the ``+Inf`` bucket answers the highest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_delta(
    after: Sequence[tuple[float, float]], before: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Bucket counts observed between two scrapes (same bounds)."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
