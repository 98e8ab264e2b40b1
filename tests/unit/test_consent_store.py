"""Consent store: key layout, field encoding, decisions and the rebuild loop, without Redis."""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from fake_topic import FakeConsumer, Record

from consumers.store.consent_store import ConsentStore
from consumers.store.layout import (
    ApplyOutcome,
    Source,
    SubjectSlots,
    allowed_read,
    apply_args,
    decide,
    decide_allowed,
    state_fields,
    view_from_hash,
)
from consumers.store.rebuild import RebuildReport, rebuild_from_topic
from schemas.errors import StoreUnavailableError, UnknownPurposeError, ValidationError
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import Secret, Settings, SubjectKeys
from schemas.views import ConsentState, PermissionRevocation, PurposeDecision

POLICY = load_policy()
KEYS = SubjectKeys.single(Secret("unit-test-key"))
SUBJECT = "buyer-4711@example.com"


def open_state(version: int = 3) -> ConsentState:
    return ConsentState(
        subject_id=SUBJECT,
        version=version,
        updated_at=1_700_000_000_000,
        purposes=(
            PurposeDecision("research_sharing", True, 1_700_000_000_001, "2023-09-01"),
            PurposeDecision("marketing_sms", False, 1_700_000_000_002, "2023-09-01"),
        ),
        permissions=(
            PermissionRevocation(1_700_000_000_003, permission="camera", device_id="dev:A"),
            PermissionRevocation(1_700_000_000_004, app_id="wx-login"),
        ),
    )


# ---- keys -----------------------------------------------------------------------------


def test_key_is_prefix_and_32_hex_of_a_keyed_hash_without_the_subject_id() -> None:
    key = SubjectSlots(KEYS, "cs").current(SUBJECT)
    assert re.fullmatch(r"cs:s:[0-9a-f]{32}", key)
    assert SUBJECT not in key and "buyer" not in key and "4711" not in key


def test_key_is_stable_and_depends_on_subject_secret_and_prefix() -> None:
    slots = SubjectSlots(KEYS, "cs")
    same = SubjectSlots(SubjectKeys.single(Secret("unit-test-key")), "cs")
    assert slots.current(SUBJECT) == slots.current(SUBJECT) == same.current(SUBJECT)
    assert slots.current(SUBJECT) != slots.current(SUBJECT + "x")
    other = SubjectSlots(SubjectKeys.single(Secret("another-key")), "cs")
    assert slots.current(SUBJECT) != other.current(SUBJECT)
    assert SubjectSlots(KEYS, "t1").current(SUBJECT).startswith("t1:s:")
    assert SubjectSlots(KEYS, "t1").pattern == "t1:s:*"
    assert slots(SUBJECT) == [slots.current(SUBJECT)] and not slots.rotating


def test_store_key_matches_layout() -> None:
    store = ConsentStore(_FailingClient(), POLICY, KEYS, prefix="p9")  # type: ignore[arg-type]
    assert store.key(SUBJECT) == SubjectSlots(KEYS, "p9").current(SUBJECT)


# ---- fields ---------------------------------------------------------------------------


def test_open_state_fields() -> None:
    assert state_fields(open_state()) == {
        "v": "3",
        "p:research_sharing": "1",
        "p:marketing_sms": "0",
        "perm:dev:A:camera": "1700000000003",
        "app:wx-login": "1700000000004",
    }


def test_closed_state_is_only_the_marker() -> None:
    closed = ConsentState(
        SUBJECT, 9, 5, account_closed_at=1_700_000_999_000, purposes=open_state().purposes
    )
    assert state_fields(closed) == {"v": "9", "closed": "1700000999000"}


def test_apply_args_are_version_closing_flag_then_pairs() -> None:
    args = apply_args(open_state(7))
    assert args[:2] == ["7", "0"]
    pairs = dict(zip(args[2::2], args[3::2], strict=True))
    assert pairs == state_fields(open_state(7))
    closed = apply_args(ConsentState(SUBJECT, 8, 1, account_closed_at=42))
    assert closed == ["8", "1", "v", "8", "closed", "42"]


