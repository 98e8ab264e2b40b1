"""decide(): consent, permissions, ordering, closure and lineage over the default policy.

Pure functions, no Kafka or Redis. Deletion fan-out (who gets ERASE/RESTRICT) is in
test_fanout.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    Payload,
    PermissionRevoked,
)
from schemas.partner import InstructionAction
from schemas.policy import load_policy
from schemas.settings import Secret, SubjectKeys
from streams.events.decisions import Decision, Outcome, decide, share_of
from streams.fanout import FanOut
from streams.pseudonyms import Pseudonyms, instruction_id
from streams.subject import Share, SubjectState

POLICY = load_policy()
PSEUDONYMS = Pseudonyms(SubjectKeys.single(Secret("k")))
NOW = 1_700_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
SUBJECT = "buyer-4711@example.com"
FAN = FanOut(POLICY, PSEUDONYMS, NOW)

STOP = InstructionAction.STOP_PROCESSING
RESUME = InstructionAction.RESUME_PROCESSING
REVOKE = InstructionAction.REVOKE_ACCESS


def eid(name: str) -> str:
    """A readable name as a deterministic UUID (events and requests need UUIDs)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"test:{name}"))


def event(payload: Payload, name: str, at: int = NOW - HOUR) -> ConsentEvent:
    return ConsentEvent(eid(name), SUBJECT, at, "test", payload)


def withdraw(purpose: str, name: str | None = None, at: int = NOW - HOUR) -> ConsentEvent:
    payload = ConsentChanged(purpose, ConsentDecision.WITHDRAWN, "2023-09-01", "settings")
    return event(payload, name or f"withdraw-{purpose}-{at}", at)


def grant(purpose: str, name: str | None = None, at: int = NOW - HOUR) -> ConsentEvent:
    payload = ConsentChanged(purpose, ConsentDecision.GRANTED, "2023-09-01", "settings")
    return event(payload, name or f"grant-{purpose}-{at}", at)


def revoke_app(app_id: str, at: int = NOW - HOUR) -> ConsentEvent:
    return event(PermissionRevoked(app_id=app_id), f"revoke-app-{app_id}-{at}", at)


def revoke_permission(permission: str, device: str, at: int = NOW - HOUR) -> ConsentEvent:
    payload = PermissionRevoked(permission=permission, device_id=device)
    return event(payload, f"revoke-{permission}-{device}-{at}", at)


def shared(partner: str, categories: Sequence[str], at: int = NOW - DAY) -> ConsentEvent:
    payload = DataShared(partner, tuple(categories), MappingProxyType({"order_no": "O-1"}))
    return event(payload, f"shared-{partner}-{at}", at)


def close_account(at: int = NOW - HOUR) -> ConsentEvent:
    payload = DeletionRequested(eid("closure"), DeletionScope.ACCOUNT, "user closed account")
    return event(payload, f"close-{at}", at)


def replay(events: Sequence[ConsentEvent], state: SubjectState | None = None) -> SubjectState:
    """Apply events in order; every one must be applied."""
    state = state or SubjectState(SUBJECT)
    for e in events:
        d = decide(state, e, FAN)
        assert d.outcome is Outcome.APPLIED, (e.payload, d.outcome)
        state = d.state
    return state


def sent(d: Decision) -> list[tuple[str, InstructionAction]]:
    return [(i.partner, i.action) for i in d.instructions]


# ---- consent changes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purpose", "partners"),
    [
        pytest.param("personalized_ads", ["ads"], id="personalized_ads-to-ads"),
        pytest.param("ads_analytics", ["ads"], id="ads_analytics-to-ads"),
        pytest.param("marketing_sms", [], id="marketing_sms-no-partner"),
        pytest.param("personalized_recommendation", [], id="recommendation-no-partner"),
    ],
)
def test_withdrawal_of_opt_out_purpose_stops_exactly_the_partners_processing_it(
    purpose: str, partners: list[str]
) -> None:
    d = decide(SubjectState(SUBJECT), withdraw(purpose), FAN)

    assert d.outcome is Outcome.APPLIED and d.consent_changed
    assert sent(d) == [(p, STOP) for p in partners]
    expected = sorted(p.name for p in POLICY.partners.values() if purpose in p.purposes)
    assert [i.partner for i in d.instructions] == expected
    decision = d.state.decision(purpose)
    assert decision is not None and decision.granted is False


