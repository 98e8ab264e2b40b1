"""validate_event: valid events pass; each invalid one raises the right class with the
reason and the field it names."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import pytest

from schemas.errors import (
    ContractError,
    NonWithdrawableError,
    UnknownPurposeError,
    ValidationError,
)
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    PermissionRevoked,
)
from schemas.policy import Policy, load_policy
from schemas.validation import MAX_ID_LENGTH, validate_event

NOW = 1_710_064_800_000  # 2024-03-10T10:00:00Z
HOUR = 3_600_000
Y2K = 946_684_800_000  # 2000-01-01T00:00:00Z
EVENT_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
REQUEST_ID = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def _event(payload: Any, **envelope: Any) -> ConsentEvent:
    base = ConsentEvent(EVENT_ID, "member-000123", NOW - HOUR, "app-settings", payload)
    return dataclasses.replace(base, **envelope)


def consent(purpose: str, decision: ConsentDecision = ConsentDecision.WITHDRAWN) -> ConsentEvent:
    return _event(ConsentChanged(purpose, decision, "2023-09-01", "app_settings"))


def deletion(scope: DeletionScope, *categories: str, **kw: Any) -> ConsentEvent:
    fields = {"request_id": REQUEST_ID, "reason": "user_request", **kw}
    return _event(DeletionRequested(scope=scope, categories=categories, **fields))


def shared(partner: str, *categories: str, **refs: str) -> ConsentEvent:
    return _event(DataShared(partner, categories, MappingProxyType(refs)))


GRANTED = ConsentDecision.GRANTED
ACCOUNT, CATEGORIES = DeletionScope.ACCOUNT, DeletionScope.CATEGORIES

VALID: dict[str, ConsentEvent] = {
    "withdraw opt-out purpose": consent("personalized_ads"),
    "withdraw opt-in purpose": consent("research_sharing"),
    "grant opt-in purpose": consent("biometric_verification", GRANTED),
    "grant of a non-withdrawable purpose": consent("order_fulfilment", GRANTED),
    "grant of payment": consent("payment", GRANTED),
    "system permission on a device": _event(PermissionRevoked("camera", "android-55AA")),
    "every system permission": _event(PermissionRevoked("clipboard", "ios-7F3A")),
    "authorized app": _event(PermissionRevoked(app_id="ads-insights")),
    "app unknown to the policy": _event(PermissionRevoked(app_id="some-mini-program")),
    "account closure": deletion(ACCOUNT),
    "category deletion": deletion(CATEGORIES, "behaviour", "pseudonymous_ids"),
    "shared with payment": shared("payment", "bank_account", payment_account_ref="PA-1"),
    "shared with logistics": shared("logistics", "delivery_details", "order_records"),
    "shared with ads": shared("ads", "pseudonymous_ids", ad_id="AD-9"),
    "shared with research": shared("research", "deidentified_data"),
    "a day of clock skew": dataclasses.replace(
        consent("marketing_sms"), occurred_at=NOW + 23 * HOUR
    ),
    "exactly 2000-01-01": dataclasses.replace(consent("marketing_sms"), occurred_at=Y2K),
    "longest subject id": dataclasses.replace(
        consent("marketing_sms"), subject_id="m" * MAX_ID_LENGTH
    ),
    "upper-case UUID": dataclasses.replace(consent("marketing_sms"), event_id=EVENT_ID.upper()),
}


@pytest.mark.parametrize("event", VALID.values(), ids=VALID.keys())
def test_valid_events_pass(event: ConsentEvent, policy: Policy) -> None:
    validate_event(event, policy, NOW)  # raises if invalid


def _replace(event: ConsentEvent, **kw: Any) -> ConsentEvent:
    return dataclasses.replace(event, **kw)


BASE = consent("marketing_sms")

# (event, exception class, reason, field)
INVALID: dict[str, tuple[ConsentEvent, type[ValidationError], str, str]] = {
    "unknown purpose": (
        consent("telepathy", GRANTED), UnknownPurposeError, "unknown_purpose", "payload.purpose"),
    "purpose with wrong case": (
        consent("Personalized_Ads"), UnknownPurposeError, "unknown_purpose", "payload.purpose"),
    "withdrawal of order_fulfilment": (
        consent("order_fulfilment"), NonWithdrawableError, "not_withdrawable", "payload.purpose"),
    "withdrawal of payment": (
        consent("payment"), NonWithdrawableError, "not_withdrawable", "payload.purpose"),
    "withdrawal of account_security": (
        consent("account_security"), NonWithdrawableError, "not_withdrawable",
        "payload.purpose"),
    "withdrawal of legal_obligation": (
        consent("legal_obligation"), NonWithdrawableError, "not_withdrawable",
        "payload.purpose"),
    "empty notice version": (
        _event(ConsentChanged("marketing_sms", GRANTED, "", "app_settings")),
        ValidationError, "invalid_field", "payload.notice_version"),
    "blank method": (
        _event(ConsentChanged("marketing_sms", GRANTED, "2023-09-01", "  ")),
        ValidationError, "invalid_field", "payload.method"),
    "permission without device": (
        _event(PermissionRevoked(permission="camera")),
        ValidationError, "invalid_field", "payload.device_id"),
    "permission and app both": (
        _event(PermissionRevoked("camera", "ios-7F3A", "ads-insights")),
        ValidationError, "invalid_field", "payload.app_id"),
    "app with a device": (
        _event(PermissionRevoked(device_id="ios-7F3A", app_id="ads-insights")),
        ValidationError, "invalid_field", "payload.app_id"),
    "neither permission nor app": (
        _event(PermissionRevoked()), ValidationError, "invalid_field", "payload.permission"),
    "unknown permission": (
        _event(PermissionRevoked("telepathy", "ios-7F3A")),
        ValidationError, "unknown_permission", "payload.permission"),
    "empty app id": (
        _event(PermissionRevoked(app_id="")), ValidationError, "invalid_field", "payload.app_id"),
    "CATEGORIES deletion without categories": (
        deletion(CATEGORIES), ValidationError, "invalid_field", "payload.categories"),
    "deletion of an unknown category": (
        deletion(CATEGORIES, "behaviour", "dreams"),
        ValidationError, "unknown_category", "payload.categories"),
    "account closure naming an unknown category": (
        deletion(ACCOUNT, "dreams"), ValidationError, "unknown_category", "payload.categories"),
    "request id not a UUID": (
        deletion(ACCOUNT, request_id="REQ-1"),
        ValidationError, "invalid_field", "payload.request_id"),
    "deletion without reason": (
        deletion(ACCOUNT, reason=""), ValidationError, "invalid_field", "payload.reason"),
    "shared with an unknown partner": (
        shared("crm", "account_profile"), ValidationError, "unknown_partner", "payload.partner"),
    "shared a category the partner does not receive": (
        shared("ads", "behaviour", "bank_account"),
        ValidationError, "category_not_shared", "payload.categories"),
    "identity shared with research": (
        shared("research", "account_profile"),
        ValidationError, "category_not_shared", "payload.categories"),
    "shared an unknown category": (
        shared("logistics", "parcels"), ValidationError, "unknown_category",
        "payload.categories"),
    "shared nothing": (
        shared("logistics"), ValidationError, "invalid_field", "payload.categories"),
    "empty partner reference": (
        shared("logistics", "order_records", order_no=""),
        ValidationError, "invalid_field", "payload.partner_refs.order_no"),
    "event id not a UUID": (
        _replace(BASE, event_id="evt-42"), ValidationError, "invalid_field", "event_id"),
    "empty event id": (_replace(BASE, event_id=""), ValidationError, "invalid_field", "event_id"),
    "empty subject": (
        _replace(BASE, subject_id=""), ValidationError, "invalid_field", "subject_id"),
    "blank subject": (
        _replace(BASE, subject_id=" \t"), ValidationError, "invalid_field", "subject_id"),
    "subject too long": (
        _replace(BASE, subject_id="m" * (MAX_ID_LENGTH + 1)),
        ValidationError, "invalid_field", "subject_id"),
    "control character in the subject": (
        _replace(BASE, subject_id="\x00next-offset:x"),
        ValidationError, "invalid_field", "subject_id"),
    "newline in the subject": (
        _replace(BASE, subject_id="m-1\nm-2"), ValidationError, "invalid_field", "subject_id"),
    "empty source": (_replace(BASE, source=""), ValidationError, "invalid_field", "source"),
    "occurred in the far future": (
        _replace(BASE, occurred_at=NOW + 400 * 24 * HOUR),
        ValidationError, "invalid_field", "occurred_at"),
    "more than a day ahead": (
        _replace(BASE, occurred_at=NOW + 25 * HOUR),
        ValidationError, "invalid_field", "occurred_at"),
    "before 2000": (
        _replace(BASE, occurred_at=Y2K - 1), ValidationError, "invalid_field", "occurred_at"),
    "seconds instead of ms": (
        _replace(BASE, occurred_at=NOW // 1000), ValidationError, "invalid_field",
        "occurred_at"),
    "negative time": (
        _replace(BASE, occurred_at=-1), ValidationError, "invalid_field", "occurred_at"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("event", "error", "reason", "field"), INVALID.values(), ids=INVALID.keys()
)
def test_invalid_events_raise(
    event: ConsentEvent, error: type[ValidationError], reason: str, field: str, policy: Policy
) -> None:
    with pytest.raises(ValidationError) as info:
        validate_event(event, policy, NOW)
    assert type(info.value) is error
    assert info.value.reason == reason
    assert info.value.field == field
    assert isinstance(info.value, ContractError)
    assert info.value.retriable is False


def test_error_messages_name_the_offending_value(policy: Policy) -> None:
    with pytest.raises(UnknownPurposeError, match="'telepathy'"):
        validate_event(consent("telepathy"), policy, NOW)
    with pytest.raises(NonWithdrawableError, match=r"'order_fulfilment'.*basic functions"):
        validate_event(consent("order_fulfilment"), policy, NOW)
    with pytest.raises(ValidationError, match="'ads' does not receive bank_account"):
        validate_event(shared("ads", "bank_account"), policy, NOW)


def test_subject_id_is_never_echoed_in_the_error(policy: Policy) -> None:
    event = _replace(BASE, subject_id="member-" + "9" * MAX_ID_LENGTH)
    with pytest.raises(ValidationError) as info:
        validate_event(event, policy, NOW)
    assert event.subject_id not in str(info.value)


def test_now_decides_what_is_in_the_future(policy: Policy) -> None:
    event = _replace(BASE, occurred_at=NOW + 2 * 24 * HOUR)
    with pytest.raises(ValidationError):
        validate_event(event, policy, NOW)
    validate_event(event, policy, NOW + 2 * 24 * HOUR)
