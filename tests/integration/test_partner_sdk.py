"""Partner SDK against the real broker: acks on the acks topic, both wire formats, restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from prometheus_client import CollectorRegistry

from consumers.dedup import SqliteProcessedInstructions
from consumers.partner import PartnerConsumer
from consumers.partner_results import Handler, Result
from consumers.simulated.partner import run_partner, simulated_handler
from schemas.cloudevents import header_map
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.serde import AvroSerde, wire_format_of
from schemas.settings import Settings

from .kafka_auth import admin_settings

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Received:
    key: str
    ack: PartnerAcknowledgement
    headers: dict[str, bytes]
    wire_format: str


def instruction(partner: str, action: InstructionAction, **overrides: Any) -> PartnerInstruction:
    instruction_id = str(uuid.uuid4())
    fields: dict[str, Any] = {
        "instruction_id": instruction_id,
        "source_event_id": str(uuid.uuid4()),
        "partner": partner,
        "action": action,
        "subject_ref": uuid.uuid4().hex * 2,
        "issued_at": int(time.time() * 1000),
        "due_by": int(time.time() * 1000) + DAY_MS,
        "ack_key": instruction_id,
    }
    fields.update(overrides)
    return PartnerInstruction(**fields)


def deletion(partner: str, action: InstructionAction, **overrides: Any) -> PartnerInstruction:
    request_id = str(uuid.uuid4())
    return instruction(
        partner, action, request_id=request_id, ack_key=request_id, categories=("x",), **overrides
    )


def publish(settings: Settings, topic: str, records: Iterable[tuple[bytes, bytes]]) -> None:
    producer = Producer(settings.producer_config())
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def encoded(serde: AvroSerde, topic: str, items: Iterable[PartnerInstruction]) -> list[Any]:
    return [(i.subject_ref.encode(), serde.encode(i, topic)) for i in items]


def read_acks(
    settings: Settings, serde: AvroSerde, topic: str, instruction_ids: set[str]
) -> list[Received]:
    """Every record on the acks topic until each instruction has at least one ack."""
    consumer = Consumer(settings.consumer_config(f"reader-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    received: list[Received] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if instruction_ids <= {r.ack.instruction_id for r in received}:
                break
            for msg in consumer.consume(100, 0.5):
                assert msg.error() is None, msg.error()
                value, key = msg.value(), msg.key()
                assert value is not None and key is not None
                ack = serde.decode_as(value, PartnerAcknowledgement, topic)
                headers = header_map(cast(Any, msg.headers()))
                received.append(Received(key.decode(), ack, headers, wire_format_of(value)))
    finally:
        consumer.close()
    return received


def committed_total(settings: Settings, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer(settings.consumer_config(group))
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 30)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


class Recording:
    """Wraps a handler and records the instruction ids it was called with."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[str] = []

    def __call__(self, ins: PartnerInstruction) -> Result:
        self.calls.append(ins.instruction_id)
        return self.handler(ins)


@pytest.fixture(params=["single-object", "confluent"])
def wire(request: pytest.FixtureRequest, bootstrap_servers: str) -> tuple[Settings, AvroSerde]:
    """Settings and the serde both sides share (one mock:// registry for Confluent)."""
    if request.param == "single-object":
        return admin_settings(bootstrap_servers=bootstrap_servers), AvroSerde()
    url = f"mock://partner-sdk-{uuid.uuid4().hex}"
    registry = SchemaRegistryClient.new_client({"url": url})
    return admin_settings(bootstrap_servers=bootstrap_servers, schema_registry_url=url), AvroSerde(
        registry
    )


