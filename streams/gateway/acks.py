"""``POST /v1/acks``: a webhook partner's signed acknowledgement, after it answered ``202``.

The partner names itself (``Consent-Stream-Partner``) and signs the body with its webhook
secret (``Consent-Stream-Signature``, ``schemas.webhook_signing``). ``consumers.
webhook_callback.acknowledgement_from_callback`` verifies it (one ``ReplayGuard`` a
partner, ``streams.gateway.callbacks``) and parses it into the ack the webhook bridge
would have sent; its record (``consumers.partner_sender.ack_record``: topic
``partner.<p>.acks.v1``, key ``ack_key``, CloudEvents headers, ce_id derived from the
instruction id) goes out on the gateway's producer (``DeliveryBridge.send_record``).

Answers: 202 once the broker acknowledged the record; 401 for a partner that may not call
back (unknown, not ``delivery = "webhook"``, no secret) or a missing, forged, stale or
replayed signature, all with one answer (which partners exist is not told; an unknown
partner's signature is checked against a random secret, as long); 400 for a signed body
that is not a callback; 413 above 64 KiB (checked first, for every partner); 429 or 503
with ``Retry-After`` when the ack was not produced, and then the signature is given back
to the guard: the same request may come again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Final

from aiohttp import web

from consumers.partner_sender import PendingAck, ack_record
from consumers.webhook.callback import acknowledgement_from_callback
from consumers.webhook.delivery import MAX_ANSWER_BYTES
from schemas.errors import ConsentStreamError, ContractError, QueueFullError, ValidationError
from schemas.webhook_signing import PARTNER_HEADER, SIGNATURE_HEADER, ReplayGuard, SignatureError
from streams.gateway.bridge import DeliveryBridge
from streams.gateway.callbacks import Callbacks, Claim
from streams.gateway.metrics import GatewayMetrics
from streams.gateway.settings import QUEUE_FULL_RETRY_S, GatewaySettings

__all__ = ["ACKS_PATH", "OUTCOMES", "AckRoute"]

access_log = logging.getLogger("streams.gateway.access")

ACKS_PATH: Final = "/v1/acks"
OUTCOMES: Final = ("accepted", "unauthorized", "invalid", "too_large", "not_sent", "not_delivered")
UNKNOWN: Final = "unknown"
_REFUSED: Final = "a valid Consent-Stream-Partner and Consent-Stream-Signature are required"
_CHALLENGE: Final = {"WWW-Authenticate": 'Consent-Stream-Signature realm="consent-stream-gateway"'}


class _Answer(Exception):
    """An answer; raised for a callback that was not produced. ``why``: the log's alone."""

    def __init__(
        self,
        status: int,
        outcome: str,
        body: dict[str, Any],
        retry_s: int | None = None,
        why: str | None = None,
    ) -> None:
        self.why = why or str(body.get("error"))
        super().__init__(self.why)
        self.status, self.outcome, self.body, self.retry_s = status, outcome, body, retry_s


