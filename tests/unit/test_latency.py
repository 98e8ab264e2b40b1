"""Quantiles from Prometheus histogram buckets (PromQL histogram_quantile semantics)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from streams.demo.latency import Samples, histogram_quantile, parse_samples

INF = math.inf
BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.3),  # rank 20 in (0.1, 0.5]: 0.1 + 0.4 * 10/20
        (0.25, 0.1),  # rank 10: the top of the first bucket
        (0.1, 0.04),  # rank 4 in (0, 0.1]: 0.1 * 4/10
        (0.75, 0.5),  # rank 30: the top of the second bucket
        (0.9, 0.8),  # rank 36 in (0.5, 1]: 0.5 + 0.5 * 6/10
        (1.0, 1.0),
    ],
)
def test_linear_interpolation_inside_the_bucket(q: float, expected: float) -> None:
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)


def test_a_rank_in_the_inf_bucket_gives_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.9, [(1.0, 5.0), (5.0, 6.0), (INF, 10.0)]) == 5.0


def test_bucket_order_does_not_matter_and_counts_are_made_monotonic() -> None:
    shuffled = [(INF, 40.0), (0.5, 30.0), (0.1, 10.0), (1.0, 40.0)]
    assert histogram_quantile(0.5, shuffled) == pytest.approx(0.3)
    dented = [(0.1, 10.0), (0.5, 8.0), (1.0, 20.0), (INF, 20.0)]  # 8 < 10: treated as 10
    assert histogram_quantile(0.5, dented) == pytest.approx(0.1)


def test_a_first_bucket_at_or_below_zero_is_returned_as_is() -> None:
    assert histogram_quantile(0.2, [(0.0, 5.0), (1.0, 10.0), (INF, 10.0)]) == 0.0


@pytest.mark.parametrize(
    "buckets",
    [
        [],
        [(INF, 3.0)],  # fewer than two buckets
        [(0.1, 1.0), (1.0, 2.0)],  # no +Inf bucket
        [(0.1, 0.0), (INF, 0.0)],  # no observation
    ],
)
def test_nan_when_there_is_nothing_to_estimate(buckets: list[tuple[float, float]]) -> None:
    assert math.isnan(histogram_quantile(0.5, buckets))


def test_quantiles_outside_zero_one_are_infinite() -> None:
    assert histogram_quantile(-0.1, BUCKETS) == -INF
    assert histogram_quantile(1.1, BUCKETS) == INF


def _page(latencies: dict[str, list[float]], events: int) -> str:
    registry = CollectorRegistry()
    hist = Histogram(
        "hop_seconds", "A hop.", ["partner"], buckets=(0.1, 0.5, 1.0), registry=registry
    )
    for partner, values in latencies.items():
        for value in values:
            hist.labels(partner).observe(value)
    counter = Counter("things_total", "Things.", ["type", "outcome"], registry=registry)
    counter.labels("a", "applied").inc(events)
    counter.labels("b", "stale").inc(1)
    return generate_latest(registry).decode()


def test_parsing_a_real_exposition_page() -> None:
    samples = parse_samples(_page({"ads": [0.05, 0.2]}, events=3))
    buckets = {
        s.labels["le"]: s.value
        for s in samples
        if s.name == "hop_seconds_bucket" and s.labels["partner"] == "ads"
    }
    assert buckets == {"0.1": 1.0, "0.5": 2.0, "1.0": 2.0, "+Inf": 2.0}
    assert any(s.name == "things_total" and s.value == 3.0 for s in samples)


def test_pages_of_several_workers_add_up() -> None:
    first = _page({"ads": [0.05] * 10, "payment": [0.7] * 10}, events=3)
    second = _page({"ads": [0.3] * 20}, events=4)
    samples = Samples.from_pages([first, second])
    assert samples.buckets("hop_seconds", partner="ads") == [
        (0.1, 10.0),
        (0.5, 30.0),
        (1.0, 30.0),
        (INF, 30.0),
    ]
    # rank 15 of 30, in (0.1, 0.5] holding 20: 0.1 + 0.4 * 5/20
    assert samples.quantile(0.5, "hop_seconds", partner="ads") == pytest.approx(0.2)
    assert samples.quantile(0.99, "hop_seconds", partner="payment") == pytest.approx(0.995)
    assert samples.total("hop_seconds_count") == 40.0
    assert samples.total("things_total", outcome="applied") == 7.0
    assert samples.by("things_total", "type", "outcome") == {
        ("a", "applied"): 7.0,
        ("b", "stale"): 2.0,
    }
    assert samples.label_values("hop_seconds_count", "partner") == ["ads", "payment"]


def test_no_pages_no_figures() -> None:
    samples = Samples.from_pages([])
    assert samples.total("things_total") == 0.0
    assert math.isnan(samples.quantile(0.5, "hop_seconds"))


def test_since_a_baseline_keeps_what_was_counted_after_it() -> None:
    before = [_page({"ads": [0.05] * 4}, events=2), _page({"ads": [0.3]}, events=1)]
    after = [
        _page({"ads": [0.05] * 4 + [0.7] * 10}, events=12),
        _page({"ads": [0.3] + [0.7] * 10}, events=3),
    ]
    samples = Samples.from_pages(after).since(Samples.from_pages(before))
    assert samples.buckets("hop_seconds", partner="ads") == [
        (0.1, 0.0),
        (0.5, 0.0),
        (1.0, 20.0),
        (INF, 20.0),
    ]
    assert samples.total("hop_seconds_count") == 20.0
    assert samples.total("hop_seconds_sum") == pytest.approx(14.0)
    # rank 10 of the 20 in (0.5, 1]; with the 5 warm-up observations it would be 0.6875
    assert samples.quantile(0.5, "hop_seconds") == pytest.approx(0.75)
    assert Samples.from_pages(after).quantile(0.5, "hop_seconds") == pytest.approx(0.6875)
    assert samples.total("things_total", outcome="applied") == 12.0
    assert samples.total("things_total", outcome="stale") == 0.0


def test_since_counts_a_restarted_process_from_zero() -> None:
    before = Samples.from_pages([_page({"ads": [0.05] * 5}, events=5)])
    after = Samples.from_pages([_page({"ads": [0.05] * 2}, events=2)])
    samples = after.since(before)
    assert samples.total("things_total", outcome="applied") == 2.0
    assert samples.total("hop_seconds_count") == 2.0


def test_since_an_empty_baseline_changes_nothing() -> None:
    samples = Samples.from_pages([_page({"ads": [0.05, 0.7]}, events=3)])
    assert samples.since(Samples()).buckets("hop_seconds") == samples.buckets("hop_seconds")
