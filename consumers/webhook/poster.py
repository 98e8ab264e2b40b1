"""POSTing instructions to one webhook partner until each is answered.

``WebhookPoster.answer`` POSTs an instruction (``consumers.webhook.delivery``: the body,
CloudEvents headers, the signature; what an answer means) until the partner answers,
retrying 5xx/408/429/timeouts/connection errors with backoff and jitter (or
``Retry-After``) up to the instruction's ``due_by``, at most ``concurrency`` requests at a
time over one HTTP session. The final acknowledgement (the answer's, FAILED for a final
failure or a missed deadline) is remembered before the request's slot is given back;
a ``202`` has none (the partner calls back). Stop requested while it waits: ``Stopped``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from consumers.dedup import ProcessedInstructions, SentAck
from consumers.partner_results import failed_ack
from consumers.webhook.delivery import (
    MAX_ANSWER_BYTES,
    Accepted,
    Acknowledged,
    Answer,
    Refused,
    Retry,
    RetryPolicy,
    ack_ce_id,
    classify,
    deadline_ack,
    instruction_body,
    request_headers,
    transport_retry,
)
from consumers.webhook.metrics import WebhookMetrics
from schemas.partner import PartnerAcknowledgement, PartnerInstruction
from schemas.secrets import Secret

__all__ = ["Stopped", "WebhookPoster"]

log = logging.getLogger(__name__)


class Stopped(Exception):
    """Stop was requested while an instruction waited: it stays uncommitted."""


class WebhookPoster:
    """One partner's URL; ``async with`` it to open its HTTP session."""

    def __init__(
        self,
        partner: str,
        url: str,
        secret: Secret,
        dedup: ProcessedInstructions,
        metrics: WebhookMetrics,
        *,
        concurrency: int,
        timeout_s: float,
        retry: RetryPolicy,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.partner, self.url = partner, url
        self.metrics = metrics
        self._secret, self._dedup = secret, dedup
        self._concurrency, self._timeout_s = concurrency, timeout_s
        self._retry, self._rng, self._clock = retry, rng, clock
        self._semaphore = asyncio.Semaphore(concurrency)
        self._session: Any = None

    async def __aenter__(self) -> WebhookPoster:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            connector=aiohttp.TCPConnector(limit=self._concurrency),
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._session.close()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def answer(self, instruction: PartnerInstruction, stop: asyncio.Event) -> SentAck | None:
        """POST until answered; the final ack, already remembered (None: 202).

        An answer is remembered before its slot of the concurrency is given back, so after
        a crash at most ``concurrency`` instructions are POSTed again."""
        retries = 0
        last: str | None = None
        signed_at = 0
        while True:
            if stop.is_set():
                raise Stopped
            if self._now_ms() >= instruction.due_by:
                ack = deadline_ack(instruction, self.partner, last, self._now_ms())
                return await self._finish("deadline", ack)
            # every attempt is signed at a later second than the one before, so that no two
            # share a signature (a receiver's replay guard would refuse the second)
            signed_at = max(int(self._clock()), signed_at + 1)
            async with self._semaphore:
                answer = await self._attempt(instruction, signed_at)
                match answer:
                    case Acknowledged(ack=ack):
                        return await self._finish("acknowledged", ack)
                    case Accepted():
                        self.metrics.deliveries.labels(self.partner, "accepted").inc()
                        return None
                    case Refused(reason=reason):
                        log.warning(
                            "instruction %s refused: %s", instruction.instruction_id, reason
                        )
                        ack = failed_ack(instruction, self.partner, reason, self._now_ms())
                        return await self._finish("refused", ack)
                    case Retry(cause=cause, detail=detail, after_s=after):
                        last = detail
                        self.metrics.retries.labels(self.partner, cause).inc()
                        wait = self._retry.wait_s(retries, after, self._rng)
                        retries += 1
            left = max(0.0, (instruction.due_by - self._now_ms()) / 1000)
            await _sleep(min(wait, left), stop)

    async def _finish(self, outcome: str, ack: PartnerAcknowledgement) -> SentAck:
        """Count the outcome and remember the answer (a restart re-sends it, never POSTs)."""
        self.metrics.deliveries.labels(self.partner, outcome).inc()
        if outcome == "deadline":
            self.metrics.deadline_failures.labels(self.partner).inc()
            log.warning("instruction %s: %s", ack.instruction_id, ack.reason)
        sent = SentAck(ack, ack_ce_id(ack.instruction_id))
        return await asyncio.to_thread(self._dedup.remember, sent)

    async def _attempt(self, instruction: PartnerInstruction, signed_at: int) -> Answer:
        import aiohttp

        body = instruction_body(instruction)
        headers = request_headers(instruction, body, self._secret.reveal(), signed_at)
        in_flight = self.metrics.in_flight.labels(self.partner)
        in_flight.inc()
        started = time.perf_counter()
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                answer = await response.content.read(MAX_ANSWER_BYTES + 1)
                status, answer_headers = response.status, response.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return transport_retry(exc)
        finally:
            in_flight.dec()
        self.metrics.round_trip.labels(self.partner).observe(time.perf_counter() - started)
        return classify(
            status,
            answer,
            answer_headers,
            instruction=instruction,
            partner=self.partner,
            now_ms=self._now_ms(),
        )


async def _sleep(seconds: float, stop: asyncio.Event) -> None:
    """Wait ``seconds`` unless stop comes first (then ``Stopped``)."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return
    raise Stopped
