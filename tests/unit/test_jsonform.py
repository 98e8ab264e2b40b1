"""The JSON form of an inbound event: one line per event, as the CLI and gateway read it."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import ValidationError
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    EventType,
    PermissionRevoked,
)
from schemas.jsonform import event_from_json, event_to_json, parse_event_line
from schemas.policy import Policy, load_policy
from schemas.validation import validate_event

EVENT_ID = "3f2b8c1e-9d4a-4e7b-8f6c-2a1d0e9b7c55"
REQUEST_ID = "b0c1d2e3-f405-4617-8829-3a4b5c6d7e8f"
T_ISO = "2024-03-01T10:00:00+08:00"
T_MS = 1_709_258_400_000  # the same instant

PAYLOADS: dict[str, dict[str, Any]] = {
    "consent.changed": {
        "purpose": "personalized_ads",
        "decision": "WITHDRAWN",
        "notice_version": "2023-09-01",
        "method": "app_settings",
    },
    "permission.revoked": {"permission": "location", "device_id": "android-55AA"},
    "deletion.requested": {
        "request_id": REQUEST_ID,
        "scope": "CATEGORIES",
        "categories": ["behaviour"],
        "reason": "user_request",
    },
    "data.shared": {
        "partner": "logistics",
        "categories": ["delivery_details", "order_records"],
        "partner_refs": {"order_no": "SO-2024-000981", "waybill_no": "SF1402339871"},
        "transaction_completed_at": "2024-03-03T18:30:00Z",
    },
}

EXPECTED_PAYLOADS = {
    "consent.changed": ConsentChanged(
        "personalized_ads", ConsentDecision.WITHDRAWN, "2023-09-01", "app_settings"
    ),
    "permission.revoked": PermissionRevoked(permission="location", device_id="android-55AA"),
    "deletion.requested": DeletionRequested(
        REQUEST_ID, DeletionScope.CATEGORIES, "user_request", ("behaviour",)
    ),
    "data.shared": DataShared(
        "logistics",
        ("delivery_details", "order_records"),
        transaction_completed_at=1_709_490_600_000,
    ),
}


def _obj(kind: str = "consent.changed", **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "event_id": EVENT_ID,
        "type": kind,
        "subject_id": "member-000123",
        "occurred_at": T_ISO,
        "source": "app-settings",
        "payload": dict(PAYLOADS[kind]),
    }
    obj.update(changes)
    return obj


def _line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


@pytest.mark.parametrize("kind", PAYLOADS)
def test_parse_each_kind(kind: str) -> None:
    event = parse_event_line(_line(_obj(kind)))
    assert event.type is EventType(kind)
    assert event.event_id == EVENT_ID
    assert event.subject_id == "member-000123"
    assert event.occurred_at == T_MS
    assert event.source == "app-settings"
    expected = EXPECTED_PAYLOADS[kind]
    if isinstance(expected, DataShared):
        assert isinstance(event.payload, DataShared)
        assert dict(event.payload.partner_refs) == PAYLOADS[kind]["partner_refs"]
        assert event.payload.categories == expected.categories
        assert event.payload.transaction_completed_at == expected.transaction_completed_at
    else:
        assert event.payload == expected


def test_app_revocation_and_account_closure() -> None:
    app = parse_event_line(_line(_obj("permission.revoked", payload={"app_id": "ads-insights"})))
    assert app.payload == PermissionRevoked(app_id="ads-insights")
    closure = _obj("deletion.requested")
    closure["payload"] = {"request_id": REQUEST_ID, "scope": "ACCOUNT", "reason": "user_request"}
    event = parse_event_line(_line(closure))
    assert event.payload == DeletionRequested(REQUEST_ID, DeletionScope.ACCOUNT, "user_request")


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (T_MS, T_MS),
        (T_ISO, T_MS),
        ("2024-03-01T02:00:00Z", T_MS),
        ("2024-03-01T02:00:00+00:00", T_MS),
        ("2024-03-01T02:00:00.250Z", T_MS + 250),
        ("2024-02-29T21:00:00-05:00", T_MS),
    ],
)
def test_times_in_ms_or_iso_with_a_zone(value: Any, ms: int) -> None:
    assert parse_event_line(_line(_obj(occurred_at=value))).occurred_at == ms


@pytest.mark.parametrize(
    "value", ["2024-03-01T02:00:00", "2024-03-01", "yesterday", "", True, 1.7e12, None, [1]]
)
def test_times_without_a_zone_or_not_times(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_event_line(_line(_obj(occurred_at=value)))
    assert info.value.field == "occurred_at"


def test_transaction_completed_at_in_ms_iso_or_null() -> None:
    for value, ms in [(T_MS, T_MS), (T_ISO, T_MS), (None, None)]:
        payload = {**PAYLOADS["data.shared"], "transaction_completed_at": value}
        event = parse_event_line(_line(_obj("data.shared", payload=payload)))
        assert isinstance(event.payload, DataShared)
        assert event.payload.transaction_completed_at == ms
    payload = {**PAYLOADS["data.shared"], "transaction_completed_at": "last week"}
    with pytest.raises(ValidationError) as info:
        parse_event_line(_line(_obj("data.shared", payload=payload)))
    assert info.value.field == "payload.transaction_completed_at"


@pytest.mark.parametrize("field", ["type", "subject_id", "occurred_at", "source", "payload"])
def test_missing_field(field: str) -> None:
    obj = _obj()
    del obj[field]
    with pytest.raises(ValidationError, match=f"missing field '{field}'") as info:
        parse_event_line(_line(obj))
    assert info.value.field == field
    assert info.value.reason == "invalid_field"


@pytest.mark.parametrize(
    ("kind", "missing"),
    [
        ("consent.changed", "purpose"),
        ("consent.changed", "decision"),
        ("deletion.requested", "request_id"),
        ("deletion.requested", "scope"),
        ("data.shared", "partner"),
        ("data.shared", "categories"),
    ],
)
def test_missing_payload_field(kind: str, missing: str) -> None:
    obj = _obj(kind)
    del obj["payload"][missing]
    with pytest.raises(ValidationError, match=f"payload\\.{missing}") as info:
        parse_event_line(_line(obj))
    assert info.value.field == "payload"


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("consent.changed", "decision", "MAYBE"),
        ("deletion.requested", "scope", "EVERYTHING"),
        ("deletion.requested", "request_id", "REQ-1"),
    ],
)
def test_invalid_payload_value(kind: str, field: str, value: str) -> None:
    obj = _obj(kind)
    obj["payload"][field] = value
    with pytest.raises(ValidationError, match="invalid payload") as info:
        parse_event_line(_line(obj))
    assert info.value.field == "payload"


def test_unknown_field() -> None:
    with pytest.raises(ValidationError, match="unknown field 'user_agent'") as info:
        parse_event_line(_line(_obj(user_agent="Mozilla/5.0")))
    assert info.value.field == "user_agent"


def test_unknown_type() -> None:
    with pytest.raises(ValidationError, match=r"unknown type 'consent\.updated'") as info:
        parse_event_line(_line(_obj(type="consent.updated")))
    assert info.value.reason == "unknown_type"
    assert info.value.field == "type"
    assert "data.shared" in str(info.value)  # the message lists the valid types


@pytest.mark.parametrize("line", ["", "not json", '{"type": ', "{'single': 'quotes'}", "[1,"])
def test_not_json(line: str) -> None:
    with pytest.raises(ValidationError, match="not JSON") as info:
        parse_event_line(line)
    assert info.value.reason == "not_json"


@pytest.mark.parametrize("root", [[], "consent.changed", 42, None])
def test_root_not_an_object(root: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_event_line(_line(root))
    assert info.value.field == "(root)"


@pytest.mark.parametrize("payload", [[], "WITHDRAWN", None, 3])
def test_payload_not_an_object(payload: Any) -> None:
    with pytest.raises(ValidationError, match="payload must be an object") as info:
        parse_event_line(_line(_obj(payload=payload)))
    assert info.value.field == "payload"


@pytest.mark.parametrize("field", ["subject_id", "source"])
def test_strings_must_be_strings(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_event_line(_line({**_obj(), field: 123456}))
    assert info.value.field == field


# ---- derived event ids ----------------------------------------------------------------


def _without_id(**changes: Any) -> dict[str, Any]:
    obj = _obj(**changes)
    del obj["event_id"]
    return obj


def test_omitted_event_id_is_derived_from_the_content() -> None:
    first = parse_event_line(_line(_without_id()))
    again = parse_event_line(_line(_without_id()))
    assert first.event_id == again.event_id
    derived = uuid.UUID(first.event_id)
    assert derived.version == 5
    assert str(derived) == first.event_id


def test_derived_id_ignores_key_order_and_whitespace() -> None:
    obj = _without_id()
    reordered = dict(reversed(list(obj.items())))
    spaced = json.dumps(reordered, indent=4)
    assert parse_event_line(_line(obj)).event_id == parse_event_line(spaced).event_id


@pytest.mark.parametrize(
    "changes",
    [
        {"subject_id": "member-000124"},
        {"occurred_at": "2024-03-01T10:00:01+08:00"},
        {"source": "account-service"},
        {"payload": {**PAYLOADS["consent.changed"], "decision": "GRANTED"}},
    ],
)
def test_different_content_derives_a_different_id(changes: dict[str, Any]) -> None:
    base = parse_event_line(_line(_without_id())).event_id
    assert parse_event_line(_line(_without_id(**changes))).event_id != base


def test_given_event_id_is_kept_as_is() -> None:
    assert parse_event_line(_line(_obj(event_id="not-a-uuid"))).event_id == "not-a-uuid"


# ---- round trip -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", PAYLOADS)
def test_event_to_json_round_trips(kind: str) -> None:
    event = parse_event_line(_line(_obj(kind)))
    as_json = event_to_json(event)
    assert as_json["type"] == kind
    assert as_json["occurred_at"] == T_MS
    assert isinstance(as_json["payload"], dict)
    assert event_from_json(as_json) == event
    line = json.dumps(as_json)
    assert parse_event_line(line) == event
    assert event_to_json(parse_event_line(line)) == as_json


# ---- the example and fixture files ----------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "examples" / "sample-events.jsonl"
BAD_EVENTS = REPO / "tests" / "fixtures" / "bad-events.jsonl"


def _check(line: str, policy: Policy) -> ConsentEvent:
    event = parse_event_line(line)
    validate_event(event, policy, int(time.time() * 1000))
    return event


def test_sample_events_are_valid_realistic_and_in_event_time_order() -> None:
    policy = load_policy()
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()
    events = [_check(line, policy) for line in lines]
    assert 35 <= len(events) <= 45
    assert [e.occurred_at for e in events] == sorted(e.occurred_at for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert len({e.subject_id for e in events}) >= 8
    assert {e.type for e in events} == set(EventType)
    shared = [e.payload for e in events if isinstance(e.payload, DataShared)]
    assert {p.partner for p in shared} == {"payment", "logistics", "ads", "research"}
    refs = {name for p in shared for name in p.partner_refs}
    assert {"order_no", "waybill_no", "payment_account_ref", "ad_id"} <= refs
    deletions = [e.payload for e in events if isinstance(e.payload, DeletionRequested)]
    assert [d.scope for d in deletions].count(DeletionScope.ACCOUNT) == 2
    assert any(
        d.scope is DeletionScope.CATEGORIES and "behaviour" in d.categories for d in deletions
    )
    permissions = [e.payload for e in events if isinstance(e.payload, PermissionRevoked)]
    assert {"camera", "location"} <= {p.permission for p in permissions}
    assert "ads-insights" in {p.app_id for p in permissions}
    withdrawn = {
        e.payload.purpose
        for e in events
        if isinstance(e.payload, ConsentChanged) and e.payload.decision is ConsentDecision.WITHDRAWN
    }
    assert {"personalized_ads", "marketing_sms", "research_sharing"} <= withdrawn


# line number -> the reason it is rejected with (blank lines are skipped, not rejected)
BAD_LINES = {2: "not_json", 4: "unknown_purpose", 6: "not_withdrawable", 7: "invalid_field"}


def test_bad_events_fixture_has_the_expected_bad_lines() -> None:
    policy = load_policy()
    rejected: dict[int, str] = {}
    valid = 0
    for number, line in enumerate(BAD_EVENTS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            _check(line, policy)
            valid += 1
        except ValidationError as exc:
            rejected[number] = exc.reason
    assert rejected == BAD_LINES
    assert valid == 3
