"""The webhook bridge loop against a real aiohttp receiver on loopback, with fake Kafka
clients: acks produced, retries, deadline, 202, refusals, per-key order, bounded
concurrency, commits only after effects, remembered answers re-sent without a POST."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from test_partner_sdk_consumer import (
    ACKS,
    SERDE,
    TOPIC,
    FakeConsumer,
    FakeMessage,
    FakeProducer,
)
from test_partner_sdk_consumer import instruction as sdk_instruction

from consumers.dedup import InMemoryProcessedInstructions, SentAck
from consumers.webhook.bridge import WebhookBridge
from consumers.webhook.delivery import RetryPolicy, ack_ce_id
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
    received_instruction,
)
from schemas.secrets import Secret
from schemas.settings import Settings
from schemas.webhook_signing import SIGNATURE_HEADER, ReplayGuard, verify
from streams.outbox import instruction_headers

SECRET = b"whsec-logistics-0123456789"


def instruction(**overrides: Any) -> PartnerInstruction:
    now = int(time.time() * 1000)
    return sdk_instruction(**{"issued_at": now, "due_by": now + 3_600_000, **overrides})


FAST = RetryPolicy(base_s=0.01, cap_s=0.05)


@dataclass
class KeyedMessage(FakeMessage):
    _key: bytes | None = None

    def key(self) -> bytes | None:
        return self._key


@dataclass
class WaitingConsumer(FakeConsumer):
    """Waits its timeout when there is nothing (like a real consumer), not a busy loop."""

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        if not self.queue and timeout > 0:
            time.sleep(min(timeout, 0.02))
        return super().consume(num_messages, timeout)


Handler = Callable[[PartnerInstruction, web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """The partner's endpoint: verifies every request, records it, answers via ``handle``."""

    handle: Handler
    seen: list[str] = field(default_factory=list)
    forged: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    guard: ReplayGuard = field(default_factory=ReplayGuard)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            verify(
                SECRET,
                request.headers.get(SIGNATURE_HEADER),
                body,
                now_s=time.time(),
                guard=self.guard,
            )
        except Exception:
            self.forged += 1
            return web.Response(status=401)
        assert request.headers["ce-id"] == json.loads(body)["instruction_id"]
        ins = received_instruction(SERDE_JSON(body), request.headers)
        self.seen.append(ins.instruction_id)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.handle(ins, request)
        finally:
            self.in_flight -= 1


def SERDE_JSON(body: bytes) -> PartnerInstruction:
    from schemas.contracts import PARTNER_INSTRUCTION
    from schemas.records import from_record

    got = from_record(PARTNER_INSTRUCTION, json.loads(body))
    assert isinstance(got, PartnerInstruction)
    return got


async def done(_ins: PartnerInstruction, _req: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "DONE"})


@dataclass
class Run:
    bridge: WebhookBridge
    consumer: WaitingConsumer
    producer: FakeProducer
    receiver: Receiver
    registry: CollectorRegistry

    def acks(self) -> list[PartnerAcknowledgement]:
        return [p.ack for p in self.producer.produced]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"partner": "logistics", **labels}) or 0.0


