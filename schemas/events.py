"""Inbound events (consent.events.v1) as plain, immutable domain objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

__all__ = [
    "EVENT_TYPES",
    "ConsentChanged",
    "ConsentDecision",
    "ConsentEvent",
    "DataShared",
    "DeletionRequested",
    "DeletionScope",
    "EventType",
    "Payload",
    "PermissionRevoked",
]


class EventType(StrEnum):
    """The `type` of an inbound event (also the CloudEvents ``ce_type``)."""

    CONSENT_CHANGED = "consent.changed"
    PERMISSION_REVOKED = "permission.revoked"
    DELETION_REQUESTED = "deletion.requested"
    DATA_SHARED = "data.shared"


class ConsentDecision(StrEnum):
    GRANTED = "GRANTED"
    WITHDRAWN = "WITHDRAWN"


class DeletionScope(StrEnum):
    ACCOUNT = "ACCOUNT"
    CATEGORIES = "CATEGORIES"


@dataclass(frozen=True, slots=True)
class ConsentChanged:
    purpose: str
    decision: ConsentDecision
    notice_version: str
    method: str


@dataclass(frozen=True, slots=True)
class PermissionRevoked:
    """A system permission on a device, or an authorized app's access."""

    permission: str | None = None
    device_id: str | None = None
    app_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeletionRequested:
    request_id: str
    scope: DeletionScope
    reason: str
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DataShared:
    partner: str
    categories: tuple[str, ...]
    partner_refs: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    transaction_completed_at: int | None = None


Payload = ConsentChanged | PermissionRevoked | DeletionRequested | DataShared

EVENT_TYPES: Final[MappingProxyType[EventType, type]] = MappingProxyType(
    {
        EventType.CONSENT_CHANGED: ConsentChanged,
        EventType.PERMISSION_REVOKED: PermissionRevoked,
        EventType.DELETION_REQUESTED: DeletionRequested,
        EventType.DATA_SHARED: DataShared,
    }
)


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """The envelope: who, when, from where, and the payload of one kind.

    ``occurred_at`` is the event time in ms since the epoch (UTC).
    """

    event_id: str
    subject_id: str
    occurred_at: int
    source: str
    payload: Payload

    @property
    def type(self) -> EventType:
        for event_type, payload_type in EVENT_TYPES.items():
            if isinstance(self.payload, payload_type):
                return event_type
        raise TypeError(f"unknown payload {type(self.payload).__name__}")  # pragma: no cover
