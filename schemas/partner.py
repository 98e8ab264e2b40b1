"""Partner instructions and acknowledgements as plain, immutable domain objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "AcknowledgementStatus",
    "InstructionAction",
    "PartnerAcknowledgement",
    "PartnerInstruction",
    "acks_topic",
    "instructions_topic",
]


class InstructionAction(StrEnum):
    STOP_PROCESSING = "STOP_PROCESSING"
    RESUME_PROCESSING = "RESUME_PROCESSING"
    ERASE = "ERASE"
    RESTRICT = "RESTRICT"
    REVOKE_ACCESS = "REVOKE_ACCESS"


class AcknowledgementStatus(StrEnum):
    DONE = "DONE"
    RESTRICTED = "RESTRICTED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"


def instructions_topic(partner: str) -> str:
    return f"partner.{partner}.instructions.v1"


def acks_topic(partner: str) -> str:
    return f"partner.{partner}.acks.v1"


@dataclass(frozen=True, slots=True)
class PartnerInstruction:
    """What one partner must do. Times are ms since the epoch (UTC)."""

    instruction_id: str
    source_event_id: str
    partner: str
    action: InstructionAction
    subject_ref: str
    issued_at: int
    due_by: int
    ack_key: str
    request_id: str | None = None
    purposes: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    partner_refs: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    subject_id: str | None = None
    app_id: str | None = None
    retain_until: int | None = None


@dataclass(frozen=True, slots=True)
class PartnerAcknowledgement:
    """A partner's answer to one instruction."""

    instruction_id: str
    partner: str
    status: AcknowledgementStatus
    completed_at: int
    retain_until: int | None = None
    reason: str | None = None
