"""The PartnerConsumer loop with fake Kafka clients: dedup, retries, commit after delivery."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumers.dedup import InMemoryProcessedInstructions
from consumers.partner import PartnerConsumer
from consumers.partner_results import Done, Result
from schemas.cloudevents import header_map
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.serde import AvroSerde
from schemas.settings import Settings
from streams.outbox import instruction_headers

TOPIC = "partner.logistics.instructions.v1"
ACKS = "partner.logistics.acks.v1"
NOW_S = 1_700_000_000.0
SERDE = AvroSerde()


def instruction(**overrides: Any) -> PartnerInstruction:
    fields: dict[str, Any] = {
        "instruction_id": str(uuid.uuid4()),
        "source_event_id": str(uuid.uuid4()),
        "partner": "logistics",
        "action": InstructionAction.ERASE,
        "subject_ref": "cd" * 32,
        "issued_at": 1_699_999_999_000,
        "due_by": 1_700_600_000_000,
        "ack_key": str(uuid.uuid4()),
    }
    fields.update(overrides)
    return PartnerInstruction(**fields)


@dataclass
class FakeMessage:
    _offset: int
    _value: bytes | None
    _partition: int = 0
    _error: Any = None
    _headers: list[tuple[str, bytes]] | None = None

    def error(self) -> Any:
        return self._error

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes | None:
        return self._value


@dataclass
class FakeConsumer:
    log: list[tuple[str, Any]]
    queue: deque[FakeMessage] = field(default_factory=deque)
    committed: list[tuple[int, int]] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    closed: bool = False
    consume_calls: list[tuple[int, float]] = field(default_factory=list)

    def subscribe(self, topics: list[str], *args: Any, **kwargs: Any) -> None:
        self.subscribed.extend(topics)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        self.consume_calls.append((num_messages, timeout))
        return [self.queue.popleft() for _ in range(min(num_messages, len(self.queue)))]

    def commit(self, *args: Any, message: FakeMessage, asynchronous: bool = True) -> None:
        assert asynchronous is False
        self.committed.append((message.partition(), message.offset() + 1))
        self.log.append(("commit", (message.partition(), message.offset())))

    def close(self) -> None:
        self.closed = True


@dataclass
class Produced:
    topic: str
    key: bytes
    value: bytes
    headers: dict[str, bytes]

    @property
    def ack(self) -> PartnerAcknowledgement:
        return SERDE.decode_as(self.value, PartnerAcknowledgement)


@dataclass
class FakeProducer:
    """Delivers on poll/flush; ``refuse`` decides, per produce call number, to fail one."""

    log: list[tuple[str, Any]]
    refuse: Callable[[int], bool] = lambda _n: False
    produced: list[Produced] = field(default_factory=list)
    queued: list[tuple[int, Produced, Callable[[Any, Any], None]]] = field(default_factory=list)

    def produce(
        self, topic: str, *, value: bytes, key: bytes, headers: Any, on_delivery: Any
    ) -> None:
        item = Produced(topic, key, value, header_map(headers))
        self.queued.append((len(self.produced), item, on_delivery))
        self.produced.append(item)

    def poll(self, timeout: float) -> int:
        queued, self.queued = self.queued, []
        for n, item, callback in queued:
            if self.refuse(n):
                callback("broker said no", None)
            else:
                self.log.append(("delivered", item.ack.instruction_id))
                callback(None, None)
        return len(queued)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


@dataclass
class Rig:
    consumer: FakeConsumer
    producer: FakeProducer
    registry: CollectorRegistry
    log: list[tuple[str, Any]]
    offsets: dict[int, int] = field(default_factory=dict)

    def feed(
        self,
        *values: bytes | None,
        partition: int = 0,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        for value in values:
            offset = self.offsets.get(partition, 0)
            self.consumer.queue.append(FakeMessage(offset, value, partition, None, headers))
            self.offsets[partition] = offset + 1

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"partner": "logistics", **labels}) or 0.0


@pytest.fixture
def rig() -> Rig:
    log: list[tuple[str, Any]] = []
    return Rig(FakeConsumer(log), FakeProducer(log), CollectorRegistry(), log)


def encode(ins: PartnerInstruction) -> bytes:
    return SERDE.encode(ins, TOPIC)


def make(rig: Rig, handler: Callable[[PartnerInstruction], Result], **kw: Any) -> PartnerConsumer:
    return PartnerConsumer(
        Settings(),
        "logistics",
        handler,
        consumer=rig.consumer,
        producer=rig.producer,
        serde=SERDE,
        registry=rig.registry,
        clock=lambda: NOW_S,
        **{"backoff_s": 0.0, **kw},
    )


class CountingHandler:
    def __init__(self, result: Result | Exception | None = None) -> None:
        self.calls: list[str] = []
        self.result = Done() if result is None else result

    def __call__(self, ins: PartnerInstruction) -> Result:
        self.calls.append(ins.instruction_id)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_the_handler_is_told_how_many_records_references_an_instruction_lacks(rig: Rig) -> None:
    lacking = instruction(action=InstructionAction.ERASE, categories=("delivery_details",))
    complete = instruction(action=InstructionAction.ERASE, categories=("delivery_details",))
    # as the worker sends them (streams.outbox): the count in a CloudEvents extension
    rig.feed(
        encode(lacking), headers=instruction_headers(replace(lacking, references_dropped=7), "s")
    )
    rig.feed(encode(complete), headers=instruction_headers(complete, "s"))
    seen: dict[str, int] = {}

    def handler(ins: PartnerInstruction) -> Result:
        seen[ins.instruction_id] = ins.references_dropped
        return Done()

    assert make(rig, handler).run(idle_timeout_s=0) == 2
    assert seen == {lacking.instruction_id: 7, complete.instruction_id: 0}


def test_each_instruction_is_acked_with_its_ack_key_then_committed(rig: Rig) -> None:
    instructions = [instruction() for _ in range(3)]
    rig.feed(*(encode(i) for i in instructions))
    handler = CountingHandler()
    consumer = make(rig, handler)

    assert consumer.run(idle_timeout_s=0) == 3

    assert rig.consumer.subscribed == [TOPIC]
    assert [p.topic for p in rig.producer.produced] == [ACKS] * 3
    assert [p.key.decode() for p in rig.producer.produced] == [i.ack_key for i in instructions]
    acks = [p.ack for p in rig.producer.produced]
    assert [a.instruction_id for a in acks] == [i.instruction_id for i in instructions]
    assert {(a.status, a.completed_at, a.partner) for a in acks} == {
        (AcknowledgementStatus.DONE, int(NOW_S * 1000), "logistics")
    }
    headers = rig.producer.produced[0].headers
    assert headers["ce_type"] == b"partner.acknowledgement"
    assert headers["ce_source"] == b"partner/logistics"
    assert headers["ce_subject"] == instructions[0].subject_ref.encode()
    assert uuid.UUID(headers["ce_id"].decode())
    assert rig.consumer.committed == [(0, 3)]
    assert (
        rig.metric(
            "consent_stream_partner_instructions_handled_total", action="ERASE", status="DONE"
        )
        == 3
    )


def test_a_lone_instruction_is_answered_without_waiting_for_a_full_batch(rig: Rig) -> None:
    """``consume(100, 0.5)`` would hold one instruction for the whole poll timeout: the SDK
    waits for one record, then takes only what has already arrived."""
    rig.feed(*(encode(instruction()) for _ in range(3)))
    consumer = make(rig, CountingHandler(), batch_size=100, poll_timeout_s=0.5)

    assert consumer.run(idle_timeout_s=0) == 3

    assert rig.consumer.consume_calls[:2] == [(1, 0.5), (99, 0)]
    assert rig.consumer.committed == [(0, 3)]  # the three in one batch


def test_repeated_instruction_is_not_handled_again_and_the_same_ack_is_resent(rig: Rig) -> None:
    ins = instruction()
    rig.feed(encode(ins), encode(ins))
    handler = CountingHandler()

    assert make(rig, handler, batch_size=1).run(idle_timeout_s=0) == 2

    assert handler.calls == [ins.instruction_id]
    first, second = rig.producer.produced
    assert first.value == second.value
    assert first.key == second.key == ins.ack_key.encode()
    assert first.headers["ce_id"] == second.headers["ce_id"]
    assert rig.consumer.committed == [(0, 1), (0, 2)]
    assert rig.metric("consent_stream_partner_duplicate_instructions_total") == 1


def test_ack_lost_before_commit_is_resent_after_restart_without_handling(rig: Rig) -> None:
    ins = instruction()
    dedup = InMemoryProcessedInstructions()
    stop = threading.Event()
    handler = CountingHandler()

    def refuse_and_stop(_n: int) -> bool:
        stop.set()  # the process goes down while the ack is on its way
        return True

    rig.producer.refuse = refuse_and_stop
    rig.feed(encode(ins))
    make(rig, handler, dedup=dedup).run(stop)
    assert rig.consumer.committed == []

    restarted = Rig(FakeConsumer(rig.log), FakeProducer(rig.log), CollectorRegistry(), rig.log)
    restarted.feed(encode(ins))
    make(restarted, handler, dedup=dedup).run(idle_timeout_s=0)
    assert handler.calls == [ins.instruction_id]
    assert restarted.producer.produced[0].value == rig.producer.produced[0].value
    assert restarted.consumer.committed == [(0, 1)]


def test_handler_that_always_raises_gets_failed_ack_after_max_attempts(rig: Rig) -> None:
    ins = instruction()
    rig.feed(encode(ins))
    handler = CountingHandler(OSError("carrier API down"))

    make(rig, handler, max_attempts=4).run(idle_timeout_s=0)

    assert handler.calls == [ins.instruction_id] * 4
    (produced,) = rig.producer.produced
    assert produced.ack.status is AcknowledgementStatus.FAILED
    assert produced.ack.reason == "OSError: carrier API down"
    assert rig.consumer.committed == [(0, 1)]
    assert rig.metric("consent_stream_partner_handler_failures_total") == 4
    assert rig.metric("consent_stream_partner_handler_duration_seconds_count") == 4


def test_handler_that_recovers_gets_its_result(rig: Rig) -> None:
    outcomes: list[Result | Exception] = [TimeoutError("slow"), Done()]

    def flaky(_ins: PartnerInstruction) -> Result:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    rig.feed(encode(instruction()))
    make(rig, flaky).run(idle_timeout_s=0)
    assert [p.ack.status for p in rig.producer.produced] == [AcknowledgementStatus.DONE]
    assert outcomes == []


def test_commit_happens_only_after_the_delivery_callback(rig: Rig) -> None:
    instructions = [instruction() for _ in range(4)]
    rig.producer.refuse = lambda n: n in (1, 2)  # two refusals, then sent again
    rig.feed(*(encode(i) for i in instructions[:2]), partition=0)
    rig.feed(*(encode(i) for i in instructions[2:]), partition=1)

    make(rig, CountingHandler()).run(idle_timeout_s=0)

    kinds = [kind for kind, _ in rig.log]
    assert kinds.count("delivered") == 4
    assert kinds.index("commit") > max(i for i, k in enumerate(kinds) if k == "delivered")
    assert sorted(rig.consumer.committed) == [(0, 2), (1, 2)]
    assert len(rig.producer.produced) == 6
    assert rig.metric("consent_stream_partner_ack_delivery_failures_total") == 2


def test_undelivered_ack_blocks_commit_of_its_partition_on_stop(rig: Rig) -> None:
    stop = threading.Event()
    target = instruction()

    def refuse(n: int) -> bool:
        if rig.producer.produced[n].ack.instruction_id == target.instruction_id:
            stop.set()
            return True
        return False

    rig.producer.refuse = refuse
    rig.feed(encode(instruction()), encode(target), encode(instruction()), partition=0)
    rig.feed(encode(instruction()), partition=1)
    make(rig, CountingHandler()).run(stop)
    assert sorted(rig.consumer.committed) == [(0, 1), (1, 1)]


def test_undecodable_record_is_committed_counted_and_not_answered(rig: Rig) -> None:
    rig.feed(b"\xc3\x01garbage", None, b"{not avro}")
    make(rig, CountingHandler()).run(idle_timeout_s=0)
    assert rig.producer.produced == []
    assert rig.consumer.committed == [(0, 3)]
    total = sum(
        rig.metric("consent_stream_partner_undecodable_instructions_total", reason=r)
        for r in ("truncated", "unknown_schema", "schema_mismatch", "ValueError")
    )
    assert total == 3


def test_instruction_for_another_partner_is_rejected_without_the_handler(rig: Rig) -> None:
    rig.feed(encode(instruction(partner="ads")))
    handler = CountingHandler()
    make(rig, handler).run(idle_timeout_s=0)
    assert handler.calls == []
    (ack,) = [p.ack for p in rig.producer.produced]
    assert (ack.status, ack.reason) == (AcknowledgementStatus.REJECTED, "wrong partner")


def test_stop_during_retry_backoff_leaves_the_instruction_unanswered(rig: Rig) -> None:
    stop = threading.Event()

    def failing(_ins: PartnerInstruction) -> Result:
        stop.set()
        raise RuntimeError("shutting down")

    rig.feed(encode(instruction()))
    make(rig, failing, backoff_s=30.0).run(stop)
    assert rig.producer.produced == []
    assert rig.consumer.committed == []


def test_max_messages_and_on_ack(rig: Rig) -> None:
    rig.feed(*(encode(instruction()) for _ in range(5)))
    seen: list[PartnerAcknowledgement] = []
    consumer = make(rig, CountingHandler(), on_ack=seen.append)
    assert consumer.run(max_messages=2) == 2
    assert len(seen) == 2
    assert len(rig.consumer.queue) == 3
    consumer.close()
    assert rig.consumer.closed


def test_consumer_errors_are_skipped_not_committed(rig: Rig) -> None:
    rig.consumer.queue.append(FakeMessage(-1001, None, 0, _error="transport"))
    rig.feed(encode(instruction()))
    assert make(rig, CountingHandler()).run(idle_timeout_s=0) == 1
    assert rig.consumer.committed == [(0, 1)]


def test_stop_ends_the_batch_after_the_instruction_in_hand(rig: Rig) -> None:
    stop = threading.Event()
    calls: list[str] = []

    def stops_after_first(ins: PartnerInstruction) -> Result:
        calls.append(ins.instruction_id)
        stop.set()
        return Done()

    rig.feed(*(encode(instruction()) for _ in range(3)))
    assert make(rig, stops_after_first).run(stop) == 1
    assert len(calls) == 1
    assert len(rig.producer.produced) == 1
    assert rig.consumer.committed == [(0, 1)]