def test_stop_processing_instruction_fields_for_a_partner_without_identity() -> None:
    e = withdraw("personalized_ads")
    (ins,) = decide(SubjectState(SUBJECT), e, FAN).instructions

    assert ins.partner == "ads" and ins.action is STOP
    assert ins.purposes == ("personalized_ads",) and ins.categories == ()
    assert ins.subject_ref == PSEUDONYMS.subject_ref("ads", SUBJECT)
    assert SUBJECT not in ins.subject_ref and re.fullmatch(r"k1:[0-9a-f]{64}", ins.subject_ref)
    assert ins.subject_id is None  # ads never held identity
    assert ins.instruction_id == instruction_id(e.event_id, "ads", "STOP_PROCESSING")
    assert ins.ack_key == ins.instruction_id and ins.request_id is None
    assert ins.source_event_id == e.event_id
    assert ins.issued_at == NOW
    assert ins.due_by == NOW + 1 * HOUR  # [partners.ads.deadlines] STOP_PROCESSING = "1h"
    assert dict(ins.partner_refs) == {} and ins.retain_until is None


def test_grant_of_opt_in_purpose_resumes_research() -> None:
    e = grant("research_sharing")
    d = decide(SubjectState(SUBJECT), e, FAN)

    (ins,) = d.instructions
    assert (ins.partner, ins.action) == ("research", RESUME)
    assert ins.purposes == ("research_sharing",)
    assert ins.subject_id is None and ins.subject_ref == PSEUDONYMS.subject_ref("research", SUBJECT)
    assert ins.due_by == NOW + 24 * HOUR  # default RESUME_PROCESSING deadline
    assert d.consent_changed


@pytest.mark.parametrize(
    ("history", "change", "expected"),
    [
        pytest.param([], grant("personalized_ads"), [], id="grant-already-allowed-opt-out"),
        pytest.param([], withdraw("research_sharing"), [], id="withdraw-never-granted-opt-in"),
        pytest.param([], grant("third_party_login"), [], id="grant-opt-in-no-partner"),
        pytest.param(
            [withdraw("personalized_ads", at=NOW - 2 * HOUR)],
            grant("personalized_ads"),
            [("ads", RESUME)],
            id="re-grant-after-withdrawal-resumes",
        ),
        pytest.param(
            [withdraw("personalized_ads", at=NOW - 2 * HOUR)],
            withdraw("personalized_ads"),
            [],
            id="second-withdrawal-no-new-stop",
        ),
        pytest.param(
            [grant("research_sharing", at=NOW - 2 * HOUR)],
            withdraw("research_sharing"),
            [("research", STOP)],
            id="withdraw-granted-opt-in-stops",
        ),
    ],
)
def test_instruction_only_when_the_effective_decision_changes(
    history: list[ConsentEvent],
    change: ConsentEvent,
    expected: list[tuple[str, InstructionAction]],
) -> None:
    state = replay(history)
    d = decide(state, change, FAN)

    assert d.outcome is Outcome.APPLIED and d.consent_changed
    assert sent(d) == expected
    payload = change.payload
    assert isinstance(payload, ConsentChanged)
    decision = d.state.decision(payload.purpose)
    assert decision is not None
    assert decision.granted is (payload.decision is ConsentDecision.GRANTED)
    assert decision.event_time == change.occurred_at


