"""``consent-stream gateway``: the HTTP routes (aiohttp) and the server's life.

``POST /v1/events`` (bearer token), ``POST /v1/acks`` (a webhook partner's signed
callback, ``streams.gateway.acks``), ``GET /v1/openapi.json``, ``GET /healthz``,
``GET /metrics`` (``CONSENT_STREAM_METRICS_TOKEN`` when one is set). The answer to a post
comes once every accepted event has its delivery report: 202 only if the broker
acknowledged all of them (``streams.gateway.batch`` decides the status).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from producers.publisher import ConsentPublisher, make_producer
from schemas.errors import ConfigurationError, ConsentStreamError, ContractError, QueueFullError
from schemas.policy import Policy
from schemas.secrets import Secret
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.stop_signals import stop_on_signals
from streams.gateway.acks import ACKS_PATH, AckRoute
from streams.gateway.auth import Callers, optional_token
from streams.gateway.batch import (
    Item,
    Outcome,
    RequestError,
    answer_body,
    answer_status,
    check_items,
    parse_body,
)
from streams.gateway.bridge import BrokerState, DeliveryBridge
from streams.gateway.callbacks import Callbacks
from streams.gateway.metrics import GatewayMetrics, gateway_metrics
from streams.gateway.settings import QUEUE_FULL_RETRY_S, GatewaySettings

__all__ = ["EVENTS_PATH", "OPENAPI_PATH", "build_app", "openapi_document", "run_gateway"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("streams.gateway.access")

EVENTS_PATH: Final = "/v1/events"
OPENAPI_PATH: Final = "/v1/openapi.json"
_BEARER: Final = {"WWW-Authenticate": 'Bearer realm="consent-stream-gateway"'}


def openapi_document() -> bytes:
    """The OpenAPI 3.1 document (``docs/gateway-openapi.json`` is this file)."""
    return resources.files("streams.gateway").joinpath("openapi.json").read_bytes()


class _Events:
    """``POST /v1/events``."""

    def __init__(
        self,
        config: GatewaySettings,
        publisher: ConsentPublisher,
        bridge: DeliveryBridge,
        metrics: GatewayMetrics,
    ) -> None:
        self.config, self.publisher, self.bridge, self.metrics = config, publisher, bridge, metrics
        self.callers = Callers(config.callers)

    async def post(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        caller = self.callers.caller(request.headers.get("Authorization"))
        if caller is None:
            return self._answer(started, "-", 401, "a valid bearer token is required", _BEARER)
        try:
            items = check_items(
                parse_body(await self._read(request), request.content_type, self.config.max_items),
                caller.sources,
                self.publisher.prepare,
            )
            await self._send(items)
        except RequestError as exc:
            headers = {"Retry-After": str(QUEUE_FULL_RETRY_S)} if exc.status == 429 else None
            return self._answer(started, caller.name, exc.status, str(exc), headers)
        status = answer_status(items)
        for item in items:
            self._count(item, caller.sources)
        retry = {429: QUEUE_FULL_RETRY_S, 503: self.config.retry_after_s}.get(status)
        body = answer_body(status, items)
        access_log.info(
            "POST %s %d by %s: %d accepted, %d rejected, %d not delivered, %d not sent",
            EVENTS_PATH,
            status,
            caller.name,
            *(body[o.value] for o in Outcome),
        )
        headers = None if retry is None else {"Retry-After": str(retry)}
        return self._respond(started, web.json_response(body, status=status, headers=headers))

    async def _read(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(413, f"the body is larger than {limit:,} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(413, f"the body is larger than {limit:,} bytes") from None

    async def _send(self, items: list[Item]) -> None:
        """Send the accepted items and wait (bounded) for their delivery reports."""
        to_send = [i for i in items if i.outcome is Outcome.ACCEPTED]
        if self.bridge.queued() + len(to_send) > self.config.queue_max_messages:
            raise RequestError(429, "the gateway's queue to Kafka is full; nothing was sent")
        pending: list[tuple[Item, asyncio.Future[Any]]] = []
        for n, item in enumerate(to_send):
            assert item.event is not None and item.prepared is not None  # noqa: S101
            try:
                pending.append((item, self.bridge.send(item.event, item.prepared)))
            except QueueFullError as exc:
                for rest in to_send[n:]:
                    rest.fail(Outcome.NOT_SENT, exc.reason, str(exc))
                break
            except ContractError as exc:  # refused by the client library (size)
                item.fail(Outcome.REJECTED, exc.reason, str(exc))
            except ConsentStreamError as exc:
                item.fail(Outcome.NOT_DELIVERED, exc.reason, str(exc))
        if not pending:
            return
        await asyncio.wait([f for _, f in pending], timeout=self.config.answer_timeout_s)
        for item, future in pending:
            if not future.done():
                future.cancel()
                item.fail(Outcome.NOT_DELIVERED, "timeout", "no acknowledgement from Kafka in time")
            elif (error := future.result()) is not None:
                item.fail(Outcome.NOT_DELIVERED, error.reason, str(error))

    def _count(self, item: Item, sources: frozenset[str]) -> None:
        source = item.event.source if item.event and item.event.source in sources else "unknown"
        self.metrics.events.labels(source, item.outcome.value).inc()
        if item.outcome is Outcome.REJECTED:
            self.metrics.rejected.labels(item.reason or "invalid").inc()

    def _answer(
        self, started: float, caller: str, status: int, error: str, headers: Any = None
    ) -> web.Response:
        access_log.info("POST %s %d by %s: %s", EVENTS_PATH, status, caller, error)
        body = {"status": status, "error": error}
        return self._respond(started, web.json_response(body, status=status, headers=headers))

    def _respond(self, started: float, response: web.Response) -> web.Response:
        self.metrics.requests.labels(str(response.status)).inc()
        self.metrics.request_duration.observe(time.monotonic() - started)
        return response


def build_app(
    config: GatewaySettings,
    publisher: ConsentPublisher,
    bridge: DeliveryBridge,
    *,
    callbacks: Callbacks | None = None,
    metrics_token: Secret | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The gateway's aiohttp application; the bridge starts and stops with it. Without
    ``callbacks`` no partner may call back (every ``POST /v1/acks`` is 401)."""
    registry = registry or CollectorRegistry()
    meters = gateway_metrics(registry)
    events = _Events(config, publisher, bridge, meters)
    acks = AckRoute(callbacks or Callbacks(), config, bridge, meters)
    document = json.loads(openapi_document())

    async def healthz(request: web.Request) -> web.Response:
        state = bridge.broker.value
        body = {"status": "degraded" if state == "down" else "ok", "broker": state}
        return web.json_response(body, status=503 if state == "down" else 200)

    async def metrics(request: web.Request) -> web.Response:
        if not optional_token(metrics_token, request.headers.get("Authorization")):
            body = {"status": 401, "error": "a valid bearer token is required"}
            return web.json_response(body, status=401, headers=_BEARER)
        content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return web.Response(body=generate_latest(registry), content_type=content_type)

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    async def on_startup(app: web.Application) -> None:
        bridge.start(asyncio.get_running_loop())

    async def on_cleanup(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, bridge.close)

    app = web.Application(client_max_size=config.max_body_bytes)
    app.router.add_post(EVENTS_PATH, events.post)
    app.router.add_post(ACKS_PATH, acks.post)
    app.router.add_get(OPENAPI_PATH, openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def run_gateway(settings: Settings, config: GatewaySettings, policy: Policy) -> int:
    """Serve until SIGTERM or SIGINT; the producer is flushed before the process ends."""
    if not config.callers:
        raise ConfigurationError(
            "CONSENT_STREAM_GATEWAY_TOKENS names no caller (name=token:source|source,...)"
        )
    broker = BrokerState()
    producer: Any = make_producer(  # a confluent_kafka.Producer: len() is its queue
        settings, **config.producer_overrides(), error_cb=broker.error_cb
    )
    serde = AvroSerde(settings.schema_registry(), settings.max_record_bytes)
    publisher = ConsentPublisher(settings, policy, producer=producer, serde=serde)
    publisher.check_topic()
    bridge = DeliveryBridge(publisher, producer, broker)
    callbacks = Callbacks.of(settings, policy, serde)
    app = build_app(
        config, publisher, bridge, callbacks=callbacks, metrics_token=settings.metrics_token
    )
    log.info(
        "callbacks (POST %s) from: %s", ACKS_PATH, ", ".join(sorted(callbacks.secrets)) or "none"
    )
    asyncio.run(_serve(app, config, settings))
    return 0


async def _serve(app: web.Application, config: GatewaySettings, settings: Settings) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.bind, config.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigurationError(
            f"cannot listen on {config.bind}:{config.port}: {exc.strerror}"
        ) from exc
    log.info(
        "gateway listening on http://%s:%d%s for %d callers, publishing to %s as %s",
        config.bind,
        config.port,
        EVENTS_PATH,
        len(config.callers),
        settings.topics.events,
        settings.sasl_username or "(no SASL login)",
    )
    stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping")
        await runner.cleanup()
