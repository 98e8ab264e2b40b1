"""The worker on consent changes: store, partner instruction, order per subject.

One worker for the module, under its own uuid namespace (see ``processes.py``).
"""

from __future__ import annotations

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from schemas.partner import InstructionAction, PartnerInstruction
from schemas.settings import Settings
from streams.pseudonyms import Pseudonyms, instruction_id

from .processes import (
    TopicRecord,
    WorkerProcess,
    consent_changed,
    deletion_requested,
    new_subject,
    now_ms,
    read_all,
    read_until,
)
from .processes import worker_factory as worker_factory
from .worker_fixtures import publisher as publisher
from .worker_fixtures import redis_client as redis_client
from .worker_fixtures import settings as settings
from .worker_fixtures import store as store
from .worker_fixtures import worker as worker

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
ADS = "personalized_ads"
EVENTS = "consent_events_total"


def instructions_for(records: list[TopicRecord], event_id: str) -> list[PartnerInstruction]:
    return [r.obj for r in records if r.obj.source_event_id == event_id]


def wait_outcome(worker: WorkerProcess, outcome: str, before: float) -> None:
    worker.poll(
        lambda: worker.metric(EVENTS, outcome=outcome) >= before + 1,
        TIMEOUT_S,
        f"{EVENTS}{{outcome={outcome!r}}} to increase",
    )


def test_withdrawal_stops_processing_in_the_store_and_at_the_ads_partner(
    worker: WorkerProcess, publisher: ConsentPublisher, store: ConsentStore, settings: Settings
) -> None:
    subject = new_subject()
    assert store.is_allowed(subject, ADS) is True  # opt-out purpose: allowed by default
    stops_before = worker.metric(
        "consent_instructions_total", partner="ads", action="STOP_PROCESSING"
    )
    withdrawal = consent_changed(subject, ADS, granted=False)

    publisher.publish(withdrawal)

    worker.poll(lambda: not store.is_allowed(subject, ADS), TIMEOUT_S, "the store to deny ads")
    topic = settings.topics.instructions("ads")
    records = read_until(
        settings,
        topic,
        lambda rs: any(r.obj.source_event_id == withdrawal.event_id for r in rs),
        timeout_s=TIMEOUT_S,
        what="the STOP_PROCESSING instruction",
        explain=worker.describe,
    )
    (record,) = [r for r in records if r.obj.source_event_id == withdrawal.event_id]
    ins: PartnerInstruction = record.obj
    subject_ref = Pseudonyms(settings.subject_keys).subject_ref("ads", subject)
    assert record.key == subject_ref.encode()
    assert ins.action is InstructionAction.STOP_PROCESSING
    assert ins.purposes == (ADS,)
    assert ins.partner == "ads"
    assert ins.subject_ref == subject_ref
    assert ins.subject_id is None  # ads never held the identity
    assert ins.instruction_id == instruction_id(withdrawal.event_id, "ads", "STOP_PROCESSING")
    assert ins.ack_key == ins.instruction_id
    assert ins.due_by - ins.issued_at == 3_600_000  # the ads STOP_PROCESSING deadline: 1h
    raw_id = subject.encode()
    assert raw_id not in (record.key or b"")
    assert raw_id not in (record.value or b"")
    assert all(raw_id not in v for v in record.headers.values()), record.headers
    assert record.headers["ce_id"] == ins.instruction_id.encode()
    assert record.headers["ce_subject"] == subject_ref.encode()
    # ads is the only partner processing personalized_ads
    for partner in ("payment", "logistics", "research"):
        others = read_all(settings, settings.topics.instructions(partner))
        assert instructions_for(others, withdrawal.event_id) == [], partner
    status, view = worker.get_json(f"/consent/{subject}")
    assert status == 200
    assert view["purposes"][ADS] == {"allowed": False, "default": False, "source": "explicit"}
    after = worker.metric("consent_instructions_total", partner="ads", action="STOP_PROCESSING")
    assert after == stops_before + 1
    assert worker.metric("consent_publish_to_partner_topic_seconds_count", partner="ads") >= 1


