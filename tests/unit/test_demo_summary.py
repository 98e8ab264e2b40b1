"""The demo's command line, request tracking and summary (no processes, no Kafka)."""

from __future__ import annotations

import argparse
import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from schemas.events import DeletionScope
from schemas.settings import Settings
from schemas.views import RequestState, RequestStatus
from streams.demo.command import add_demo_command, default_namespace, demo_settings
from streams.demo.latency import Samples
from streams.demo.options import DemoOptions
from streams.demo.request_tracker import NOT_SEEN, RequestTracker
from streams.demo.summary import (
    Progress,
    RunFacts,
    WarmupReport,
    format_seconds,
    progress_line,
    summary_lines,
    warmup_line,
)
from streams.metrics import stream_metrics
from streams.request_views import request_key, status_to_json


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_demo_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(["demo", *argv])


def test_command_line_defaults_and_options() -> None:
    options = DemoOptions.from_args(parse([]))
    assert options == DemoOptions()
    assert (options.subjects, options.rate, options.workers, options.timeout_s) == (
        2000,
        1000.0,
        1,
        300.0,
    )
    given = DemoOptions.from_args(
        parse(["--subjects", "50", "--rate", "0", "--workers", "2", "--namespace", "x1"])
    )
    assert (given.subjects, given.rate, given.workers, given.namespace) == (50, 0.0, 2, "x1")


def test_a_fresh_namespace_scopes_topics_app_and_redis_keys() -> None:
    namespace = default_namespace()
    assert re.fullmatch(r"demo\d{14}-\d+", namespace)
    scoped = demo_settings(Settings(), namespace)
    assert scoped.topics.events == f"{namespace}.consent.events.v1"
    assert scoped.app_id == f"consent-stream-{namespace}"
    assert scoped.redis_prefix == namespace


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.reads: list[str] = []

    def mget(self, keys: list[str]) -> list[Any]:
        self.reads += keys
        return [self.data.get(k) for k in keys]


def status(request_id: str, state: RequestState) -> RequestStatus:
    return RequestStatus(
        request_id=request_id,
        subject_digest="d" * 64,
        scope=DeletionScope.ACCOUNT,
        status=state,
        requested_at=1,
        received_at=2,
        due_by=3,
        updated_at=4,
    )


def test_request_tracker_counts_statuses_and_stops_reading_final_ones() -> None:
    redis = FakeRedis()
    done, running, unseen = (str(uuid.uuid4()) for _ in range(3))
    tracker = RequestTracker(redis, "ns", [done, running, unseen])
    redis.data[request_key("ns", done)] = status_to_json(status(done, RequestState.COMPLETED))
    redis.data[request_key("ns", running)] = status_to_json(
        status(running, RequestState.IN_PROGRESS)
    )
    assert tracker.final_count() == 1
    assert tracker.by_status() == {"COMPLETED": 1, "IN_PROGRESS": 1, NOT_SEEN: 1}
    redis.reads.clear()
    tracker.poll()
    assert request_key("ns", done) not in redis.reads
    assert request_key("ns", unseen) in redis.reads
    assert tracker.total == 3


def page(
    events: int = 5, acked: int = 4, latencies: Sequence[float] = (0.002, 0.02, 0.02, 0.2)
) -> str:
    """A worker's /metrics page: ``events`` applied, ``acked`` instructions to ads."""
    registry = CollectorRegistry()
    m = stream_metrics(registry)
    m.events.labels("consent.changed", "applied").inc(events)
    m.instructions.labels("ads", "STOP_PROCESSING").inc(acked)
    m.acknowledgements.labels("ads", "DONE").inc(acked)
    for value in latencies:
        m.publish_to_store.observe(value)
        m.publish_to_partner_topic.labels("ads").observe(value)
        m.instruction_to_ack.labels("ads").observe(value * 10)
    return generate_latest(registry).decode()