def test_repeated_event_id_is_a_duplicate_and_changes_nothing() -> None:
    e = withdraw("personalized_ads")
    first = decide(SubjectState(SUBJECT), e, FAN)
    again = decide(first.state, e, FAN)

    assert again.outcome is Outcome.DUPLICATE
    assert again.state is first.state
    assert again.instructions == () and again.request is None and not again.consent_changed


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        pytest.param(
            withdraw("personalized_ads", at=NOW - HOUR),
            grant("personalized_ads", at=NOW - 2 * HOUR),
            id="older-grant-after-withdrawal",
        ),
        pytest.param(
            grant("research_sharing", at=NOW - HOUR),
            withdraw("research_sharing", at=NOW - 2 * HOUR),
            id="older-withdrawal-after-grant",
        ),
        pytest.param(
            revoke_permission("camera", "dev:A", at=NOW - HOUR),
            revoke_permission("camera", "dev:A", at=NOW - 2 * HOUR),
            id="older-revocation-same-device",
        ),
    ],
)
def test_stale_event_is_recorded_not_applied(newer: ConsentEvent, older: ConsentEvent) -> None:
    state = replay([newer])
    d = decide(state, older, FAN)

    assert d.outcome is Outcome.STALE
    assert d.instructions == () and not d.consent_changed
    assert d.state.version == state.version
    assert d.state.purposes == state.purposes and d.state.permissions == state.permissions
    assert d.state.seen(older.event_id)  # recorded: a redelivery is a duplicate
    assert decide(d.state, older, FAN).outcome is Outcome.DUPLICATE


def test_equal_event_times_apply_in_arrival_order() -> None:
    state = replay([withdraw("personalized_ads", at=NOW - HOUR)])
    d = decide(state, grant("personalized_ads", at=NOW - HOUR), FAN)

    assert d.outcome is Outcome.APPLIED
    assert sent(d) == [("ads", RESUME)]
    decision = d.state.decision("personalized_ads")
    assert decision is not None and decision.granted


@pytest.mark.parametrize(
    ("newer", "older_other_item"),
    [
        pytest.param(
            withdraw("personalized_ads", at=NOW - HOUR),
            withdraw("marketing_sms", at=NOW - 5 * HOUR),
            id="other-purpose",
        ),
        pytest.param(
            revoke_permission("camera", "dev:A", at=NOW - HOUR),
            revoke_permission("camera", "dev:B", at=NOW - 5 * HOUR),
            id="same-permission-other-device",
        ),
        pytest.param(
            revoke_permission("camera", "dev:A", at=NOW - HOUR),
            revoke_permission("location", "dev:A", at=NOW - 5 * HOUR),
            id="other-permission-same-device",
        ),
        pytest.param(
            withdraw("personalized_ads", at=NOW - HOUR),
            revoke_app("ads-insights", at=NOW - 5 * HOUR),
            id="app-after-purpose",
        ),
    ],
)
def test_ordering_is_per_item(newer: ConsentEvent, older_other_item: ConsentEvent) -> None:
    state = replay([newer])
    d = decide(state, older_other_item, FAN)

    assert d.outcome is Outcome.APPLIED
    assert d.state.version == state.version + 1


# ---- permissions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("revocation", "expected", "subject_id"),
    [
        pytest.param(revoke_permission("camera", "dev:A"), [], None, id="system-permission"),
        pytest.param(revoke_app("ads-insights"), [("ads", REVOKE)], None, id="ads-app"),
        pytest.param(
            revoke_app("carrier-tracking"), [("logistics", REVOKE)], SUBJECT, id="logistics-app"
        ),
        pytest.param(revoke_app("unknown-app"), [], None, id="unknown-app"),
    ],
)
def test_permission_revocation(
    revocation: ConsentEvent, expected: list[tuple[str, InstructionAction]], subject_id: str | None
) -> None:
    d = decide(SubjectState(SUBJECT), revocation, FAN)

    assert d.outcome is Outcome.APPLIED and d.consent_changed
    assert sent(d) == expected
    payload = revocation.payload
    assert isinstance(payload, PermissionRevoked)
    (recorded,) = d.state.permissions
    assert (recorded.permission, recorded.device_id, recorded.app_id) == (
        payload.permission,
        payload.device_id,
        payload.app_id,
    )
    for ins in d.instructions:
        assert ins.app_id == payload.app_id
        assert ins.subject_id == subject_id
        assert ins.due_by == NOW + 24 * HOUR
        assert ins.ack_key == ins.instruction_id


