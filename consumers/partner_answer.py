"""The answer to one instruction record: decode, remembered answer or handler, store it."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from consumers.dedup import ProcessedInstructions, SentAck
from consumers.partner_delivery import instruction_of
from consumers.partner_metrics import PartnerMetrics
from consumers.partner_results import (
    Handler,
    ack_for_result,
    failed_ack,
    failure_reason,
    wrong_partner_ack,
)
from consumers.partner_sender import PendingAck
from schemas.partner import PartnerAcknowledgement, PartnerInstruction
from schemas.serde import AvroSerde

__all__ = ["InstructionAnswerer", "StopRequested"]

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """Stop was requested while waiting to retry the handler: leave the instruction."""


class InstructionAnswerer:
    """Turns a record into the ack to send (or None for an undecodable record).

    The answer is stored in the processed-instructions store *before* it is sent, so an
    ack lost in a crash is re-sent unchanged and the handler is not called again.
    """

    def __init__(
        self,
        partner: str,
        handler: Handler,
        *,
        serde: AvroSerde,
        dedup: ProcessedInstructions,
        metrics: PartnerMetrics,
        waits: tuple[float, ...],
        now_ms: Callable[[], int],
    ) -> None:
        self._partner = partner
        self._handler = handler
        self._serde = serde
        self._dedup = dedup
        self._metrics = metrics
        self._waits = waits
        self._now_ms = now_ms

    def answer(self, record: Any, stop: threading.Event) -> PendingAck | None:
        """The ack for ``record``; raises StopRequested if ``stop`` is set during a retry."""
        instruction = self._decode(record)
        if instruction is None:
            return None
        sent = self._dedup.get(instruction.instruction_id)
        if sent is not None:
            self._metrics.duplicates.labels(self._partner).inc()
            log.info(
                "instruction %s repeated: re-sending its %s ack",
                instruction.instruction_id,
                sent.ack.status.value,
            )
        else:
            ack = self._decide(instruction, stop)
            sent = self._dedup.remember(SentAck(ack, str(uuid.uuid4())))
            self._metrics.instructions.labels(
                self._partner, instruction.action.value, sent.ack.status.value
            ).inc()
        return PendingAck(sent, instruction.ack_key, instruction.subject_ref)

    def _decode(self, record: Any) -> PartnerInstruction | None:
        try:
            return instruction_of(self._serde, record)
        except Exception as exc:
            reason = str(getattr(exc, "reason", type(exc).__name__))
            self._metrics.undecodable.labels(self._partner, reason).inc()
            log.error(  # never the payload: it may hold personal data
                "undecodable record at %s[%s]@%s skipped (%s)",
                record.topic(),
                record.partition(),
                record.offset(),
                reason,
            )
            return None

    def _decide(
        self, instruction: PartnerInstruction, stop: threading.Event
    ) -> PartnerAcknowledgement:
        if instruction.partner != self._partner:
            log.warning("instruction %s is for another partner", instruction.instruction_id)
            return wrong_partner_ack(instruction, self._partner, self._now_ms())
        last: Exception | None = None
        attempts = len(self._waits) + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(instruction)
            except Exception as exc:
                last = exc
                self._metrics.handler_failures.labels(self._partner).inc()
                log.warning(
                    "handler failed on instruction %s (attempt %d of %d): %s",
                    instruction.instruction_id,
                    attempt,
                    attempts,
                    type(exc).__name__,
                )
            if attempt < attempts and stop.wait(self._waits[attempt - 1]):
                raise StopRequested
        assert last is not None  # noqa: S101 - the loop ran at least once and only failed
        return failed_ack(instruction, self._partner, failure_reason(last), self._now_ms())

    def _attempt(self, instruction: PartnerInstruction) -> PartnerAcknowledgement:
        started = time.perf_counter()
        try:
            result = self._handler(instruction)
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.handler_duration.labels(self._partner).observe(elapsed)
        return ack_for_result(instruction, self._partner, result, self._now_ms())