async def _serve(receiver: Receiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", receiver)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook"


def bridge_run(
    records: list[tuple[PartnerInstruction, bytes | None]],
    handle: Handler = done,
    *,
    until: Callable[[Run], bool],
    concurrency: int = 8,
    dedup: InMemoryProcessedInstructions | None = None,
    timeout_s: float = 10.0,
    url: str | None = None,
) -> Run:
    async def main() -> Run:
        receiver = Receiver(handle)
        runner, served = await _serve(receiver)
        log: list[tuple[str, Any]] = []
        consumer, producer = WaitingConsumer(log), FakeProducer(log)
        for offset, (ins, key) in enumerate(records):
            value, headers = SERDE.encode(ins, TOPIC), instruction_headers(ins, "s")
            consumer.queue.append(KeyedMessage(offset, value, 0, None, headers, _key=key))
        registry = CollectorRegistry()
        settings = Settings(webhook_concurrency=concurrency, webhook_timeout_s=2)
        bridge = WebhookBridge(
            settings,
            "logistics",
            url or served,
            Secret(SECRET.decode()),
            dedup or InMemoryProcessedInstructions(),
            consumer=consumer,
            producer=producer,
            serde=SERDE,
            registry=registry,
            instructions_topic=TOPIC,
            acks_topic=ACKS,
            retry=FAST,
        )
        run = Run(bridge, consumer, producer, receiver, registry)
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        deadline = time.monotonic() + timeout_s
        while not until(run) and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let commits land
        stop.set()
        await asyncio.wait_for(task, 10)
        await runner.cleanup()
        assert until(run), "condition not reached"
        return run

    return asyncio.run(main())


def n_acks(n: int) -> Callable[[Run], bool]:
    return lambda run: len(run.producer.produced) >= n and not run.producer.queued


def test_every_instruction_is_posted_signed_and_its_ack_produced() -> None:
    records = [(instruction(), f"k{i}".encode()) for i in range(5)]
    run = bridge_run(records, until=n_acks(5))
    ids = [ins.instruction_id for ins, _ in records]
    assert sorted(run.receiver.seen) == sorted(ids)
    assert run.receiver.forged == 0
    assert sorted(a.instruction_id for a in run.acks()) == sorted(ids)
    assert all(a.status is AcknowledgementStatus.DONE for a in run.acks())
    by_id = {ins.instruction_id: ins for ins, _ in records}
    for p in run.producer.produced:
        ins = by_id[p.ack.instruction_id]
        assert p.topic == ACKS
        assert p.key == ins.ack_key.encode()
        assert p.headers["ce_id"] == ack_ce_id(ins.instruction_id).encode()
        assert p.headers["ce_subject"] == ins.subject_ref.encode()
    assert run.consumer.committed[-1] == (0, 5)
    assert run.metric("consent_stream_webhook_deliveries_total", outcome="acknowledged") == 5
    assert run.metric("consent_stream_webhook_round_trip_seconds_count") == 5
    assert run.metric("consent_stream_webhook_requests_in_flight") == 0


def test_a_partner_is_told_how_many_records_references_an_instruction_lacks() -> None:
    lacking = replace(instruction(), references_dropped=4)
    complete = instruction()
    told: dict[str, int] = {}

    async def note(ins: PartnerInstruction, request: web.Request) -> web.StreamResponse:
        told[ins.instruction_id] = int(request.headers.get("ce-referencesdropped", "0"))
        assert ins.references_dropped == told[ins.instruction_id]  # as a partner reads it
        return await done(ins, request)

    bridge_run([(lacking, b"k1"), (complete, b"k2")], note, until=n_acks(2))

    assert told == {lacking.instruction_id: 4, complete.instruction_id: 0}


def test_500_then_recovery_is_retried_and_answered_once() -> None:
    calls: dict[str, int] = {}

    async def flaky(ins: PartnerInstruction, _req: web.Request) -> web.StreamResponse:
        calls[ins.instruction_id] = calls.get(ins.instruction_id, 0) + 1
        if calls[ins.instruction_id] <= 2:
            return web.Response(status=500, text="down")
        return web.json_response({"status": "DONE"})

    records = [(instruction(), f"k{i}".encode()) for i in range(3)]
    run = bridge_run(records, flaky, until=n_acks(3))
    assert set(calls.values()) == {3}
    assert len(run.acks()) == 3
    assert run.metric("consent_stream_webhook_retries_total", cause="server_error") == 6
    assert run.metric("consent_stream_webhook_deliveries_total", outcome="acknowledged") == 3


def test_throttled_honours_retry_after() -> None:
    times: list[float] = []

    async def throttled(ins: PartnerInstruction, _req: web.Request) -> web.StreamResponse:
        times.append(time.monotonic())
        if len(times) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.json_response({"status": "DONE"})

    run = bridge_run([(instruction(), b"k")], throttled, until=n_acks(1))
    assert times[1] - times[0] >= 0.95
    assert run.metric("consent_stream_webhook_retries_total", cause="throttled") == 1


def test_past_the_deadline_it_is_acknowledged_failed() -> None:
    async def down(_ins: PartnerInstruction, _req: web.Request) -> web.StreamResponse:
        return web.Response(status=503)

    now = int(time.time() * 1000)
    late = instruction(due_by=now + 300)
    overdue = instruction(due_by=now - 1)
    run = bridge_run([(late, b"a"), (overdue, b"b")], down, until=n_acks(2))
    acks = {a.instruction_id: a for a in run.acks()}
    assert acks[late.instruction_id].status is AcknowledgementStatus.FAILED
    assert acks[late.instruction_id].reason == (
        "webhook: not delivered before the deadline (last attempt: HTTP 503)"
    )
    assert acks[overdue.instruction_id].reason == (
        "webhook: not delivered before the deadline (never attempted)"
    )
    assert overdue.instruction_id not in run.receiver.seen
    assert run.metric("consent_stream_webhook_deadline_failures_total") == 2
    assert run.metric("consent_stream_webhook_deliveries_total", outcome="deadline") == 2
    assert run.consumer.committed[-1] == (0, 2)


def test_202_is_committed_without_an_ack_and_4xx_is_a_final_failure() -> None:
    async def answers(ins: PartnerInstruction, _req: web.Request) -> web.StreamResponse:
        if ins.action.value == "ERASE":
            return web.Response(status=202)
        return web.Response(status=422, text="unknown waybill")

    later, bad = instruction(), instruction(action=InstructionAction.RESTRICT)
    run = bridge_run(
        [(later, b"a"), (bad, b"b")],
        answers,
        until=lambda r: (
            n_acks(1)(r) and bool(r.consumer.committed) and r.consumer.committed[-1] == (0, 2)
        ),
    )
    (ack,) = run.acks()
    assert ack.instruction_id == bad.instruction_id
    assert ack.status is AcknowledgementStatus.FAILED
    assert ack.reason == "webhook: HTTP 422: unknown waybill"
    assert run.metric("consent_stream_webhook_deliveries_total", outcome="accepted") == 1
    assert run.metric("consent_stream_webhook_deliveries_total", outcome="refused") == 1


def test_same_key_in_order_other_keys_concurrent_and_in_flight_bounded() -> None:
    order: list[tuple[str, str]] = []

    async def slow(ins: PartnerInstruction, _req: web.Request) -> web.StreamResponse:
        order.append(("start", ins.instruction_id))
        await asyncio.sleep(0.1)
        order.append(("end", ins.instruction_id))
        return web.json_response({"status": "DONE"})

    same = [instruction() for _ in range(3)]
    others = [instruction() for _ in range(6)]
    records = [
        (same[0], b"s"),
        *((o, o.instruction_id.encode()) for o in others[:3]),
        (same[1], b"s"),
        *((o, o.instruction_id.encode()) for o in others[3:]),
        (same[2], b"s"),
    ]
    started = time.monotonic()
    run = bridge_run(records, slow, until=n_acks(9), concurrency=3)
    elapsed = time.monotonic() - started
    assert run.receiver.max_in_flight == 3  # bounded, and used
    for a, b in itertools.pairwise(same):
        assert order.index(("end", a.instruction_id)) < order.index(("start", b.instruction_id))
    assert elapsed < 0.1 * 9  # not one at a time
    assert run.consumer.committed[-1] == (0, 9)


def test_commits_stop_before_an_unfinished_instruction() -> None:
    first, second = instruction(), instruction()

    async def hang_first(ins: PartnerInstruction, _req: web.Request) -> web.StreamResponse:
        if ins.instruction_id == first.instruction_id:
            await asyncio.sleep(30)
        return web.json_response({"status": "DONE"})

    run = bridge_run([(first, b"a"), (second, b"b")], hang_first, until=n_acks(1))
    assert [a.instruction_id for a in run.acks()] == [second.instruction_id]
    assert run.consumer.committed == []  # offset 0 is not finished: nothing committed


def test_an_answer_remembered_before_is_re_sent_without_a_post() -> None:
    ins = instruction()
    dedup = InMemoryProcessedInstructions()
    old = PartnerAcknowledgement(ins.instruction_id, "logistics", AcknowledgementStatus.DONE, 5)
    dedup.remember(SentAck(old, ack_ce_id(ins.instruction_id)))
    run = bridge_run([(ins, b"a")], until=n_acks(1), dedup=dedup)
    assert run.receiver.seen == []
    assert run.acks() == [old]


def test_a_partner_that_is_not_there_is_retried_as_a_connection_error() -> None:
    now = int(time.time() * 1000)
    ins = instruction(due_by=now + 400)
    run = bridge_run([(ins, b"a")], until=n_acks(1), url="http://127.0.0.1:9/hook")
    (ack,) = run.acks()
    assert ack.status is AcknowledgementStatus.FAILED
    assert "last attempt: ClientConnectorError" in (ack.reason or "")
    assert run.metric("consent_stream_webhook_retries_total", cause="connection") >= 1