def test_second_revocation_of_the_same_app_sends_nothing_new() -> None:
    state = replay([revoke_app("ads-insights", at=NOW - 2 * HOUR)])
    d = decide(state, revoke_app("ads-insights", at=NOW - HOUR), FAN)

    assert d.outcome is Outcome.APPLIED and d.instructions == ()
    (recorded,) = d.state.permissions
    assert recorded.event_time == NOW - HOUR


# ---- after account closure ------------------------------------------------------------


@pytest.mark.parametrize(
    "late",
    [
        pytest.param(grant("research_sharing"), id="grant"),
        pytest.param(grant("personalized_ads"), id="grant-opt-out"),
        pytest.param(withdraw("personalized_ads"), id="withdrawal"),
        pytest.param(revoke_app("ads-insights"), id="app-revocation"),
        pytest.param(revoke_permission("camera", "dev:A"), id="system-permission"),
        pytest.param(grant("research_sharing", at=NOW - 3 * HOUR), id="grant-dated-before"),
    ],
)
def test_nothing_applies_after_account_closure(late: ConsentEvent) -> None:
    state = replay([grant("research_sharing", at=NOW - 4 * HOUR), close_account(NOW - 2 * HOUR)])
    assert state.closed_at == NOW - 2 * HOUR and state.purposes == ()

    d = decide(state, late, FAN)

    assert d.outcome is Outcome.AFTER_CLOSURE
    assert d.instructions == () and not d.consent_changed and d.request is None
    assert d.state.purposes == () and d.state.permissions == ()
    assert d.state.version == state.version
    assert d.state.seen(late.event_id)


# ---- lineage and versions -------------------------------------------------------------


def _share_event(
    partner: str, categories: Sequence[str], refs: dict[str, str], at: int, done: int | None
) -> ConsentEvent:
    payload = DataShared(partner, tuple(categories), MappingProxyType(refs), done)
    return event(payload, f"share-{uuid.uuid4()}", at)


def test_shares_to_one_partner_with_the_same_categories_are_one_share() -> None:
    records = ("order_records", "delivery_details")
    events = [
        _share_event("logistics", records, {"order_no": "O-1"}, NOW - 9 * DAY, NOW - 5 * DAY),
        _share_event("logistics", records[::-1], {"order_no": "O-2"}, NOW - 8 * DAY, None),
        _share_event("logistics", ["order_records"], {"order_no": "O-3"}, NOW - 7 * DAY, None),
        # the latest retention start (the first share's completion) came first: it stays
        _share_event(
            "logistics", records, {"order_no": "O-1", "waybill_no": "W-1"}, NOW - 9 * DAY, None
        ),
    ]
    state = replay(events)

    assert [(s.partner, s.categories) for s in state.shares] == [
        ("logistics", ("delivery_details", "order_records")),
        ("logistics", ("order_records",)),
    ]
    merged = state.shares[0]
    assert merged.event_id == events[0].event_id
    assert merged.refs == (("order_no", "O-1"), ("order_no", "O-2"), ("waybill_no", "W-1"))
    assert (merged.shared_at, merged.transaction_completed_at) == (NOW - 9 * DAY, NOW - 5 * DAY)
    assert merged.retention_start == NOW - 5 * DAY
    assert state.shares[1].refs == (("order_no", "O-3"),)


def _sent_in_full(d: Decision) -> list[tuple[object, ...]]:
    return [
        (
            i.instruction_id,
            i.partner,
            i.action,
            i.categories,
            i.retain_until,
            i.due_by,
            {name: set(values.split(",")) for name, values in i.partner_refs.items()},
        )
        for i in d.instructions
    ]


