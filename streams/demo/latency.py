"""Latency figures from Prometheus histograms, without a Prometheus server.

``parse_samples`` reads the text exposition (``/metrics`` of a worker); ``Samples`` adds up
pages of several processes and, with ``since``, keeps what they counted after an earlier
scrape (a baseline); ``histogram_quantile`` estimates a quantile from cumulative
buckets exactly as PromQL's ``histogram_quantile`` does (linear interpolation inside the
bucket; the highest finite bound when the rank falls in the ``+Inf`` bucket). Pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Sample", "Samples", "histogram_quantile", "parse_samples"]


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text page (``_bucket``, ``_count``... included)."""
    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _matches(sample: Sample, name: str, labels: Mapping[str, str]) -> bool:
    return sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())


@dataclass
class Samples:
    """Samples of one or more pages; values with the same name and labels add up."""

    items: list[Sample] = field(default_factory=list)

    @classmethod
    def from_pages(cls, pages: Iterable[str]) -> Samples:
        return cls([s for page in pages for s in parse_samples(page)])

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(s.value for s in self.items if _matches(s, name, labels))

    def by(self, name: str, *keys: str, **labels: str) -> dict[tuple[str, ...], float]:
        """Sums of ``name`` grouped by the values of the labels ``keys``."""
        out: dict[tuple[str, ...], float] = {}
        for s in self.items:
            if _matches(s, name, labels):
                group = tuple(s.labels.get(k, "") for k in keys)
                out[group] = out.get(group, 0.0) + s.value
        return out

    def buckets(self, histogram: str, **labels: str) -> list[tuple[float, float]]:
        """Cumulative ``(upper bound, count)`` of a histogram, summed over the other labels."""
        summed: dict[float, float] = {}
        for s in self.items:
            if _matches(s, f"{histogram}_bucket", labels) and "le" in s.labels:
                le = float(s.labels["le"])
                summed[le] = summed.get(le, 0.0) + s.value
        return sorted(summed.items())

    def label_values(self, name: str, key: str) -> list[str]:
        return sorted({s.labels[key] for s in self.items if s.name == name and key in s.labels})

    def quantile(self, q: float, histogram: str, **labels: str) -> float:
        return histogram_quantile(q, self.buckets(histogram, **labels))

    def since(self, baseline: Samples) -> Samples:
        """What was counted after ``baseline``, an earlier scrape of the same processes.

        For counters and histograms (every ``_bucket``, ``_count`` and ``_sum``): each value
        minus its value in the baseline, like PromQL's ``increase`` over the two scrapes (a
        value below its baseline is a restarted process: counted from zero). Samples of the
        same name and labels are added up first, so several workers' pages work too.
        """
        before = _added_up(baseline.items)
        out: list[Sample] = []
        for (name, labels), value in _added_up(self.items).items():
            earlier = before.get((name, labels), 0.0)
            out.append(Sample(name, dict(labels), value - earlier if value >= earlier else value))
        return Samples(out)


_Key = tuple[str, tuple[tuple[str, str], ...]]


def _added_up(items: Iterable[Sample]) -> dict[_Key, float]:
    out: dict[_Key, float] = {}
    for s in items:
        key = (s.name, tuple(sorted(s.labels.items())))
        out[key] = out.get(key, 0.0) + s.value
    return out


def _monotonic(buckets: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merge equal bounds and make the counts non-decreasing (as PromQL does)."""
    merged: dict[float, float] = {}
    for le, count in buckets:
        merged[le] = merged.get(le, 0.0) + count
    out: list[tuple[float, float]] = []
    highest = 0.0
    for le, count in sorted(merged.items()):
        highest = max(highest, count)
        out.append((le, highest))
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The ``q``-quantile (0..1) of cumulative ``(upper bound, count)`` buckets.

    NaN when there is no ``+Inf`` bucket, fewer than two buckets or no observation.
    """
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = _monotonic(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    observations = ordered[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i, (_, count) in enumerate(ordered[:-1]) if count >= rank), len(ordered) - 1)
    if b == len(ordered) - 1:
        return ordered[-2][0]
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start, end, count = 0.0, ordered[b][0], ordered[b][1]
    if b > 0:
        start = ordered[b - 1][0]
        count -= ordered[b - 1][1]
        rank -= ordered[b - 1][1]
    if count == 0:  # only q == 0 over an empty first bucket: 0/0 in PromQL
        return math.nan
    return start + (end - start) * (rank / count)
