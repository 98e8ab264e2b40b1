"""``consent-stream replay`` on the local stack: more instructions than the producer's
local queue holds, only each subject's latest state, every one delivered, exactly once.

No worker: the test writes the states topic itself, as the worker would have."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

import streams.replay.command
from schemas.partner import InstructionAction, PartnerInstruction
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.views import ConsentState, PurposeDecision
from streams.acl.sync import remove_namespace_acls
from streams.pseudonyms import Pseudonyms
from streams.replay.command import run_replay
from streams.replay.sender import ReplaySender

from .conftest import delete_topics, wait_for_leaders
from .kafka_auth import admin_config, admin_settings, sync_acls
from .processes import read_all
from .test_cli_errors import cli

pytestmark = pytest.mark.integration

SUBJECTS = 1_200
QUEUE_MESSAGES = 300  # librdkafka's local queue: far fewer than the instructions


def _state(subject: str, version: int, ads_allowed: bool) -> ConsentState:
    at = 1_700_000_000_000 + version
    ads = PurposeDecision("personalized_ads", ads_allowed, at, "2023-09-01")
    return ConsentState(subject, version, at, purposes=(ads,))


@pytest.fixture
def namespace(bootstrap_servers: str) -> Iterator[Settings]:
    settings = admin_settings(topic_namespace=f"replay{uuid.uuid4().hex[:8]}")
    sync_acls(settings, load_policy().partners)
    admin = AdminClient(admin_config(bootstrap_servers))
    topics = [settings.topics.state, settings.topics.ledger, settings.topics.instructions("ads")]
    for future in admin.create_topics([NewTopic(t, 3, 1) for t in topics]).values():
        future.result()
    for topic in topics:
        wait_for_leaders(admin, topic, 3)
    yield settings
    delete_topics(admin, topics)
    remove_namespace_acls(settings, sorted(load_policy().partners))


def _write(settings: Settings, states: list[ConsentState]) -> None:
    serde, topic = AvroSerde(), settings.topics.state
    producer = Producer(settings.producer_config())
    for state in states:
        producer.produce(topic, serde.encode(state, topic), state.subject_id.encode())
    assert producer.flush(30) == 0


def test_a_replay_larger_than_the_local_queue_sends_each_latest_decision_once(
    namespace: Settings,
) -> None:
    serde, topic = AvroSerde(), namespace.topics.state
    producer = Producer(namespace.producer_config())
    subjects = [f"replay-{uuid.uuid4().hex[:8]}-{n}" for n in range(SUBJECTS)]
    for n, subject in enumerate(subjects):
        producer.produce(topic, serde.encode(_state(subject, 1, False), topic), subject.encode())
        if n % 3 == 0:  # withdrew, then allowed again: nothing to send
            producer.produce(topic, serde.encode(_state(subject, 2, True), topic), subject.encode())
        if n % 3 == 1:  # no state any more
            producer.produce(topic, None, subject.encode())
        producer.poll(0)
    assert producer.flush(30) == 0
    expected = {Pseudonyms(namespace.subject_keys).subject_ref("ads", s) for s in subjects[2::3]}

    result = cli(
        "replay",
        "--partner",
        "ads",
        TOPIC_NAMESPACE=namespace.topic_namespace,
        KAFKA_QUEUE_BUFFERING_MAX_MESSAGES=str(QUEUE_MESSAGES),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"replayed {SUBJECTS // 3 * 2} subjects to ads: 400 instructions sent\n"
    sent = [r.obj for r in read_all(namespace, namespace.topics.instructions("ads"))]
    assert all(isinstance(i, PartnerInstruction) for i in sent)
    assert sorted(i.subject_ref for i in sent) == sorted(expected)  # each once
    assert {i.action for i in sent} == {InstructionAction.STOP_PROCESSING}
    tickets = read_all(namespace, namespace.topics.ledger, decode=False)
    assert sorted(t.key for t in tickets) == sorted(i.ack_key.encode() for i in sent)


def test_subjects_that_change_while_they_are_replayed_get_their_newer_decision_last(
    namespace: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, so the states can change at a known point: after the index is read,
    before the first instruction goes out (as a subject's change during a long replay)."""
    subjects = [f"replay-{uuid.uuid4().hex[:8]}-{n}" for n in range(30)]
    _write(namespace, [_state(s, 1, False) for s in subjects])
    changed = subjects[:10]

    class ChangedMeanwhile(ReplaySender):
        def send(self, instructions: Iterable[PartnerInstruction], chunk_size: int = 5000) -> bool:
            if not self.instructions.sent:  # the first send: the replayed states
                _write(namespace, [_state(s, 2, True) for s in changed])  # allowed again
            return super().send(instructions, chunk_size)

    monkeypatch.setattr(streams.replay.command, "ReplaySender", ChangedMeanwhile)
    worker = replace(
        Settings.from_env().as_principal("worker"), topic_namespace=namespace.topic_namespace
    )
    out = io.StringIO()

    assert run_replay(worker, load_policy(), "ads", out) == 0
    assert out.getvalue().splitlines() == [
        "replayed 30 subjects to ads: 40 instructions sent",
        "10 of them sent again: their subjects changed during the replay",
    ]
    ref = Pseudonyms(namespace.subject_keys).subject_ref
    last: dict[str, InstructionAction] = {}
    for record in read_all(namespace, namespace.topics.instructions("ads")):
        last[record.obj.subject_ref] = record.obj.action  # in order, per subject's partition
    assert {s: last[ref("ads", s)] for s in subjects} == {
        s: InstructionAction.RESUME_PROCESSING if n < 10 else InstructionAction.STOP_PROCESSING
        for n, s in enumerate(subjects)
    }
