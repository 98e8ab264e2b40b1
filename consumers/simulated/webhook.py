"""A simulated webhook partner: the receiving end of ``consent-stream webhook-bridge``.

``consent-stream partner --name P`` runs this when the policy delivers P by webhook: an
HTTP server where P's ``webhook_url`` points (a loopback ``http`` URL) that answers like
the simulated Kafka partner (``consumers.simulated.partner.simulated_handler``) and like a real
receiver must (docs/webhooks.md):

- a delivery whose ``Consent-Stream-Signature`` is missing, wrong, stale or replayed: 401;
- a repeated instruction (same ``ce-id``): the answer it got the first time;
- a share ``failure_rate`` of the attempts: ``503`` (the bridge retries with backoff);
- a share ``callback_fraction`` of the instructions: ``202``, then the acknowledgement a
  moment later as a signed callback to the gateway's ``POST /v1/acks``;
- the others: ``200`` with the acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, start_http_server

from consumers.dedup import MAX_IN_MEMORY, FirstAnswers
from consumers.partner_results import ack_for_result
from consumers.simulated.callback import CallbackSender
from consumers.simulated.partner import RETENTION_DAYS, simulated_handler
from schemas.errors import ValidationError
from schemas.jsonform import ack_to_json, instruction_from_json
from schemas.partner import PartnerAcknowledgement, PartnerInstruction
from schemas.stop_signals import stop_on_signals
from schemas.webhook_signing import SIGNATURE_HEADER, ReplayGuard, SignatureError, verify

__all__ = ["ANSWERS", "WebhookPartnerOptions", "build_receiver", "run_webhook_partner"]

log = logging.getLogger(__name__)

ANSWERS: Final = ("acknowledged", "accepted", "unavailable", "unauthorized", "malformed")
"""``acknowledged``: 200 with the ack; ``accepted``: 202, callback later; ``unavailable``:
503 (simulated outage); ``unauthorized``: 401; ``malformed``: 400."""
_JSON: Final = "application/json"


@dataclass(frozen=True)
class WebhookPartnerOptions:
    partner: str
    url: str  # where the bridge POSTs (the policy's webhook_url)
    secret: bytes
    delay_ms: int = 0
    failure_rate: float = 0.0
    callback_fraction: float = 0.0
    callback_url: str | None = None  # the gateway's POST /v1/acks
    seed: int | None = None
    retention_days: int = RETENTION_DAYS

    def check(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"a simulated partner listens on loopback http only, not {self.url}")
        for name in ("failure_rate", "callback_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.callback_fraction > 0 and not self.callback_url:
            raise ValueError("callback_fraction > 0 needs a callback_url (the gateway)")


class _Receiver:
    def __init__(self, options: WebhookPartnerOptions, registry: CollectorRegistry) -> None:
        self.options = options
        self.rng = random.Random(options.seed)  # noqa: S311 - simulation, not security
        self.handler = simulated_handler(
            options.partner, rng=self.rng, retention_days=options.retention_days
        )
        self.guard = ReplayGuard()
        # ce-id -> the first final answer, for the most recent ce-ids
        self.given: FirstAnswers[str, tuple[int, bytes]] = FirstAnswers(MAX_IN_MEMORY)
        self.answers = Counter(
            "consent_stream_simulated_webhook_answers_total",
            "Answers of the simulated webhook partner, by kind.",
            ["partner", "answer"],
            registry=registry,
        )
        self.callbacks = CallbackSender(
            options.partner, options.callback_url, options.secret, registry
        )

    async def deliver(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(
                self.options.secret,
                request.headers.get(SIGNATURE_HEADER),
                body,
                now_s=time.time(),
                guard=self.guard,
            )
        except SignatureError as exc:
            return self._answer("unauthorized", 401, {"error": str(exc)})
        ce_id = request.headers.get("ce-id", "")
        given = self.given.get(ce_id)
        if given is not None:
            status, payload = given
            return web.Response(status=status, body=payload, content_type=_JSON)
        try:
            instruction = instruction_from_json(json.loads(body))
        except (ValueError, ValidationError) as exc:
            return self._answer("malformed", 400, {"error": str(exc)})
        if self.options.delay_ms > 0:
            await asyncio.sleep(self.options.delay_ms / 1000)
        if self.options.failure_rate and self.rng.random() < self.options.failure_rate:
            return self._answer("unavailable", 503, {"error": "simulated outage"})
        return self._final(ce_id, instruction)

    def _final(self, ce_id: str, instruction: PartnerInstruction) -> web.Response:
        ack = self._ack(instruction)
        if self.options.callback_fraction and self.rng.random() < self.options.callback_fraction:
            self.callbacks.schedule(instruction, ack)
            answer, status, obj = "accepted", 202, {"status": "accepted"}
        else:
            answer, status, obj = "acknowledged", 200, ack_to_json(ack)
        response = self._answer(answer, status, obj)
        assert isinstance(response.body, bytes)  # noqa: S101 - json_response's body
        self.given.keep(ce_id, (status, response.body))
        return response

    def _ack(self, instruction: PartnerInstruction) -> PartnerAcknowledgement:
        result = self.handler(instruction)
        return ack_for_result(instruction, self.options.partner, result, int(time.time() * 1000))

    def _answer(self, answer: str, status: int, obj: object) -> web.Response:
        self.answers.labels(self.options.partner, answer).inc()
        return web.json_response(obj, status=status)


def build_receiver(
    options: WebhookPartnerOptions, registry: CollectorRegistry
) -> tuple[web.Application, CallbackSender]:
    """The receiver's application (POST on the webhook URL's path) and its callbacks."""
    options.check()
    receiver = _Receiver(options, registry)
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(urlsplit(options.url).path or "/", receiver.deliver)
    return app, receiver.callbacks


def run_webhook_partner(options: WebhookPartnerOptions, metrics_port: int | None = None) -> int:
    """Serve until SIGTERM/SIGINT; callbacks still due get a few seconds. Returns 0."""
    registry = CollectorRegistry()
    app, callbacks = build_receiver(options, registry)
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    asyncio.run(_serve(app, callbacks, options))
    return 0


async def _serve(
    app: web.Application, callbacks: CallbackSender, options: WebhookPartnerOptions
) -> None:
    parts = urlsplit(options.url)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname, parts.port or 80).start()
    log.info(
        "simulated webhook partner %s listening on %s (delay %d ms, failure rate %.2f, "
        "callbacks %.2f)",
        options.partner,
        options.url,
        options.delay_ms,
        options.failure_rate,
        options.callback_fraction,
    )
    stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await callbacks.close()
