"""The gateway's aiohttp app on a loopback port with a fake Kafka producer (unit tests).

``FakeKafka`` behaves like ``confluent_kafka.Producer`` as the gateway uses it: ``produce``
queues (``BufferError`` past ``capacity``), ``poll`` (the bridge's thread) reports the
queued records: acknowledged (``sent``: key and value; ``records``: topic, key, value,
headers), failed (``down``: _MSG_TIMED_OUT) or held (``hold``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from producers.publisher import ConsentPublisher
from schemas.policy import load_policy
from schemas.secrets import Secret
from schemas.settings import Settings
from schemas.webhook_signing import signature_header
from streams.gateway.app import build_app
from streams.gateway.bridge import BrokerState, DeliveryBridge
from streams.gateway.callbacks import Callbacks
from streams.gateway.settings import GatewayCaller, GatewaySettings

__all__ = [
    "APP",
    "ORDERS",
    "PARTNER",
    "WEBHOOK_SECRET",
    "Client",
    "FakeKafka",
    "Served",
    "callback_body",
    "callbacks",
    "event",
    "serve",
    "signed",
]

ORDERS = GatewayCaller(
    "orders", Secret("orders-" + "x" * 20), frozenset({"order-service", "checkout"})
)
APP = GatewayCaller("app", Secret("app-" + "y" * 20), frozenset({"app-settings"}))
NOW_MS = int(time.time() * 1000)
PARTNER = "logistics"  # the webhook partner that may call back
WEBHOOK_SECRET = Secret("whsec-logistics-" + "z" * 20)


def callbacks(clock: Any = time.time) -> Callbacks:
    """``PARTNER`` may call back (as ``Callbacks.of`` gives for a webhook partner)."""
    return Callbacks({PARTNER: WEBHOOK_SECRET}, clock=clock)


def callback_body(instruction_id: str | None = None, **fields: Any) -> bytes:
    """A partner's callback (``consumers.webhook.callback``) as JSON bytes."""
    iid = instruction_id or str(uuid.uuid4())
    obj = {"instruction_id": iid, "ack_key": f"key-{iid}", "subject_ref": "dev:" + "ab" * 32}
    return json.dumps({**obj, "status": "DONE", **fields}).encode()


def signed(body: bytes, at_s: float | None = None, secret: Secret = WEBHOOK_SECRET) -> str:
    """A ``Consent-Stream-Signature`` of ``body`` (now, or at ``at_s``)."""
    return signature_header(secret.reveal(), int(time.time() if at_s is None else at_s), body)


def event(subject: str = "m-1", source: str = "order-service", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "consent.changed",
        "subject_id": subject,
        "occurred_at": NOW_MS - 60_000,
        "source": source,
        "payload": {
            "purpose": "marketing_sms",
            "decision": "WITHDRAWN",
            "notice_version": "2023-09-01",
            "method": "sms_unsubscribe",
        },
        **extra,
    }


class _Msg:
    def __init__(self, topic: str, offset: int) -> None:
        self._topic, self._offset = topic, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


@dataclass
class FakeKafka:
    capacity: int = 1000
    down: bool = False
    hold: bool = False
    sent: list[tuple[bytes, bytes]] = field(default_factory=list)
    records: list[tuple[str, bytes, bytes, Any]] = field(default_factory=list)
    _queue: list[tuple[str, bytes, bytes, Any, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def produce(
        self, topic: str, *, value: bytes, key: bytes, headers: Any, on_delivery: Any
    ) -> None:
        with self._lock:
            if len(self._queue) >= self.capacity:
                raise BufferError("Local: Queue full")
            self._queue.append((topic, key, value, headers, on_delivery))

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def poll(self, timeout: float) -> int:
        with self._lock:
            if self.hold:
                ready: list[tuple[str, bytes, bytes, Any, Any]] = []
            else:
                ready, self._queue = self._queue, []
        for topic, key, value, headers, cb in ready:
            if self.down:
                cb(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"), None)
            else:
                self.sent.append((key, value))
                self.records.append((topic, key, value, headers))
                cb(None, _Msg(topic, len(self.sent)))
        if not ready:
            time.sleep(min(timeout, 0.01))
        return len(ready)

    def flush(self, timeout: float) -> int:
        if not self.hold:
            self.poll(0)
        return len(self)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        raise NotImplementedError


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def post(
        self,
        body: Any,
        *,
        token: Secret | None = ORDERS.token,
        content_type: str = "application/json",
    ) -> tuple[int, Any, Any]:
        """(status, JSON answer, headers) of a POST /v1/events."""
        import json

        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.reveal().decode()}"
        async with self.session.post(self.base + "/v1/events", data=data, headers=headers) as r:
            return r.status, await r.json(content_type=None), r.headers

    async def post_ack(
        self, body: Any, *, partner: str | None = None, signature: str | None = None
    ) -> tuple[int, Any, Any]:
        """(status, JSON answer, headers) of a POST /v1/acks (bytes, or an async iterable:
        sent chunked)."""
        headers = {"Content-Type": "application/json"}
        if partner is not None:
            headers["Consent-Stream-Partner"] = partner
        if signature is not None:
            headers["Consent-Stream-Signature"] = signature
        async with self.session.post(self.base + "/v1/acks", data=body, headers=headers) as r:
            return r.status, await r.json(content_type=None), r.headers

    async def get(self, path: str, token: Secret | None = None) -> tuple[int, bytes]:
        headers = {} if token is None else {"Authorization": f"Bearer {token.reveal().decode()}"}
        async with self.session.get(self.base + path, headers=headers) as r:
            return r.status, await r.read()


@dataclass
class Served:
    client: Client
    kafka: FakeKafka
    registry: CollectorRegistry
    broker: BrokerState
    app: Any


@asynccontextmanager
async def serve(
    kafka: FakeKafka | None = None,
    metrics_token: Secret | None = None,
    callbacks: Callbacks | None = None,
    **config: Any,
) -> AsyncIterator[Served]:
    """The gateway on 127.0.0.1:<free port> (a real aiohttp server and client)."""
    from aiohttp import web

    kafka = FakeKafka() if kafka is None else kafka
    settings = Settings(dev_mode=True)
    gateway = replace(GatewaySettings(callers={"orders": ORDERS, "app": APP}), **config)
    publisher = ConsentPublisher(settings, load_policy(), producer=kafka)
    registry = CollectorRegistry()
    broker = BrokerState()
    bridge = DeliveryBridge(publisher, kafka, broker)
    app = build_app(
        gateway,
        publisher,
        bridge,
        callbacks=callbacks,
        metrics_token=metrics_token,
        registry=registry,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, f"http://127.0.0.1:{port}")
            yield Served(client, kafka, registry, broker, app)
    finally:
        await runner.cleanup()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
