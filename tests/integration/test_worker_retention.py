"""When a legal retention ends, the worker itself issues the follow-up ERASE (a timer).

The worker runs with a policy whose transaction-record retention is 4 seconds instead of
3 years; everything else is the packaged policy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from confluent_kafka import Producer

from producers.publisher import ConsentPublisher
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.serde import AvroSerde

from .processes import (
    TopicRecord,
    WorkerFactory,
    WorkerProcess,
    data_shared,
    deletion_requested,
    new_subject,
    now_ms,
    read_until,
)
from .processes import worker_factory as worker_factory

pytestmark = pytest.mark.integration

RETENTION_S = 4


@pytest.fixture(scope="module")
def worker(
    worker_factory: WorkerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    text = (resources.files("schemas") / "policy" / "policy.v1.toml").read_text("utf-8")
    assert 'duration = "1095d"' in text
    path = Path(tmp_path_factory.mktemp("policy")) / "short-retention.toml"
    path.write_text(text.replace('duration = "1095d"', f'duration = "{RETENTION_S}s"'), "utf-8")
    yield worker_factory(env={"CONSENT_STREAM_POLICY": str(path)})


def _payment(worker: WorkerProcess, request_id: str, n: int) -> list[PartnerInstruction]:
    def done(records: list[TopicRecord]) -> bool:
        return len(_mine(records, request_id)) >= n

    records = read_until(
        worker.settings,
        worker.settings.topics.instructions("payment"),
        done,
        timeout_s=RETENTION_S + 30,
        what=f"{n} payment instructions",
        explain=worker.describe,
    )
    return _mine(records, request_id)


def _mine(records: list[TopicRecord], request_id: str) -> list[PartnerInstruction]:
    seen: dict[str, PartnerInstruction] = {}
    for r in records:
        if isinstance(r.obj, PartnerInstruction) and r.obj.request_id == request_id:
            seen.setdefault(r.obj.instruction_id, r.obj)
    return list(seen.values())


def _ack(worker: WorkerProcess, ins: PartnerInstruction, status: AcknowledgementStatus) -> None:
    ack = PartnerAcknowledgement(
        ins.instruction_id,
        ins.partner,
        status,
        now_ms(),
        retain_until=ins.retain_until if status is AcknowledgementStatus.RESTRICTED else None,
    )
    topic = worker.settings.topics.acks(ins.partner)
    producer = Producer(worker.settings.producer_config())
    producer.produce(topic, AvroSerde().encode(ack, topic), ins.ack_key.encode())
    assert producer.flush(30) == 0


def test_restricted_data_is_erased_when_the_retention_ends(worker: WorkerProcess) -> None:
    subject, request_id = new_subject("retained"), str(uuid.uuid4())
    t = now_ms()
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        publisher.publish(
            data_shared(
                subject,
                "payment",
                ("payment_records",),
                {"payment_account_ref": "PA-9"},
                transaction_completed_at=t,
                occurred_at=t,
            )
        )
        publisher.publish(deletion_requested(subject, request_id=request_id, occurred_at=t + 1))

    (restrict,) = _payment(worker, request_id, 1)
    assert restrict.action is InstructionAction.RESTRICT
    assert restrict.retain_until == t + RETENTION_S * 1000
    _ack(worker, restrict, AcknowledgementStatus.RESTRICTED)
    worker.poll(
        lambda: (
            worker.get_json(f"/requests/{request_id}")[1]["status"] == "COMPLETED_WITH_RESTRICTIONS"
        ),
        30,
        "COMPLETED_WITH_RESTRICTIONS",
    )

    follow_up = next(
        i for i in _payment(worker, request_id, 2) if i.instruction_id != restrict.instruction_id
    )
    assert follow_up.action is InstructionAction.ERASE
    assert follow_up.issued_at >= restrict.retain_until
    assert dict(follow_up.partner_refs) == {"payment_account_ref": "PA-9"}
    assert follow_up.ack_key == request_id
    _, view = worker.get_json(f"/requests/{request_id}")
    erase = next(p for p in view["partners"] if p["instruction_id"] == follow_up.instruction_id)
    assert erase["follows_instruction_id"] == restrict.instruction_id
    assert view["status"] == "IN_PROGRESS"

    _ack(worker, follow_up, AcknowledgementStatus.DONE)
    worker.poll(
        lambda: worker.get_json(f"/requests/{request_id}")[1]["status"] == "COMPLETED",
        30,
        "COMPLETED after the follow-up ERASE",
    )
    assert worker.metric("consent_retention_follow_ups_total", partner="payment") == 1
    # the timer keeps running: no second follow-up for the same hold
    assert len(_payment(worker, request_id, 2)) == 2
