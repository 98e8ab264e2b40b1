"""The benchmark's pure parts: the latency plan, the paced publisher, the no-op figures,
the latency table."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import paced
import report
import run
from noop_latency import noop_figures


def test_full_plan_has_the_5000_step_shortened_and_noop_at_every_rate() -> None:
    plan = run.latency_plan(run.FULL, 726.0)
    assert [p.rate for p in plan] == [100, 300, 363, 581, 690, 1000, 5000]
    assert all(p.noop for p in plan)
    by_rate = {p.rate: p for p in plan}
    assert by_rate[1000].duration_s == 15.0
    assert by_rate[5000].duration_s == pytest.approx(6.0)
    assert by_rate[5000].events == 30_000


def test_quick_plan_offers_one_small_rate_to_the_noop_agent() -> None:
    plan = run.latency_plan(run.QUICK, 400.0)
    assert [(p.rate, p.noop) for p in plan] == [(50, True), (100, False), (200, False)]


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


class _FakePublisher:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare(self, event: Any) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        return f"s{event}".encode(), b"v", [("cs_published_at", b"1000")]


class _FakeProducer:
    def __init__(self) -> None:
        self.produced = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.produced += 1

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def list_topics(self, topic: str, timeout: float) -> None:
        self.connected = topic


@pytest.mark.parametrize(("rate", "count", "max_sleeps"), [(5000.0, 2000, 450), (100.0, 50, 50)])
def test_paced_publisher_sends_in_small_bursts_at_the_rate(
    monkeypatch: pytest.MonkeyPatch, rate: float, count: int, max_sleeps: int
) -> None:
    clock, producer = _FakeClock(), _FakeProducer()
    monkeypatch.setattr(paced, "time", clock)
    monkeypatch.setattr(paced, "make_producer", lambda settings: producer)
    monkeypatch.setattr(paced, "ConsentPublisher", _FakePublisher)
    monkeypatch.setattr(paced, "_PRODUCERS", {})
    events: Any = [_Event(i) for i in range(count)]
    step = paced.Step(rate, count / rate, "test")

    settings: Any = type("S", (), {"bootstrap_servers": "b"})()
    achieved = paced.publish_paced(settings, None, "topic", step, events)

    assert producer.connected == "topic"  # connected before the first timed record
    assert producer.produced == count and len(step.published) == count
    assert achieved == pytest.approx(rate, rel=0.03)  # n events over (n - 1) / rate
    assert clock.sleeps <= max_sleeps


class _Event:
    def __init__(self, i: int) -> None:
        self.event_id = f"e{i}"
        self.i = i

    def __str__(self) -> str:
        return str(self.i)


def test_noop_figures_from_seen_at_and_latency_pairs() -> None:
    pairs = [1000.0, 5.0, 1010.0, 7.0, 1020.0, math.nan, 2000.0, 9.0]
    figures = noop_figures(pairs)
    assert figures["seen"] == 4
    assert figures["achieved_events_per_s"] == pytest.approx(3.0)  # 3 gaps over 1 s
    assert figures["latency_ms"]["count"] == 3
    assert figures["latency_ms"]["p50"] == 7.0


def _step(**extra: Any) -> dict[str, Any]:
    quantiles = {"count": 10.0, "p50": 20.0, "p95": 90.0, "p99": 100.0, "max": 120.0}
    return {
        "label": "1000/s",
        "offered_events_per_s": 1000,
        "publisher_events_per_s": 998.0,
        "achieved_events_per_s": 700.0,
        "saturated": True,
        "worker_cpu_ms_per_event": 1.234,
        "events_per_batch": 3.44,
        "observed_ms": {"store": quantiles, "partner": quantiles},
        "histogram_ms": {
            "store": quantiles,
            "partner": quantiles,
            "worker": {"count": 10.0, "p50": 6.0, "p99": 12.0},
        },
        **extra,
    }


def test_latency_table_has_noop_ratio_and_cpu_per_event_columns() -> None:
    noop = {
        "achieved_events_per_s": 1001.0,
        "latency_ms": {"p50": 2.0, "p99": 4.0},
        "worker_cpu_ms_per_event": 0.081,
    }
    partner = {"count": 5.0, "p50": 30.0, "p95": 150.0, "p99": 180.0, "max": 200.0}
    step = _step(noop=noop)
    step["observed_ms"] = {**step["observed_ms"], "partner": partner}
    header, rule, row = report._latency([step])[:3]
    assert "no-op p50 / p99" in header and "no-op CPU µs/event" in header
    assert "p99 ÷ no-op's: store / partner topic" in header
    assert "taken by the agent p50 / p99" in header
    assert len(header.split("|")) == len(rule.split("|")) == len(row.split("|"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == [
        "1,000 (1000/s; sent 998)",
        "700 (saturated) / 1,001",
        "20 / 100",
        "30 / 180",
        "2 / 4",
        "25 / 45",  # the p99s over the no-op's: store, partner topic
        "6 / 12",
        "3.4",
        "1,234",
        "81",
    ]


def test_mean_batch_is_the_events_agents_over_the_step() -> None:
    import latency

    def samples(count: float, taken: float) -> list[tuple[str, dict[str, str], float]]:
        return [
            ("consent_batch_records_count", {"stage": "events"}, count),
            ("consent_batch_records_sum", {"stage": "events"}, taken),
            ("consent_batch_records_count", {"stage": "ledger"}, count * 7),
            ("consent_batch_records_sum", {"stage": "ledger"}, taken * 7),
        ]

    assert latency._mean_batch(samples(10, 50), samples(14, 70)) == 5.0
    assert latency._mean_batch(samples(10, 50), samples(10, 50)) is None  # no batch taken


def test_latency_table_rows_without_noop_or_skipped() -> None:
    rows = report._latency(
        [
            _step(),
            _step(noop={"error": "RuntimeError: gone"}),
            {"label": "5000/s", "offered_events_per_s": 5000, "skipped": "budget"},
        ]
    )
    no_noop, failed, skipped = (r.split("|") for r in rows[2:5])
    assert no_noop[5].strip() == "not measured: not asked for"
    assert failed[5].strip() == "not measured: RuntimeError: gone"
    assert "not measured: budget" in skipped[2]
    assert len(skipped) == len(no_noop)


def test_a_round_shorter_than_two_samples_still_gets_a_rate() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from pipeline import processing_rate

    # baseline 100, target 2,100: the worker went from 100 to all done within one interval
    samples = [(0.0, 100.0), (0.25, 1_400.0), (0.5, 2_100.0)]
    rate = processing_rate(samples, 100.0, 2_100.0)
    assert rate["rate_events_per_s"] == rate["end_to_end_events_per_s"] == 2_000 / 0.25
    assert rate["rate_from_end_to_end"] == 1.0
    assert "rate_lower_bound" not in rate
    long = [(0.0, 100.0), (0.25, 600.0), (0.5, 1_100.0), (0.75, 1_600.0), (1.0, 2_100.0)]
    assert processing_rate(long, 100.0, 2_100.0)["rate_events_per_s"] == 1_000 / 0.5
    # all of it between two samples: at least 2,000 events in 0.33 s
    jump = [(0.0, 100.0), (0.25, 100.0), (0.5, 100.0), (0.83, 2_100.0), (1.1, 2_100.0)]
    rate = processing_rate(jump, 100.0, 2_100.0)
    assert rate["rate_events_per_s"] == pytest.approx(2_000 / 0.33)
    assert rate["rate_lower_bound"] == rate["rate_from_end_to_end"] == 1.0


def test_the_sweep_table_names_the_step_just_after_start() -> None:
    def step(label: str, rate: int, p99: int) -> dict[str, object]:
        observed = {"store": {"p50": 9, "p99": p99}, "partner": {"p99": p99 + 5}}
        return {
            "label": label,
            "offered_events_per_s": rate,
            "achieved_events_per_s": rate,
            "observed_ms": observed,
        }

    results = {
        "latency": [step("300/s", 300, 16)],
        "sweep": {
            "tickets": 10,
            "latency": [step(f"300/s {report.JUST_STARTED}", 300, 50), step("300/s", 300, 17)],
        },
    }
    rows = [line for line in report._sweep(results) if line.startswith("| 300")]
    assert rows[0].startswith(f"| 300, {report.JUST_STARTED} | 300 | 9 / 50 | - / - |")
    assert rows[1].startswith("| 300 | 300 | 9 / 17 | 9 / 16 | 22 / 21 |")


def test_the_sweep_runs_are_read_from_the_workers_histogram_between_two_readings() -> None:
    from sweep import sweep_runs_between

    before = {"count": 10.0, "sum": 0.004, "0.0001": 2.0, "0.00025": 9.0, "0.0005": 10.0}
    before |= {"0.001": 10.0, "+Inf": 10.0}
    after = {"count": 14.0, "sum": 0.005, "0.0001": 2.0, "0.00025": 12.0, "0.0005": 13.0}
    after |= {"0.001": 14.0, "+Inf": 14.0}

    runs = sweep_runs_between(before, after)

    assert runs == {"sweep_runs": 4, "sweep_mean_ms": 0.25, "sweep_longest_within_ms": 1.0}
    text = report._sweep_runs(runs)
    assert "ran 4 times" in text and "0.250 ms on average" in text and "at most 1 ms" in text
    assert sweep_runs_between(after, after) == {"sweep_runs": 0}
    assert "no run" in report._sweep_runs({"sweep_runs": 0})


def test_the_loop_lag_is_the_bucket_every_sample_between_two_readings_fitted_in() -> None:
    from histograms import loop_lag_within_s

    before = {"count": 100.0, "sum": 0.2, "0.001": 90.0, "0.01": 99.0, "5.0": 100.0}
    before |= {"60.0": 100.0, "+Inf": 100.0}
    after = {"count": 140.0, "sum": 7.3, "0.001": 120.0, "0.01": 138.0, "5.0": 139.0}
    after |= {"60.0": 140.0, "+Inf": 140.0}  # one of the 40 new samples: 5-60 s

    assert loop_lag_within_s(before, after) == 60.0
    assert loop_lag_within_s({}, before) == 5.0
    assert loop_lag_within_s(after, after) is None  # no sample between them
    after["60.0"] = 139.0  # one longer than every bound
    assert loop_lag_within_s(before, after) is None
    assert report._lag_bound(0.025) == "25 ms" and report._lag_bound(None) == "n/a"