# ---- decisions ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POLICY.purposes))
def test_decision_table_for_every_purpose(name: str) -> None:
    purpose = POLICY.purposes[name]
    assert decide(purpose, None, None) == (not purpose.opt_in, Source.DEFAULT)
    assert decide(purpose, "1", None) == (True, Source.EXPLICIT)
    if purpose.withdrawable:
        assert decide(purpose, "0", None) == (False, Source.EXPLICIT)
    else:  # a withdrawal of a basic-function purpose is rejected by policy, never effective
        assert decide(purpose, "0", None) == (purpose.default_allowed, Source.DEFAULT)
    for explicit in (None, "1", "0"):
        assert decide(purpose, explicit, "1700000000000") == (False, Source.CLOSED)


def test_defaults_follow_the_policy() -> None:
    allowed = {n for n, p in POLICY.purposes.items() if decide_allowed(p, None, None)}
    assert {"personalized_ads", "marketing_sms", "order_fulfilment"} <= allowed
    assert not {"research_sharing", "biometric_verification", "cross_border_transfer"} & allowed


def test_allowed_read_is_one_hmget_of_purpose_and_closed() -> None:
    read = allowed_read(POLICY, "k", "research_sharing")
    assert (read.key, read.fields) == ("k", ("p:research_sharing", "closed"))
    assert read.parse([b"1", None]) is True
    assert read.parse([None, None]) is False
    assert read.parse(["1", "123"]) is False


def test_unknown_purpose_raises_before_any_io() -> None:
    store = ConsentStore(_FailingClient(), POLICY, KEYS)  # type: ignore[arg-type]
    before = _FailingClient.calls
    with pytest.raises(UnknownPurposeError) as info:
        store.is_allowed(SUBJECT, "telepathy")
    assert info.value.reason == "unknown_purpose"
    assert _FailingClient.calls == before


def test_view_of_an_open_hash() -> None:
    raw = {k.encode(): v.encode() for k, v in state_fields(open_state()).items()}
    view = view_from_hash(POLICY, raw)
    assert set(view["purposes"]) == set(POLICY.purposes)
    assert view["purposes"]["research_sharing"] == {
        "allowed": True,
        "default": False,
        "source": "explicit",
    }
    assert view["purposes"]["marketing_sms"]["allowed"] is False
    assert view["purposes"]["personalized_ads"] == {
        "allowed": True,
        "default": True,
        "source": "default",
    }
    assert view["revoked_permissions"] == [
        {"device_id": "dev:A", "permission": "camera", "revoked_at": 1_700_000_000_003}
    ]
    assert view["revoked_apps"] == [{"app_id": "wx-login", "revoked_at": 1_700_000_000_004}]
    assert (view["version"], view["closed"], view["closed_at"]) == (3, False, None)


def test_view_of_a_closed_marker_and_of_nothing() -> None:
    view = view_from_hash(POLICY, {b"v": b"9", b"closed": b"77"})
    assert (view["version"], view["closed"], view["closed_at"]) == (9, True, 77)
    assert all(not p["allowed"] and p["source"] == "closed" for p in view["purposes"].values())
    empty = view_from_hash(POLICY, {})
    assert empty["version"] is None and empty["closed"] is False and empty["seen"] is False
    assert all(p["default"] for p in empty["purposes"].values())


# ---- errors ---------------------------------------------------------------------------


class _FailingClient:
    """A redis client whose every call fails as if Redis were down."""

    calls = 0

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            _FailingClient.calls += 1
            raise redis.exceptions.ConnectionError("connection refused")

        return fail


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.is_allowed(SUBJECT, "marketing_sms"),
        lambda s: s.is_permission_revoked(SUBJECT, "camera", "d1"),
        lambda s: s.is_app_revoked(SUBJECT, "a1"),
        lambda s: s.consent_view(SUBJECT),
        lambda s: s.apply_state(open_state()),
    ],
)
def test_redis_down_is_a_retriable_store_unavailable_error(call: Any) -> None:
    store = ConsentStore(_FailingClient(), POLICY, KEYS)  # type: ignore[arg-type]
    before = _FailingClient.calls
    with pytest.raises(StoreUnavailableError) as info:
        call(store)
    assert _FailingClient.calls > before
    assert info.value.retriable and info.value.reason == "store_unavailable"


