"""Validation of inbound events against the field rules and the policy.

Used by the publisher (a clear exception, nothing sent) and by the stream processor
(a dead-letter record with the reason). Pure functions; no I/O.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from schemas.errors import NonWithdrawableError, UnknownPurposeError, ValidationError
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    PermissionRevoked,
)
from schemas.policy import Policy
from schemas.records import CANONICAL_UUID

__all__ = ["MAX_ID_LENGTH", "validate_event", "validate_subject_id"]

MAX_ID_LENGTH: Final = 256
_EARLIEST_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
_MAX_FUTURE_MS: Final = 86_400_000  # one day of clock skew
_CONTROL_CHARACTER: Final = re.compile("[\x00-\x1f\x7f]")


def _uuid(value: str, field: str) -> None:
    if isinstance(value, str) and CANONICAL_UUID.fullmatch(value):
        return  # the usual form, checked without building a UUID
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise ValidationError(f"{field} is not a UUID: {value!r}", field=field) from None


def _text(value: str | None, field: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{field} is missing or empty", field=field)
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"{field} longer than {MAX_ID_LENGTH} characters", field=field)


def _consent(p: ConsentChanged, policy: Policy) -> None:
    purpose = policy.purposes.get(p.purpose)
    if purpose is None:
        raise UnknownPurposeError(f"unknown purpose {p.purpose!r}", field="payload.purpose")
    if p.decision is ConsentDecision.WITHDRAWN and not purpose.withdrawable:
        raise NonWithdrawableError(
            f"purpose {p.purpose!r} is needed for basic functions and cannot be withdrawn",
            field="payload.purpose",
        )
    _text(p.notice_version, "payload.notice_version")
    _text(p.method, "payload.method")


def _permission(p: PermissionRevoked, policy: Policy) -> None:
    if p.app_id is not None:
        if p.permission is not None or p.device_id is not None:
            raise ValidationError(
                "give either app_id or permission with device_id, not both",
                field="payload.app_id",
            )
        _text(p.app_id, "payload.app_id")
        return
    if p.permission is None:
        raise ValidationError("permission or app_id is required", field="payload.permission")
    if p.permission not in policy.system_permissions:
        raise ValidationError(
            f"unknown system permission {p.permission!r}",
            field="payload.permission",
            reason="unknown_permission",
        )
    _text(p.device_id, "payload.device_id")


def _categories(categories: tuple[str, ...], policy: Policy, field: str) -> None:
    for category in categories:
        if category not in policy.categories:
            raise ValidationError(
                f"unknown data category {category!r}", field=field, reason="unknown_category"
            )


def _deletion(p: DeletionRequested, policy: Policy) -> None:
    _uuid(p.request_id, "payload.request_id")
    _text(p.reason, "payload.reason")
    if p.scope is DeletionScope.CATEGORIES and not p.categories:
        raise ValidationError(
            "scope CATEGORIES needs at least one category", field="payload.categories"
        )
    _categories(p.categories, policy, "payload.categories")


def _shared(p: DataShared, policy: Policy) -> None:
    partner = policy.partners.get(p.partner)
    if partner is None:
        raise ValidationError(
            f"unknown partner {p.partner!r}", field="payload.partner", reason="unknown_partner"
        )
    if not p.categories:
        raise ValidationError("at least one category is required", field="payload.categories")
    _categories(p.categories, policy, "payload.categories")
    outside = sorted(set(p.categories) - partner.receives)
    if outside:
        raise ValidationError(
            f"partner {p.partner!r} does not receive {', '.join(outside)} under the policy",
            field="payload.categories",
            reason="category_not_shared",
        )
    for name, ref in p.partner_refs.items():
        _text(name, "payload.partner_refs")
        _text(ref, f"payload.partner_refs.{name}")


def validate_subject_id(subject_id: str) -> None:
    """A subject id as events may carry it: not empty, at most ``MAX_ID_LENGTH``
    characters, no control characters (it becomes a Kafka key, a table key and, hashed, a
    Redis key). Readers of the store check it too: an id no event can carry gets an
    error, not the policy's defaults."""
    _text(subject_id, "subject_id")
    if _CONTROL_CHARACTER.search(subject_id):
        raise ValidationError("subject_id contains control characters", field="subject_id")


def validate_event(event: ConsentEvent, policy: Policy, now_ms: int) -> None:
    """Raise a ``ValidationError`` subclass naming the field if ``event`` is invalid."""
    _uuid(event.event_id, "event_id")
    validate_subject_id(event.subject_id)
    _text(event.source, "source")
    if not isinstance(event.occurred_at, int) or event.occurred_at < _EARLIEST_MS:
        raise ValidationError(
            f"occurred_at out of range: {event.occurred_at!r}", field="occurred_at"
        )
    if event.occurred_at > now_ms + _MAX_FUTURE_MS:
        raise ValidationError("occurred_at is more than a day in the future", field="occurred_at")
    match event.payload:
        case ConsentChanged():
            _consent(event.payload, policy)
        case PermissionRevoked():
            _permission(event.payload, policy)
        case DeletionRequested():
            _deletion(event.payload, policy)
        case DataShared():
            _shared(event.payload, policy)