class AckRoute:
    """``POST /v1/acks``."""

    def __init__(
        self,
        callbacks: Callbacks,
        config: GatewaySettings,
        bridge: DeliveryBridge,
        metrics: GatewayMetrics,
    ) -> None:
        self.callbacks, self.config, self.bridge, self.metrics = callbacks, config, bridge, metrics
        self._secrets = {p: s.reveal() for p, s in callbacks.secrets.items()}
        self._guards = {p: ReplayGuard() for p in self._secrets}
        self._decoy = secrets.token_bytes(32)
        for partner in self._secrets:  # a counter's first increase must show in increase()
            for outcome in OUTCOMES:
                metrics.acks.labels(partner, outcome)

    async def post(self, request: web.Request) -> web.Response:
        named = request.headers.get(PARTNER_HEADER, "")
        partner = named if named in self._secrets else None
        claim = None if partner is None else Claim(self._guards[partner])
        try:
            body = await _read_capped(request, MAX_ANSWER_BYTES)
            pending = self._verify(partner, body, request.headers.get(SIGNATURE_HEADER), claim)
            assert partner is not None  # noqa: S101 - _verify refuses every other
            await self._produce(partner, pending)
        except _Answer as exc:
            if claim is not None and exc.status in (429, 503):
                claim.release()
            return self._answer(partner, exc)
        ack = pending.sent.ack
        accepted = {"status": 202, "instruction_id": ack.instruction_id}
        why = f"instruction {ack.instruction_id} {ack.status.value}"
        return self._answer(partner, _Answer(202, "accepted", accepted, why=why))

    def _verify(
        self, partner: str | None, body: bytes, signature: str | None, claim: Claim | None
    ) -> PendingAck:
        try:
            pending = acknowledgement_from_callback(
                body,
                signature,
                partner=partner or UNKNOWN,
                secrets=self._decoy if partner is None else self._secrets[partner],
                now_s=self.callbacks.clock(),
                guard=claim,
            )
        except SignatureError as exc:
            why = exc.reason if partner else "not a partner that may call back"
            raise _Answer(401, "unauthorized", {"error": _REFUSED}, why=why) from None
        except ValidationError as exc:
            error = {"error": str(exc), "reason": exc.reason, "field": exc.field}
            raise _Answer(400, "invalid", error) from None
        if partner is None:  # the decoy matched: never
            raise _Answer(401, "unauthorized", {"error": _REFUSED}, why="decoy")
        return pending

    async def _produce(self, partner: str, pending: PendingAck) -> None:
        """Send the ack's record and wait (bounded) for the broker's acknowledgement."""
        if self.bridge.queued() >= self.config.queue_max_messages:
            raise _queue_full()
        topic = self.callbacks.topics.acks(partner)
        try:
            record = ack_record(
                pending,
                self.callbacks.serde,
                topic=topic,
                data_schema=self.callbacks.data_schema,
                published_at_ms=int(self.callbacks.clock() * 1000),
            )
            future = self.bridge.send_record(topic, *record)
        except QueueFullError:
            raise _queue_full() from None
        except ContractError as exc:
            raise _Answer(400, "invalid", {"error": str(exc), "reason": exc.reason}) from None
        except ConsentStreamError as exc:
            raise self._not_delivered(str(exc)) from None
        done, _ = await asyncio.wait([future], timeout=self.config.answer_timeout_s)
        if not done:
            future.cancel()
            raise self._not_delivered("no acknowledgement from Kafka in time")
        if (error := future.result()) is not None:
            raise self._not_delivered(str(error))

    def _not_delivered(self, why: str) -> _Answer:
        body = {"error": f"the acknowledgement was not delivered to Kafka ({why})"}
        return _Answer(503, "not_delivered", body, self.config.retry_after_s)

    def _answer(self, partner: str | None, answer: _Answer) -> web.Response:
        label = partner or UNKNOWN
        self.metrics.acks.labels(label, answer.outcome).inc()
        access_log.info("POST %s %d by %s: %s", ACKS_PATH, answer.status, label, answer.why)
        headers = dict(_CHALLENGE) if answer.status == 401 else {}
        if answer.retry_s is not None:
            headers["Retry-After"] = str(answer.retry_s)
        body = {k: v for k, v in answer.body.items() if v is not None}
        return web.json_response(
            {"status": answer.status, **body}, status=answer.status, headers=headers or None
        )


def _queue_full() -> _Answer:
    body = {"error": "the gateway's queue to Kafka is full; nothing was sent"}
    return _Answer(429, "not_sent", body, QUEUE_FULL_RETRY_S)


async def _read_capped(request: web.Request, limit: int) -> bytes:
    """The body; 413 when it is larger than ``limit`` (never read past ``limit + 1``)."""
    error = {"error": f"the body is larger than {limit:,} bytes"}
    too_large = _Answer(413, "too_large", error)
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise too_large
    return b"".join(chunks)
