"""``consent-stream dead-letters``: which records it picks and how it shows them (no Kafka)."""

from __future__ import annotations

import io
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from fake_producer import QueueProducer
from fake_topic import Record

import producers.publisher
import streams.deadletter.command
from schemas.events import ConsentChanged, ConsentDecision, ConsentEvent
from schemas.serde import AvroSerde
from schemas.settings import Settings
from streams.deadletter.command import DeadLetterRecord, run_dead_letters, selected
from streams.deadletter.policy import DeadLetter, deadletter_headers

EVENTS = "consent.events.v1"
SERDE = AvroSerde()


def record(offset: int, reason: str, subject: str, value: bytes) -> DeadLetterRecord:
    headers = deadletter_headers(
        {"ce_id": b"x"}, DeadLetter(reason, f"why {offset}", EVENTS, 2, 40 + offset, 1_700)
    )
    return DeadLetterRecord(0, offset, subject.encode(), value, tuple(headers))


def withdrawal(subject: str) -> ConsentEvent:
    payload = ConsentChanged("personalized_ads", ConsentDecision.WITHDRAWN, "2023-09-01", "app")
    return ConsentEvent(str(uuid.uuid4()), subject, 1_700_000_000_000, "test", payload)


def test_records_are_picked_by_reason_and_subject() -> None:
    records = [
        record(0, "unknown_schema", "a", b"junk"),
        record(1, "references_dropped", "a", b"junk"),
        record(2, "references_dropped", "b", b"junk"),
    ]

    def offsets(reasons: list[str], subject: str | None) -> list[int]:
        return [r.offset for r in selected(iter(records), reasons, subject)]

    assert offsets([], None) == [0, 1, 2]
    assert offsets(["references_dropped"], None) == [1, 2]
    assert offsets([], "a") == [0, 1]
    assert offsets(["references_dropped", "unknown_schema"], "a") == [0, 1]
    assert offsets(["oversized"], None) == []


def test_a_record_shows_where_it_came_from_and_its_event_when_it_decodes() -> None:
    event = withdrawal("buyer-1@example.com")
    good = record(3, "unknown_purpose", event.subject_id, SERDE.encode(event, EVENTS))
    bad = record(4, "unknown_schema", "buyer-2@example.com", b"not avro")

    shown = good.view(SERDE, EVENTS)

    assert shown["at"] == "0@3" and shown["reason"] == "unknown_purpose"
    assert shown["source"] == f"{EVENTS}[2]@43" and shown["failed_at"] == 1_700
    assert shown["error"] == "why 3" and shown["subject"] == event.subject_id
    assert shown["event"]["event_id"] == event.event_id
    assert bad.view(SERDE, EVENTS)["event"] is None
    assert good.original_headers == [("ce_id", b"x")]  # what is published again


class _Topic:
    """Stands in for ``TopicToEnd``: the dead letters of ``records``, read to the end."""

    def __init__(self, records: list[DeadLetterRecord]) -> None:
        self.records = records

    def __call__(self, settings: Settings, topic: str, timeout_s: float) -> Any:
        records = [
            Record(r.partition, r.offset, r.value, key=r.key, headers=list(r.headers))
            for r in self.records
        ]
        return SimpleNamespace(messages=lambda: iter(records), complete=True)


def republish(
    monkeypatch: pytest.MonkeyPatch, producer: QueueProducer, count: int
) -> tuple[int, str]:
    records = [record(n, "unknown_schema", f"s{n}", b"junk") for n in range(count)]
    monkeypatch.setattr(streams.deadletter.command, "TopicToEnd", _Topic(records))
    monkeypatch.setattr(producers.publisher, "make_producer", lambda settings: producer)
    out = io.StringIO()
    code = run_dead_letters(Settings(), [], None, True, out)
    return code, out.getvalue().splitlines()[-1]


def test_republishing_more_than_the_local_queue_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = QueueProducer(capacity=2)

    assert republish(monkeypatch, producer, 5) == (0, "# 5 dead letters, 5 published again")
    assert producer.queue_full > 0


def test_records_the_broker_refuses_are_not_counted_as_published_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, summary = republish(monkeypatch, QueueProducer(refused=frozenset({EVENTS})), 2)

    assert code == 1
    assert summary.startswith("# 2 dead letters, 0 published again (0 delivered, 2 failed (")