def test_redis_timeout_is_store_unavailable() -> None:
    class Slow:
        def hmget(self, *args: Any) -> Any:
            raise redis.exceptions.TimeoutError("Timeout reading from socket")

    store = ConsentStore(Slow(), POLICY, KEYS)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailableError):
        store.is_allowed(SUBJECT, "marketing_sms")


# ---- rebuild loop ---------------------------------------------------------------------


class _RecordingStore:
    def __init__(self) -> None:
        self.versions: dict[str, int] = {}

    def apply_states(self, states: Sequence[ConsentState]) -> list[ApplyOutcome]:
        out = []
        for st in states:
            newer = st.version > self.versions.get(st.subject_id, 0)
            if newer:
                self.versions[st.subject_id] = st.version
            out.append(ApplyOutcome.APPLIED if newer else ApplyOutcome.NOT_NEWER)
        return out


def test_rebuild_reads_to_the_captured_end_and_counts() -> None:
    from confluent_kafka import KafkaError

    serde = AvroSerde()
    enc = {v: serde.encode(open_state(v), "consent.state.v1") for v in (1, 2, 3)}
    eof = SimpleNamespace(code=lambda: KafkaError._PARTITION_EOF, fatal=lambda: False)
    consumer = FakeConsumer(
        ends={0: (5, 9), 1: (0, 0), 2: (0, 2)},  # 0@8: a transaction marker, never delivered
        batches=[
            [Record(0, 5, enc[2]), Record(2, 0, b"\x00garbage"), Record(0, 6, enc[1])],
            [Record(2, 1, None), Record(0, 7, enc[3])],
            [Record(0, 9, None, error=eof)],
        ],
    )
    store = _RecordingStore()
    report = rebuild_from_topic(
        Settings(),
        store,  # type: ignore[arg-type]
        "t",
        timeout_s=5,
        consumer_factory=consumer,
    )
    assert consumer.assigned == [(0, 5), (2, 0)] and consumer.closed
    assert (report.read, report.applied, report.skipped) == (5, 2, 1)
    assert (report.undecodable, report.tombstones, report.complete) == (1, 1, True)
    assert store.versions == {SUBJECT: 3}


def test_rebuild_times_out_incomplete() -> None:
    consumer = FakeConsumer(ends={0: (0, 3)}, batches=[])
    report = rebuild_from_topic(
        Settings(),
        _RecordingStore(),  # type: ignore[arg-type]
        "t",
        timeout_s=0.2,
        consumer_factory=consumer,
    )
    assert report.complete is False and report.read == 0
    assert "INCOMPLETE" in report.summary()


def test_report_counts_outcomes() -> None:
    report = RebuildReport()
    report.count([ApplyOutcome.APPLIED, ApplyOutcome.NOT_NEWER, ApplyOutcome.REFUSED_CLOSED])
    assert (report.applied, report.skipped, report.refused_closed) == (1, 1, 1)


@pytest.mark.parametrize(
    ("subject", "said"),
    [
        ("", "subject_id is missing or empty"),
        ("a\x00b", "subject_id contains control characters"),
        ("x" * 257, "subject_id longer than 256 characters"),
    ],
)
def test_a_subject_id_no_event_can_carry_is_an_error_not_the_defaults(
    subject: str, said: str
) -> None:
    store = ConsentStore(_FailingClient(), POLICY, KEYS)  # type: ignore[arg-type]
    before = _FailingClient.calls

    for read in (
        lambda: store.is_allowed(subject, "marketing_sms"),
        lambda: store.is_app_revoked(subject, "app-1"),
        lambda: store.consent_view(subject),
    ):
        with pytest.raises(ValidationError, match=said):
            read()
    assert _FailingClient.calls == before  # refused before any I/O