_SHARE = st.sampled_from(sorted(POLICY.partners)).flatmap(
    lambda name: st.tuples(
        st.just(name),
        st.lists(st.sampled_from(sorted(POLICY.partners[name].receives)), min_size=1, unique=True),
        st.dictionaries(
            st.sampled_from(["order_no", "waybill_no"]), st.sampled_from(["1", "2", "3"])
        ),
        st.integers(1, 1_500),  # days ago: either side of the 3-year retention
        st.none() | st.integers(0, 400),  # completed this many days after
    )
)


@settings(max_examples=300, deadline=None)
@given(
    shares=st.lists(_SHARE, min_size=1, max_size=12),
    deleted=st.none() | st.lists(st.sampled_from(sorted(POLICY.categories)), min_size=1),
)
def test_merged_shares_delete_exactly_what_the_separate_shares_would(
    shares: list[tuple[str, list[str], dict[str, str], int, int | None]],
    deleted: list[str] | None,
) -> None:
    events = [
        _share_event(p, cats, refs, NOW - days * DAY, None if d is None else NOW - (days - d) * DAY)
        for p, cats, refs, days, d in shares
    ]
    merged = replay(events)
    # each data.shared on its own, as the state held them before shares were merged
    separate = SubjectState(SUBJECT, shares=tuple(share_of(e, e.payload) for e in events))
    scope = DeletionScope.ACCOUNT if deleted is None else DeletionScope.CATEGORIES
    request = DeletionRequested(eid("deletion"), scope, "asked", tuple(deleted or ()))
    deletion = event(request, "deletion", NOW - HOUR)

    assert len(merged.shares) <= len(separate.shares)
    assert _sent_in_full(decide(merged, deletion, FAN)) == _sent_in_full(
        decide(separate, deletion, FAN)
    )


def test_data_shared_builds_lineage_without_instructions() -> None:
    refs = MappingProxyType({"waybill_no": "W-9", "order_no": "O-1"})
    e = event(
        DataShared("logistics", ("order_records", "delivery_details"), refs, NOW - 2 * DAY),
        "share-logistics",
        NOW - DAY,
    )
    d = decide(SubjectState(SUBJECT), e, FAN)

    assert d.outcome is Outcome.APPLIED
    assert d.instructions == () and not d.consent_changed and d.request is None
    assert d.state.shares == (
        Share(
            e.event_id,
            "logistics",
            ("delivery_details", "order_records"),
            (("order_no", "O-1"), ("waybill_no", "W-9")),
            NOW - DAY,
            NOW - 2 * DAY,
        ),
    )
    more = decide(d.state, shared("ads", ["behaviour"]), FAN)
    assert [s.partner for s in more.state.shares] == ["logistics", "ads"]


def test_version_increments_only_on_applied() -> None:
    e1 = withdraw("personalized_ads", at=NOW - HOUR)
    steps = [
        (e1, Outcome.APPLIED, 1),
        (e1, Outcome.DUPLICATE, 1),
        (grant("personalized_ads", at=NOW - 2 * HOUR), Outcome.STALE, 1),
        (shared("ads", ["behaviour"]), Outcome.APPLIED, 2),
        (close_account(NOW - HOUR // 2), Outcome.APPLIED, 3),
        (grant("research_sharing"), Outcome.AFTER_CLOSURE, 3),
    ]
    state = SubjectState(SUBJECT)
    for e, outcome, version in steps:
        d = decide(state, e, FAN)
        assert (d.outcome, d.state.version) == (outcome, version)
        state = d.state


def test_decide_is_deterministic() -> None:
    e = withdraw("personalized_ads")
    later = FanOut(POLICY, PSEUDONYMS, NOW + DAY)
    a = decide(SubjectState(SUBJECT), e, FAN)
    b = decide(SubjectState(SUBJECT), e, FAN)
    c = decide(SubjectState(SUBJECT), e, later)

    assert a == b
    assert [i.instruction_id for i in c.instructions] == [i.instruction_id for i in a.instructions]