def test_instructions_get_acks_keyed_by_ack_key_in_both_wire_formats(
    wire: tuple[Settings, AvroSerde],
    unique_topic: Callable[..., str],
    unique_group: Callable[..., str],
) -> None:
    settings, serde = wire
    ins_topic = unique_topic("partner.logistics.instructions", partitions=3)
    acks_topic = unique_topic("partner.logistics.acks")
    group = unique_group("partner.logistics")
    until = int(time.time() * 1000) + 3 * 365 * DAY_MS
    erase = deletion("logistics", InstructionAction.ERASE)
    restrict = deletion("logistics", InstructionAction.RESTRICT, retain_until=until)
    stop = instruction("logistics", InstructionAction.STOP_PROCESSING, purposes=("p",))
    foreign = instruction("ads", InstructionAction.ERASE)
    expected = {
        erase.instruction_id: (AcknowledgementStatus.DONE, None, None),
        restrict.instruction_id: (AcknowledgementStatus.RESTRICTED, until, None),
        stop.instruction_id: (AcknowledgementStatus.DONE, None, None),
        foreign.instruction_id: (AcknowledgementStatus.REJECTED, None, "wrong partner"),
    }
    sent = [erase, restrict, stop, foreign]
    publish(settings, ins_topic, [*encoded(serde, ins_topic, sent), (b"k", b"\x00garbage")])
    registry = CollectorRegistry()
    started = int(time.time() * 1000)

    with PartnerConsumer(
        settings,
        "logistics",
        simulated_handler("logistics"),
        serde=serde,
        registry=registry,
        group_id=group,
        instructions_topic=ins_topic,
        acks_topic=acks_topic,
    ) as consumer:
        assert consumer.run(max_messages=5, idle_timeout_s=TIMEOUT_S) == 5
    finished = int(time.time() * 1000)

    received = read_acks(settings, serde, acks_topic, set(expected))
    by_id = {r.ack.instruction_id: r for r in received}
    assert len(received) == 4
    assert {i: (r.ack.status, r.ack.retain_until, r.ack.reason) for i, r in by_id.items()} == (
        expected
    )
    for ins in sent:
        got = by_id[ins.instruction_id]
        assert got.key == ins.ack_key
        assert started <= got.ack.completed_at <= finished
        assert got.headers["ce_subject"] == ins.subject_ref.encode()
        assert got.headers["ce_type"] == b"partner.acknowledgement"
        assert got.wire_format == ("confluent" if serde.uses_registry else "single-object")
    assert committed_total(settings, group, ins_topic, 3) == 5
    undecodable = registry.get_sample_value(
        "consent_stream_partner_undecodable_instructions_total",
        {"partner": "logistics", "reason": "unknown_schema"},
    )
    assert undecodable == 1


def test_restart_does_not_handle_a_repeat_again_and_loses_nothing(
    bootstrap_servers: str,
    unique_topic: Callable[..., str],
    unique_group: Callable[..., str],
    tmp_path: Path,
) -> None:
    settings = admin_settings(bootstrap_servers=bootstrap_servers)
    serde = AvroSerde()
    ins_topic = unique_topic("partner.payment.instructions", partitions=3)
    acks_topic = unique_topic("partner.payment.acks")
    group = unique_group("partner.payment")
    dedup_file = tmp_path / "partner-payment.sqlite3"
    first = [deletion("payment", InstructionAction.ERASE) for _ in range(3)]
    later = [deletion("payment", InstructionAction.RESTRICT) for _ in range(2)]

    def run_once(items: list[PartnerInstruction], handler: Recording) -> None:
        publish(settings, ins_topic, encoded(serde, ins_topic, items))
        dedup = SqliteProcessedInstructions(dedup_file)
        with PartnerConsumer(
            settings,
            "payment",
            handler,
            serde=serde,
            dedup=dedup,
            registry=CollectorRegistry(),
            group_id=group,
            instructions_topic=ins_topic,
            acks_topic=acks_topic,
        ) as consumer:
            assert consumer.run(max_messages=len(items), idle_timeout_s=TIMEOUT_S) == len(items)
        dedup.close()

    before = Recording(simulated_handler("payment"))
    run_once(first, before)
    after = Recording(simulated_handler("payment"))
    run_once([first[0], *later], after)

    assert sorted(before.calls) == sorted(i.instruction_id for i in first)
    assert sorted(after.calls) == sorted(i.instruction_id for i in later)
    everything = {i.instruction_id: i for i in [*first, *later]}
    received = read_acks(settings, serde, acks_topic, set(everything))
    outcomes: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for r in received:
        outcomes[r.ack.instruction_id].add((r.key, r.ack, r.headers["ce_id"]))
    assert set(outcomes) == set(everything)
    assert all(len(o) == 1 for o in outcomes.values()), outcomes
    assert len(received) == 6  # the repeat was answered again, with the same ack
    for instruction_id, ((key, ack, _),) in ((i, tuple(o)) for i, o in outcomes.items()):
        assert key == everything[instruction_id].ack_key
        assert ack.status is AcknowledgementStatus.RESTRICTED
    assert committed_total(settings, group, ins_topic, 3) == 6


