"""What a partner handler returns, and the acknowledgement the SDK builds from it.

A handler returns ``Done()``, ``Restricted(retain_until_ms)`` or ``Rejected(reason)``; an
exception means failure. Everything here is pure: no Kafka, no clock (times are passed in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from schemas.partner import AcknowledgementStatus, PartnerAcknowledgement, PartnerInstruction

__all__ = [
    "MAX_REASON_CHARS",
    "WRONG_PARTNER",
    "Done",
    "Handler",
    "Rejected",
    "Restricted",
    "Result",
    "ack_for_result",
    "failed_ack",
    "failure_reason",
    "truncate_reason",
    "wrong_partner_ack",
]

MAX_REASON_CHARS: Final = 500
WRONG_PARTNER: Final = "wrong partner"
_MAX_LONG: Final = 2**63


@dataclass(frozen=True, slots=True)
class Done:
    """The instruction was carried out."""


@dataclass(frozen=True, slots=True)
class Restricted:
    """The data is kept, no longer processed, until ``retain_until_ms`` (ms since the epoch)."""

    retain_until_ms: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The partner refuses the instruction; ``reason`` says why (no personal data in it)."""

    reason: str


Result = Done | Restricted | Rejected
Handler = Callable[[PartnerInstruction], Result]


def truncate_reason(reason: str) -> str:
    """At most ``MAX_REASON_CHARS`` characters (an ack is not a place for stack traces)."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 1] + "…"


def failure_reason(exc: BaseException) -> str:
    """``ExceptionClass: message``, truncated."""
    message = str(exc)
    name = type(exc).__name__
    return truncate_reason(f"{name}: {message}" if message else name)


def _is_timestamp(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_LONG


def ack_for_result(
    instruction: PartnerInstruction, partner: str, result: Result, completed_at: int
) -> PartnerAcknowledgement:
    """The acknowledgement of a handler's result.

    Anything but a Result (or a retain-until that is not a ms timestamp) raises TypeError,
    which the SDK treats like an exception from the handler.
    """
    retain_until: int | None = None
    reason: str | None = None
    match result:
        case Done():
            status = AcknowledgementStatus.DONE
        case Restricted(retain_until_ms=until) if _is_timestamp(until):
            status, retain_until = AcknowledgementStatus.RESTRICTED, until
        case Rejected(reason=why) if isinstance(why, str):
            status, reason = AcknowledgementStatus.REJECTED, truncate_reason(why)
        case _:
            raise TypeError(
                f"handler returned an invalid {type(result).__name__}; expected Done(), "
                "Restricted(retain_until_ms) or Rejected(reason)"
            )
    return PartnerAcknowledgement(
        instruction_id=instruction.instruction_id,
        partner=partner,
        status=status,
        completed_at=completed_at,
        retain_until=retain_until,
        reason=reason,
    )


def failed_ack(
    instruction: PartnerInstruction, partner: str, reason: str, completed_at: int
) -> PartnerAcknowledgement:
    """FAILED: the handler kept raising; ``reason`` names the last error."""
    return PartnerAcknowledgement(
        instruction_id=instruction.instruction_id,
        partner=partner,
        status=AcknowledgementStatus.FAILED,
        completed_at=completed_at,
        reason=truncate_reason(reason),
    )


def wrong_partner_ack(
    instruction: PartnerInstruction, partner: str, completed_at: int
) -> PartnerAcknowledgement:
    """REJECTED: the instruction names another partner; the handler is never called."""
    return PartnerAcknowledgement(
        instruction_id=instruction.instruction_id,
        partner=partner,
        status=AcknowledgementStatus.REJECTED,
        completed_at=completed_at,
        reason=WRONG_PARTNER,
    )
