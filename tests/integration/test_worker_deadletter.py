"""Bad input reaches the dead-letter topic with its original bytes and the reason, and
the worker goes on with the next good event (never a stalled consumer).

One worker for the module, under its own uuid namespace (see ``processes.py``).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from schemas.events import ConsentChanged, ConsentDecision, ConsentEvent
from schemas.partner import PartnerInstruction, received_instruction
from schemas.serde import SINGLE_OBJECT_MAGIC, AvroSerde
from schemas.settings import Settings
from streams.events.decisions import decide
from streams.events.state_limit import StateLimit
from streams.fanout import FanOut
from streams.pseudonyms import Pseudonyms
from streams.subject import SubjectState, state_to_json

from .processes import (
    TopicRecord,
    WorkerFactory,
    WorkerProcess,
    consent_changed,
    data_shared,
    deletion_requested,
    event,
    new_subject,
    now_ms,
    read_until,
)
from .processes import worker_factory as worker_factory

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
MAX_RECORD_BYTES = 4096
CLI = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "consent-stream")


@pytest.fixture(scope="module")
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    return worker_factory(env={"CONSENT_STREAM_MAX_RECORD_BYTES": str(MAX_RECORD_BYTES)})


@dataclass(frozen=True)
class Sent:
    name: str
    reason: str
    key: bytes | None
    value: bytes
    partition: int = -1
    offset: int = -1


def produce(settings: Settings, records: list[Sent]) -> list[Sent]:
    """Produce raw records in order; returns them with their partition and offset."""
    # the worker's limit: the topics take batches of up to 4,096 + 64 KiB
    producer = Producer(replace(settings, max_record_bytes=MAX_RECORD_BYTES).producer_config())
    placed: dict[int, tuple[int, int]] = {}
    for i, rec in enumerate(records):

        def delivered(err: Any, msg: Any, i: int = i) -> None:
            assert err is None, err
            placed[i] = (msg.partition(), msg.offset())

        producer.produce(
            settings.topics.events,
            key=rec.key,
            value=rec.value,
            headers=[("x-test-origin", rec.name.encode())],
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0
    return [replace(r, partition=placed[i][0], offset=placed[i][1]) for i, r in enumerate(records)]


def source(record: TopicRecord) -> tuple[int, int]:
    h = record.headers
    return int(h["cs_dlq_source_partition"]), int(h["cs_dlq_source_offset"])


def test_bad_records_are_dead_lettered_and_the_next_good_event_is_processed(
    worker: WorkerProcess,
) -> None:
    settings = worker.settings
    topic = settings.topics.events
    serde = AvroSerde()
    subject = new_subject()
    key = subject.encode()
    valid = serde.encode(consent_changed(subject, "personalized_ads", granted=False), topic)
    withdrawal = ConsentChanged("mind_reading", ConsentDecision.WITHDRAWN, "2023-09-01", "app")
    unknown_purpose = event(subject, withdrawal)  # the publisher would refuse it
    bad = [
        Sent("not-avro", "unknown_schema", key, b"this is not an Avro record"),
        Sent(
            "unknown-fingerprint",
            "unknown_schema",
            key,
            SINGLE_OBJECT_MAGIC + bytes.fromhex("0123456789abcdef") + valid[10:],
        ),
        Sent("unknown-purpose", "unknown_purpose", key, serde.encode(unknown_purpose, topic)),
        Sent(
            "not-withdrawable",
            "not_withdrawable",
            key,
            serde.encode(consent_changed(subject, "payment", granted=False), topic),
        ),
        Sent("truncated", "truncated", key, valid[:-7]),
        Sent("oversized", "oversized", key, valid + b"\0" * MAX_RECORD_BYTES),
        Sent("key-mismatch", "key_mismatch", b"someone-else@example.com", valid),
        Sent("no-key", "key_mismatch", None, valid),  # dead-lettered with no key, as it came
    ]
    good = consent_changed(subject, "personalized_ads", granted=False)
    before = worker.metrics()
    client = make_redis(settings)
    store = ConsentStore(client, worker.policy, settings.subject_keys, settings.redis_prefix)
    assert store.is_allowed(subject, "personalized_ads") is True

    sent = produce(settings, [*bad, Sent("good", "", key, serde.encode(good, topic))])

    try:
        worker.poll(
            lambda: not store.is_allowed(subject, "personalized_ads"),
            TIMEOUT_S,
            "the good event after the bad ones",
        )
    finally:
        client.close()
    wanted = {(s.partition, s.offset): s for s in sent[:-1]}
    records = read_until(
        settings,
        settings.topics.deadletter,
        lambda rs: set(wanted) <= {source(r) for r in rs},
        timeout_s=TIMEOUT_S,
        what="every bad record on the dead-letter topic",
        decode=False,
        explain=worker.describe,
    )
    by_source = {source(r): r for r in records}
    reasons = {s.reason for s in bad}
    assert len(records) == len(bad)  # the good event is not there
    for position, s in wanted.items():
        dl = by_source[position]
        h = dl.headers
        assert dl.key == s.key, s.name
        assert dl.value == s.value, s.name
        assert h["cs_dlq_reason"].decode() == s.reason, (s.name, h["cs_dlq_error"])
        assert h["cs_dlq_source_topic"].decode() == topic
        assert h["cs_dlq_error"], s.name
        assert int(h["cs_dlq_failed_at"]) > 0
        assert h["x-test-origin"] == s.name.encode()  # original headers are kept
    # counted when their batches are settled, after the dead letters went out (wave 1)
    applied = {"type": "consent.changed", "outcome": "applied"}
    applied_before = before.value("consent_events_total", **applied)
    dead_before = sum(before.value("consent_deadletters_total", reason=r) for r in reasons)

    def counted() -> bool:
        m = worker.metrics()
        dead = sum(m.value("consent_deadletters_total", reason=r) for r in reasons)
        return m.value("consent_events_total", **applied) > applied_before and (
            dead >= dead_before + len(bad)
        )

    worker.poll(counted, TIMEOUT_S, "the dead letters and the good event counted")
    after = worker.metrics()
    for reason in reasons:
        count = sum(1 for s in bad if s.reason == reason)
        was = before.value("consent_deadletters_total", reason=reason)
        assert after.value("consent_deadletters_total", reason=reason) == was + count, reason
    assert after.value("consent_events_total", type="consent.changed", outcome="applied") == (
        before.value("consent_events_total", type="consent.changed", outcome="applied") + 1
    )


def deletion_instructions(
    worker: WorkerProcess, partner: str, request_id: str
) -> list[PartnerInstruction]:
    """The instructions of deletion ``request_id`` on ``partner``'s topic, as a partner
    reads them (with what their headers add)."""
    records = read_until(
        worker.settings,
        worker.settings.topics.instructions(partner),
        lambda rs: any(r.obj.request_id == request_id for r in rs),
        timeout_s=TIMEOUT_S,
        what=f"the deletion's instruction to {partner}",
        explain=worker.describe,
    )
    return [
        received_instruction(r.obj, r.headers) for r in records if r.obj.request_id == request_id
    ]


def fitting(worker: WorkerProcess, orders: list[ConsentEvent]) -> int:
    """How many of ``orders`` (one subject's, in order) fit in its state's lineage budget."""
    limit = StateLimit(MAX_RECORD_BYTES)
    fan = FanOut(worker.policy, Pseudonyms(worker.settings.subject_keys), now_ms())
    state = SubjectState(orders[0].subject_id)
    for n, e in enumerate(orders):
        state = decide(state, e, fan).state
        if len(state_to_json(state)) > limit.growth_bytes:
            return n
    return len(orders)


def test_orders_past_a_subjects_state_limit_keep_no_references_and_its_partition_goes_on(
    worker: WorkerProcess,
) -> None:
    """A subject's state is one changelog record: here at most 4,096 bytes, 3,840 of them
    for references (the changelog takes 4,096 + 64 KiB). Without the limit these orders'
    references (~150 KB, over 100 KB compressed) would fail that write on every retry,
    and nothing behind them on the partition would be processed. Past it, an order is
    applied without its references and its record is dead-lettered: the last one, to a
    partner the subject's data has not gone to before, still gets the deletion's
    instruction (``streams.events.state_limit``)."""
    settings = worker.settings
    topic = settings.topics.events
    serde = AvroSerde()
    subject = new_subject()
    key = subject.encode()
    orders = [
        data_shared(
            subject,
            "logistics",
            ("delivery_details",),
            {f"waybill-{n}-{i}": secrets.token_urlsafe(180) for i in range(6)},
        )
        for n in range(100)
    ]
    invoices = {f"invoice-{i}": secrets.token_urlsafe(180) for i in range(7)}
    orders.append(data_shared(subject, "payment", ("payment_records",), invoices))  # fits less
    kept = fitting(worker, orders)
    assert kept in (1, 2)  # each adds ~1.5 KB
    before = worker.metrics().value("consent_deadletters_total", reason="references_dropped")

    sent = produce(
        settings,
        [Sent(f"order-{i}", "", key, serde.encode(e, topic)) for i, e in enumerate(orders)],
    )

    dead = read_until(
        settings,
        settings.topics.deadletter,
        lambda rs: sum(r.key == key for r in rs) >= len(orders) - kept,
        timeout_s=TIMEOUT_S,
        what="the orders past the limit",
        decode=False,
        explain=worker.describe,
    )
    mine = [r for r in dead if r.key == key]
    assert sorted(source(r) for r in mine) == [(s.partition, s.offset) for s in sent[kept:]]
    assert {r.headers["cs_dlq_reason"] for r in mine} == {b"references_dropped"}
    request_id = str(uuid.uuid4())
    after = [
        consent_changed(subject, "personalized_ads", granted=False),
        deletion_requested(subject, request_id=request_id),
    ]
    produce(
        settings, [Sent(f"after-{i}", "", key, serde.encode(e, topic)) for i, e in enumerate(after)]
    )
    (ins,) = deletion_instructions(worker, "logistics", request_id)
    assert set(ins.partner_refs) == {k for e in orders[:kept] for k in e.payload.partner_refs}
    (paid,) = deletion_instructions(worker, "payment", request_id)
    assert paid.categories == ("payment_records",) and dict(paid.partner_refs) == {}
    # the partners are told what their instructions lack (a CloudEvents extension)
    assert (ins.references_dropped, paid.references_dropped) == (100 - kept, 1)
    statuses = read_until(
        settings,
        settings.topics.requests,
        lambda rs: any(r.key == request_id.encode() and r.obj.partners for r in rs),
        timeout_s=TIMEOUT_S,
        what="the deletion's request status",
        explain=worker.describe,
    )
    status = next(r.obj for r in statuses if r.key == request_id.encode() and r.obj.partners)
    # the evidence says which instructions lack references, and how many records' worth
    assert {o.partner: o.refs_dropped for o in status.partners} == {
        "logistics": 100 - kept,
        "payment": 1,
    }
    client = make_redis(settings)
    try:
        store = ConsentStore(client, worker.policy, settings.subject_keys, settings.redis_prefix)
        worker.poll(
            lambda: store.is_allowed(subject, "personalized_ads") is False,
            TIMEOUT_S,
            "the withdrawal behind the orders",
        )
    finally:
        client.close()
    worker.poll(
        lambda: (
            worker.metrics().value("consent_deadletters_total", reason="references_dropped")
            == before + len(mine)
        ),
        TIMEOUT_S,
        "the dropped references counted",
    )


def records_of(
    worker: WorkerProcess, topic: str, key: bytes, count: int, what: str
) -> list[TopicRecord]:
    """The records of ``key`` on ``topic``, once there are ``count`` of them."""
    records = read_until(
        worker.settings,
        topic,
        lambda rs: sum(r.key == key for r in rs) >= count,
        timeout_s=TIMEOUT_S,
        what=what,
        decode=False,
        explain=worker.describe,
    )
    return [r for r in records if r.key == key]


def dead_letters_cli(worker: WorkerProcess, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """``consent-stream dead-letters ARGS`` as the operator runs it: exit code, its JSON
    lines, its summary line."""
    done = subprocess.run(
        [CLI, "--log-level", "WARNING", "dead-letters", *args],
        env=worker.config.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert lines and lines[-1].startswith("# "), done.stdout + done.stderr
    return done.returncode, [json.loads(line) for line in lines[:-1]], lines[-1]


def test_the_dead_letters_command_lists_a_subjects_records_and_publishes_them_again(
    worker: WorkerProcess,
) -> None:
    settings = worker.settings
    serde = AvroSerde()
    subject = new_subject()
    key = subject.encode()
    unknown = consent_changed(subject, "no_such_purpose", granted=False)
    events_topic = settings.topics.events
    sent = produce(
        settings,
        [
            Sent("no magic bytes", "unknown_schema", key, b"not avro at all"),
            Sent("unknown purpose", "unknown_purpose", key, serde.encode(unknown, events_topic)),
        ],
    )
    records_of(worker, settings.topics.deadletter, key, 2, "the subject's two dead letters")

    code, listed, summary = dead_letters_cli(worker, "--subject", subject)

    assert code == 0 and summary == "# 2 dead letters"
    assert sorted(d["reason"] for d in listed) == ["unknown_purpose", "unknown_schema"]
    by_reason = {d["reason"]: d for d in listed}
    assert by_reason["unknown_schema"]["event"] is None
    assert by_reason["unknown_purpose"]["event"]["event_id"] == unknown.event_id
    assert {d["subject"] for d in listed} == {subject}
    assert {d["source"] for d in listed} == {
        f"{events_topic}[{s.partition}]@{s.offset}" for s in sent
    }

    code, again, summary = dead_letters_cli(
        worker, "--subject", subject, "--reason", "unknown_schema", "--republish"
    )

    assert code == 0 and summary == "# 1 dead letters, 1 published again"
    assert [d["republished"] for d in again] == [True]
    published = records_of(worker, events_topic, key, 3, "the record published again")
    assert [r.value for r in published][-1] == b"not avro at all"  # as it came
    assert not any(name.startswith("cs_dlq_") for name in published[-1].headers)
    # the worker handles it as any record: dead-lettered again
    records_of(worker, settings.topics.deadletter, key, 3, "it dead-lettered again")