def test_run_partner_answers_until_stopped(
    bootstrap_servers: str,
    unique_topic: Callable[..., str],
    unique_group: Callable[..., str],
    tmp_path: Path,
) -> None:
    settings = admin_settings(bootstrap_servers=bootstrap_servers)
    serde = AvroSerde()
    ins_topic = unique_topic("partner.payment.instructions", partitions=3)
    acks_topic = unique_topic("partner.payment.acks")
    items = [deletion("payment", InstructionAction.ERASE) for _ in range(4)]
    publish(settings, ins_topic, encoded(serde, ins_topic, items))
    stop = threading.Event()
    outcome: list[int] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            run_partner(
                settings,
                "payment",
                delay_ms=5,
                failure_rate=0.0,
                seed=1,
                state_dir=tmp_path,
                stop_event=stop,
                group_id=unique_group("partner.payment"),
                instructions_topic=ins_topic,
                acks_topic=acks_topic,
                log_every=2,
            )
        )
    )
    worker.start()
    try:
        received = read_acks(settings, serde, acks_topic, {i.instruction_id for i in items})
    finally:
        stop.set()
        worker.join(TIMEOUT_S)
    assert not worker.is_alive()
    assert outcome == [0]
    assert {r.ack.instruction_id for r in received} == {i.instruction_id for i in items}
    assert {r.ack.status for r in received} == {AcknowledgementStatus.RESTRICTED}
    reopened = SqliteProcessedInstructions(tmp_path / "partner-payment.sqlite3")
    assert len(reopened) == 4
    reopened.close()


class CrashesBeforeCommit:
    """A real consumer whose process 'dies' before every commit: nothing gets committed."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def subscribe(self, topics: list[str], *args: Any, **kwargs: Any) -> None:
        self.consumer.subscribe(topics, *args, **kwargs)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        return self.consumer.consume(num_messages, timeout)

    def commit(self, *args: Any, **kwargs: Any) -> None:
        """The crash: the acks are out, the offsets are not committed."""

    def close(self) -> None:
        self.consumer.close()


def test_crash_between_ack_and_commit_resends_the_same_acks_without_handling(
    bootstrap_servers: str,
    unique_topic: Callable[..., str],
    unique_group: Callable[..., str],
    tmp_path: Path,
) -> None:
    settings = admin_settings(bootstrap_servers=bootstrap_servers)
    serde = AvroSerde()
    ins_topic = unique_topic("partner.ads.instructions", partitions=3)
    acks_topic = unique_topic("partner.ads.acks")
    group = unique_group("partner.ads")
    items = [instruction("ads", InstructionAction.STOP_PROCESSING) for _ in range(3)]
    publish(settings, ins_topic, encoded(serde, ins_topic, items))
    handler = Recording(simulated_handler("ads"))

    def run_once(consumer: Any) -> None:
        dedup = SqliteProcessedInstructions(tmp_path / "partner-ads.sqlite3")
        with PartnerConsumer(
            settings,
            "ads",
            handler,
            consumer=consumer,
            serde=serde,
            dedup=dedup,
            group_id=group,
            instructions_topic=ins_topic,
            acks_topic=acks_topic,
        ) as partner:
            assert partner.run(max_messages=3, idle_timeout_s=TIMEOUT_S) == 3
        dedup.close()

    run_once(CrashesBeforeCommit(Consumer(settings.consumer_config(group))))
    assert committed_total(settings, group, ins_topic, 3) == 0
    run_once(None)

    assert sorted(handler.calls) == sorted(i.instruction_id for i in items)
    received = read_acks(settings, serde, acks_topic, {i.instruction_id for i in items})
    assert len(received) == 6
    by_id: dict[str, set[tuple[str, PartnerAcknowledgement, bytes]]] = defaultdict(set)
    for r in received:
        by_id[r.ack.instruction_id].add((r.key, r.ack, r.headers["ce_id"]))
    assert sorted(len(v) for v in by_id.values()) == [1, 1, 1]
    assert committed_total(settings, group, ins_topic, 3) == 3


def test_simulated_partner_process_stops_cleanly_on_sigterm(
    bootstrap_servers: str,
    unique_topic: Callable[..., str],
    unique_group: Callable[..., str],
    tmp_path: Path,
) -> None:
    ins_topic = unique_topic("partner.logistics.instructions")
    acks_topic = unique_topic("partner.logistics.acks")
    script = (
        "import logging, sys\n"
        "from dataclasses import replace\n"
        "from consumers.simulated.partner import run_partner\n"
        "from schemas.settings import Settings\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
        "settings = replace(Settings.from_env().as_principal('admin'),\n"
        "    bootstrap_servers=sys.argv[1])\n"
        "sys.exit(run_partner(settings, 'logistics', 0, 0.0, 1,\n"
        "    sys.argv[2], group_id=sys.argv[3], instructions_topic=sys.argv[4],\n"
        "    acks_topic=sys.argv[5]))\n"
    )
    args = [bootstrap_servers, str(tmp_path), unique_group("sim"), ins_topic, acks_topic]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        started = proc.stdout.readline()
        assert "simulated partner logistics started" in started
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "simulated partner logistics stopped: 0 acks (none)" in rest
