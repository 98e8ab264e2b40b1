"""The paced publisher of (d): the realistic events at a fixed rate, through the SDK.

Each record gets its ``cs_published_at`` header (ms since the epoch) at the moment it is
prepared, just before it is handed to the producer, as the SDK does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from benchlib import Record, produce_one

from producers.publisher import ConsentPublisher, make_producer
from schemas.cloudevents import published_at_ms
from schemas.events import ConsentEvent
from schemas.policy import Policy
from schemas.settings import Settings

__all__ = ["MIN_SLEEP_S", "Step", "publish_paced"]

MIN_SLEEP_S = 0.001  # the publisher's shortest pause between bursts
_PRODUCERS: dict[str, Any] = {}


def _producer(settings: Settings, topic: str) -> Any:
    """One producer per broker for the whole run, connected before its first timed record:
    a new producer's first records wait for the connection, the metadata and the
    idempotent producer id, which is the publisher's start-up, not a latency of the hop."""
    producer = _PRODUCERS.get(settings.bootstrap_servers)
    if producer is None:
        producer = _PRODUCERS[settings.bootstrap_servers] = make_producer(settings)
    producer.list_topics(topic, timeout=15)
    return producer


@dataclass
class Step:
    rate: float
    duration_s: float
    label: str
    published: dict[str, int] = field(default_factory=dict)  # event id -> published at
    subjects: dict[bytes, int] = field(default_factory=dict)  # subject -> published at

    def sent(self, event_id: str, record: Record) -> None:
        at = published_at_ms(dict(record[2])) or 0
        self.published[event_id] = at
        self.subjects[record[0]] = at


def publish_paced(
    settings: Settings, policy: Policy, topic: str, step: Step, events: list[ConsentEvent]
) -> float:
    """Publish at ``step.rate`` through the SDK's ``prepare`` (``cs_published_at`` set at
    send time); returns the rate the publisher achieved. It sends every event that is due,
    then sleeps until the next one is (at least ``MIN_SLEEP_S``): small bursts, not a sleep
    per event, so it can offer thousands of events/s."""
    producer = _producer(settings, topic)
    publisher = ConsentPublisher(settings, policy, producer=producer)
    started = time.monotonic()
    sent = 0
    while sent < len(events):
        now = time.monotonic()
        while sent < len(events) and started + sent / step.rate <= now:  # every due event
            record = publisher.prepare(events[sent])
            step.sent(events[sent].event_id, record)
            produce_one(producer, topic, record)
            sent += 1
        producer.poll(0)
        ahead = started + sent / step.rate - time.monotonic()
        if sent < len(events) and ahead > 0:
            time.sleep(max(ahead, MIN_SLEEP_S))
    producer.flush(30)
    return len(events) / max(time.monotonic() - started, 1e-9)