def facts(**overrides: Any) -> RunFacts:
    base: dict[str, Any] = {
        "namespace": "demo1",
        "workers": 1,
        "partners": ["ads"],
        "subjects": 2,
        "published": {"consent.changed": 4},
        "probes": {},
        "publish_s": 2.0,
        "process_s": 2.5,
        "target_rate": 2.0,
        "wall_s": 9.0,
        "samples": Samples.from_pages([page()]),
        "requests_by_status": {"COMPLETED": 2},
        "requests_by_scope": {"ACCOUNT": 2},
        "log_dir": ".stack/demo/demo1",
        "logs": ["worker-1.log"],
    }
    return RunFacts(**{**base, **overrides})


def test_the_summary_has_every_section_and_figure() -> None:
    text = "\n".join(summary_lines(facts()))
    for heading in (
        "events by type and outcome",
        "partner instructions (by action) and acknowledgements (by status)",
        "deletion requests",
        "latency per hop",
        "logs: .stack/demo/demo1/ (worker-1.log)",
    ):
        assert heading in text
    assert re.search(r"consent\.changed\s+4\s+5", text)
    assert "instructions      4 (STOP_PROCESSING 4)" in text
    assert "acks              4 (DONE 4)" in text
    assert "by status: COMPLETED 2" in text
    # rank 2 of 4 falls in (15, 20] ms holding 2: 15 + 5 * 1/2
    assert re.search(r"publish -> store\s+18 ms\s+", text)
    assert "4 events published in 2.0 s (2 events/s; target 2/s)" in text
    assert text.rstrip().endswith("result: OK - every deletion request reached a final status")


def test_a_failure_is_the_last_line() -> None:
    lines = summary_lines(facts(failure="3 of 5 deletion requests not final after 1 s"))
    assert lines[-1] == "result: FAILED - 3 of 5 deletion requests not final after 1 s"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0042, "4.2 ms"), (0.25, "250 ms"), (12.34, "12.3 s"), (math.nan, "-")],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_progress_line() -> None:
    line = progress_line(Progress(3.0, 10, 20, 8, 4, 3, 1, 2))
    assert line == (
        "[   3.0s] published 10/20 | processed 8 | instructions 4 | acks 3"
        " | requests final 1/2 (open 1)"
    )


def test_the_figures_count_from_the_end_of_the_warm_up() -> None:
    warm = [3.0] * 6  # six slow probes (in the (2.5, 5] s bucket), then the workload
    text = "\n".join(
        summary_lines(
            facts(
                samples=Samples.from_pages([page(11, 10, [*warm, 0.002, 0.02, 0.02, 0.2])]),
                baseline=Samples.from_pages([page(6, 6, warm)]),
                probes={"consent.changed": 2, "data.shared": 4},
            )
        )
    )
    assert re.search(r"consent\.changed\s+4\s+5\n", text)
    assert "not counted above: 6 warm-up probe events (consent.changed 2, data.shared 4)" in text
    assert "instructions      4 (STOP_PROCESSING 4)" in text
    assert "not counted above: 6 warm-up instructions, 6 acks" in text
    # the workload's 4 observations alone: rank 2 of 4 in (15, 20] ms, p99 in (150, 250] ms
    assert re.search(r"publish -> store\s+18 ms\s+246 ms\s+4\n", text)
    assert "after the warm-up" in text


def test_without_a_baseline_the_warm_up_is_counted() -> None:
    samples = Samples.from_pages([page(11, 10, [3.0] * 6 + [0.02] * 4)])
    text = "\n".join(summary_lines(facts(samples=samples)))
    assert re.search(r"publish -> store\s+2917 ms\s+4958 ms\s+10\n", text)
    assert "not counted above" not in text


def test_warmup_line() -> None:
    report = WarmupReport(2.34, 3.5, 4.25, 2, 12, 72, 4)
    assert warmup_line(report) == (
        "warm-up: children answering in 2.3 s, groups joined in 1.2 s, 12 probe subjects "
        "(72 events, 2 rounds) through store and 4 partners' acks in 0.8 s"
    )
    missed = WarmupReport(2.0, 3.0, 4.0, 1, 6, 36, 4, ("t.acks[2]",))
    assert warmup_line(missed).endswith(
        "(36 events, 1 round) through store and 4 partners' "
        "acks in 1.0 s; no probe reached t.acks[2]"
    )
