"""The simulated webhook partner's callbacks: an acknowledgement sent later to the gateway.

After answering an instruction ``202``, the partner POSTs its acknowledgement to the
gateway's ``POST /v1/acks`` (docs/webhooks.md, "Callback after 202"): the ack's JSON form
plus the instruction's ``ack_key`` and ``subject_ref``, signed under the partner's secret.
A ``5xx``, ``429`` or a connection error is retried, each attempt signed anew at a later
second (the gateway refuses a signature it has seen); any other refusal is final (logged
and counted ``failed``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Final

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from schemas.jsonform import ack_to_json
from schemas.partner import PartnerAcknowledgement, PartnerInstruction
from schemas.webhook_signing import PARTNER_HEADER, SIGNATURE_HEADER, signature_header

__all__ = ["CallbackSender", "callback_body"]

log = logging.getLogger(__name__)

CALLBACK_DELAY_S: Final = 0.05  # the partner "carries it out" after answering 202
_FIRST_WAIT_S: Final = 1.0  # a later second: a new signature
_MAX_WAIT_S: Final = 10.0
_GIVE_UP_S: Final = 600.0
_CLOSE_S: Final = 5.0


def callback_body(instruction: PartnerInstruction, ack: PartnerAcknowledgement) -> bytes:
    obj = {
        **ack_to_json(ack),
        "ack_key": instruction.ack_key,
        "subject_ref": instruction.subject_ref,
    }
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class CallbackSender:
    """Sends each scheduled callback until the gateway took it (or refused it finally)."""

    def __init__(
        self, partner: str, callback_url: str | None, secret: bytes, registry: CollectorRegistry
    ) -> None:
        self.partner, self.callback_url, self.secret = partner, callback_url, secret
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None
        self.outcomes = Counter(
            "consent_stream_simulated_webhook_callbacks_total",
            "Callback attempts of the simulated webhook partner, by outcome "
            "(acknowledged, retried, failed).",
            ["partner", "outcome"],
            registry=registry,
        )

    def schedule(self, instruction: PartnerInstruction, ack: PartnerAcknowledgement) -> None:
        task = asyncio.get_running_loop().create_task(self._send(instruction, ack))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, instruction: PartnerInstruction, ack: PartnerAcknowledgement) -> None:
        await asyncio.sleep(CALLBACK_DELAY_S)
        body = callback_body(instruction, ack)
        wait_s, give_up = _FIRST_WAIT_S, time.monotonic() + _GIVE_UP_S
        while True:
            status, detail = await self._post(body)
            if 200 <= status < 300:
                self.outcomes.labels(self.partner, "acknowledged").inc()
                return
            final = status not in (0, 429) and status < 500
            if final or time.monotonic() > give_up:
                self.outcomes.labels(self.partner, "failed").inc()
                log.error("callback for instruction %s refused: %s", ack.instruction_id, detail)
                return
            self.outcomes.labels(self.partner, "retried").inc()
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, _MAX_WAIT_S)

    async def _post(self, body: bytes) -> tuple[int, str]:
        """(status, detail) of one signed attempt; status 0 when nothing answered."""
        assert self.callback_url is not None  # noqa: S101 - checked by the options
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        headers = {
            "Content-Type": "application/json",
            PARTNER_HEADER: self.partner,
            SIGNATURE_HEADER: signature_header(self.secret, int(time.time()), body),
        }
        try:
            async with self.session.post(self.callback_url, data=body, headers=headers) as resp:
                text = await resp.text()
                return resp.status, f"HTTP {resp.status}: {text[:200]}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            return 0, f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        """Give the callbacks still due a few seconds, then stop."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=_CLOSE_S)
        for task in set(self.tasks):
            task.cancel()
        if self.session is not None:
            await self.session.close()