def test_an_older_grant_published_later_is_stale_and_does_not_re_grant(
    worker: WorkerProcess, publisher: ConsentPublisher, store: ConsentStore, settings: Settings
) -> None:
    subject = new_subject()
    base = now_ms() - 60_000
    withdrawal = consent_changed(subject, ADS, granted=False, occurred_at=base + 2000)
    grant = consent_changed(subject, ADS, granted=True, occurred_at=base + 1000)
    publisher.publish(withdrawal)
    worker.poll(lambda: not store.is_allowed(subject, ADS), TIMEOUT_S, "the withdrawal")
    _, view_before = worker.get_json(f"/consent/{subject}")
    stale_before = worker.metric(EVENTS, outcome="stale")

    publisher.publish(grant)

    wait_outcome(worker, "stale", stale_before)
    assert worker.metric(EVENTS, outcome="stale") == stale_before + 1
    assert store.is_allowed(subject, ADS) is False
    _, view_after = worker.get_json(f"/consent/{subject}")
    assert view_after == view_before  # not even the version moved
    ads = read_all(settings, settings.topics.instructions("ads"))
    assert [i.action for i in instructions_for(ads, withdrawal.event_id)] == [
        InstructionAction.STOP_PROCESSING
    ]
    assert instructions_for(ads, grant.event_id) == []  # no RESUME_PROCESSING


def test_a_repeated_event_id_is_a_duplicate_and_sends_no_second_instruction(
    worker: WorkerProcess, publisher: ConsentPublisher, store: ConsentStore, settings: Settings
) -> None:
    subject = new_subject()
    withdrawal = consent_changed(subject, ADS, granted=False)
    publisher.publish(withdrawal)
    topic = settings.topics.instructions("ads")
    read_until(
        settings,
        topic,
        lambda rs: bool(instructions_for(rs, withdrawal.event_id)),
        timeout_s=TIMEOUT_S,
        what="the first instruction",
        explain=worker.describe,
    )
    duplicates_before = worker.metric(EVENTS, outcome="duplicate")
    stops_before = worker.metric("consent_instructions_total", partner="ads")

    publisher.publish(withdrawal)  # the same event, redelivered by its publisher

    wait_outcome(worker, "duplicate", duplicates_before)
    assert len(instructions_for(read_all(settings, topic), withdrawal.event_id)) == 1
    assert worker.metric("consent_instructions_total", partner="ads") == stops_before
    assert store.is_allowed(subject, ADS) is False


def test_after_account_closure_a_grant_is_not_applied(
    worker: WorkerProcess,
    publisher: ConsentPublisher,
    store: ConsentStore,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    subject = new_subject()
    closure = deletion_requested(subject)
    publisher.publish(closure)
    key = store.key(subject)
    worker.poll(lambda: redis_client.hexists(key, "closed"), TIMEOUT_S, "the closure marker")
    closed_hash = redis_client.hgetall(key)
    after_before = worker.metric(EVENTS, outcome="after_closure")
    grant = consent_changed(subject, "research_sharing", granted=True)

    publisher.publish(grant)

    wait_outcome(worker, "after_closure", after_before)
    assert store.is_allowed(subject, "research_sharing") is False
    assert store.is_allowed(subject, ADS) is False
    assert redis_client.hgetall(key) == closed_hash
    assert set(closed_hash) == {b"v", b"closed"}
    research = read_all(settings, settings.topics.instructions("research"))
    assert instructions_for(research, grant.event_id) == []


def _uncommitted(settings: Settings, group: str, topics: list[str]) -> dict[str, int]:
    """Records of ``topics`` not committed by ``group``, by partition (a plain consumer
    with the group's id reads the committed offsets without joining the group)."""
    consumer = Consumer(settings.consumer_config(group))
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        left = {}
        for tp in consumer.committed(parts, timeout=10):
            _low, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > max(tp.offset, 0):
                left[f"{tp.topic}[{tp.partition}]"] = high - max(tp.offset, 0)
        return left
    finally:
        consumer.close()


def test_what_the_worker_processed_is_committed(
    worker: WorkerProcess, publisher: ConsentPublisher, settings: Settings
) -> None:
    """Faust commits an offset once the agent acknowledged its record: a message Faust does
    not track (130ce1a built plain ``Message``s from librdkafka's) is never committed, and
    every restart would process the whole topic again."""
    subjects = [new_subject() for _ in range(30)]
    for subject in subjects:
        publisher.publish(consent_changed(subject, ADS, granted=False))
    publisher.flush()
    topics = [settings.topics.events, settings.topics.ledger]
    worker.poll(
        lambda: not _uncommitted(settings, worker.config.app_id, topics),
        TIMEOUT_S,
        "the events and ledger topics committed to their ends",
        interval_s=0.5,
    )
