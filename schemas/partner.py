"""Partner instructions and acknowledgements as plain, immutable domain objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from schemas.cloudevents import REFERENCES_DROPPED, references_dropped

__all__ = [
    "AcknowledgementStatus",
    "InstructionAction",
    "PartnerAcknowledgement",
    "PartnerInstruction",
    "acks_topic",
    "instruction_extensions",
    "instructions_topic",
    "received_instruction",
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
    references_dropped: int = 0
    """ERASE, RESTRICT: how many data.shared records' references ``partner_refs`` lacks
    (they did not fit the subject's state); find that data by ``subject_ref`` and
    ``categories``. Not a field of the Avro record (readers of the contract as it was keep
    reading it): it travels as the CloudEvents extension ``referencesdropped``
    (``instruction_extensions``, ``received_instruction``)."""


def instruction_extensions(instruction: PartnerInstruction) -> dict[str, str]:
    """The CloudEvents extension attributes ``instruction`` is sent with."""
    n = instruction.references_dropped
    return {REFERENCES_DROPPED: str(n)} if n else {}


def received_instruction(
    instruction: PartnerInstruction, headers: Mapping[str, bytes | str]
) -> PartnerInstruction:
    """``instruction`` as decoded from a record's value, with what its headers add."""
    n = references_dropped(headers)
    return replace(instruction, references_dropped=n) if n else instruction


@dataclass(frozen=True, slots=True)
class PartnerAcknowledgement:
    """A partner's answer to one instruction."""

    instruction_id: str
    partner: str
    status: AcknowledgementStatus
    completed_at: int
    retain_until: int | None = None
    reason: str | None = None
