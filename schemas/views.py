"""Published state: consent per subject (consent.state.v1) and deletion requests
(consent.requests.v1), as plain, immutable domain objects."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas.events import DeletionScope

__all__ = [
    "FINAL_REQUEST_STATES",
    "ConsentState",
    "OutcomeStatus",
    "PartnerOutcome",
    "PermissionRevocation",
    "PurposeDecision",
    "RequestState",
    "RequestStatus",
]


class RequestState(StrEnum):
    RECEIVED = "RECEIVED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_RESTRICTIONS = "COMPLETED_WITH_RESTRICTIONS"
    FAILED = "FAILED"


FINAL_REQUEST_STATES = frozenset(
    {RequestState.COMPLETED, RequestState.COMPLETED_WITH_RESTRICTIONS, RequestState.FAILED}
)


class OutcomeStatus(StrEnum):
    PENDING = "PENDING"
    DONE = "DONE"
    RESTRICTED = "RESTRICTED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class PurposeDecision:
    purpose: str
    granted: bool
    event_time: int
    notice_version: str


@dataclass(frozen=True, slots=True)
class PermissionRevocation:
    event_time: int
    permission: str | None = None
    device_id: str | None = None
    app_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentState:
    subject_id: str
    version: int
    updated_at: int
    account_closed_at: int | None = None
    purposes: tuple[PurposeDecision, ...] = ()
    permissions: tuple[PermissionRevocation, ...] = ()


@dataclass(frozen=True, slots=True)
class PartnerOutcome:
    partner: str
    instruction_id: str
    action: str
    issued_at: int
    due_by: int
    status: OutcomeStatus = OutcomeStatus.PENDING
    categories: tuple[str, ...] = ()
    refs_digest: str = ""
    acknowledged_at: int | None = None
    retain_until: int | None = None
    reason: str | None = None
    overdue: bool = False
    follows_instruction_id: str | None = None
    refs_dropped: int = 0
    """data.shared records of this partner and categories whose references were not kept
    (the subject's state was full), so are not in the instruction."""


@dataclass(frozen=True, slots=True)
class RequestStatus:
    request_id: str
    subject_digest: str
    scope: DeletionScope
    status: RequestState
    requested_at: int
    received_at: int
    due_by: int
    updated_at: int
    categories: tuple[str, ...] = ()
    overdue: bool = False
    store_erased_at: int | None = None
    completed_at: int | None = None
    partners: tuple[PartnerOutcome, ...] = ()
