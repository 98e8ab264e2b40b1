"""The demo workload: reproducible, valid, realistic, and in event-time order per subject."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter, defaultdict
from dataclasses import replace

import pytest

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
from schemas.partner import InstructionAction
from schemas.policy import Policy, load_policy
from schemas.settings import Secret, SubjectKeys
from schemas.validation import validate_event
from streams.demo.workload import Workload, WorkloadSpec, build_workload
from streams.events.decisions import Outcome, decide
from streams.fanout import FanOut
from streams.pseudonyms import Pseudonyms
from streams.subject import SubjectState

NOW_MS = 1_760_000_000_000
DAY_MS = 86_400_000
SPEC = WorkloadSpec(subjects=600, seed=11, now_ms=NOW_MS)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


@pytest.fixture(scope="module")
def workload(policy: Policy) -> Workload:
    return build_workload(policy, SPEC)


def by_subject(workload: Workload) -> dict[str, list[ConsentEvent]]:
    out: dict[str, list[ConsentEvent]] = defaultdict(list)
    for event in workload.events:
        out[event.subject_id].append(event)
    return out


def test_the_same_spec_gives_the_same_events(policy: Policy, workload: Workload) -> None:
    again = build_workload(policy, SPEC)
    assert again.events == workload.events
    assert dict(again.requests) == dict(workload.requests)
    other = build_workload(policy, replace(SPEC, seed=12))
    assert other.events != workload.events


def test_every_event_is_valid_and_ids_are_unique_uuids(policy: Policy, workload: Workload) -> None:
    for event in workload.events:
        validate_event(event, policy, NOW_MS)
    ids = [e.event_id for e in workload.events]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert len({e.subject_id for e in workload.events}) == SPEC.subjects


def test_event_times_are_recent_and_strictly_increasing_per_subject(workload: Workload) -> None:
    times = [e.occurred_at for e in workload.events]
    assert times == sorted(times)  # published in global event-time order
    assert all(NOW_MS - SPEC.window_ms <= t < NOW_MS - 60_000 for t in times)
    for events in by_subject(workload).values():
        own = [e.occurred_at for e in events]
        assert all(a < b for a, b in itertools.pairwise(own))


def test_thousands_of_events_of_every_kind(workload: Workload) -> None:
    counts = workload.count_by_type()
    assert sum(counts.values()) > 3 * SPEC.subjects
    assert set(counts) == {t.value for t in EventType}
    payloads = [e.payload for e in workload.events]
    decisions = Counter(p.decision for p in payloads if isinstance(p, ConsentChanged))
    assert decisions[ConsentDecision.WITHDRAWN] > 0 and decisions[ConsentDecision.GRANTED] > 0
    revoked = [p for p in payloads if isinstance(p, PermissionRevoked)]
    assert {p.app_id for p in revoked if p.app_id} == {"ads-insights", "carrier-tracking"}
    assert any(p.permission is not None and p.device_id for p in revoked)
    withdrawn = {
        p.purpose
        for p in payloads
        if isinstance(p, ConsentChanged) and p.decision is ConsentDecision.WITHDRAWN
    }
    assert {"personalized_ads", "ads_analytics", "marketing_sms"} <= withdrawn


def test_closures_are_the_configured_fraction_and_each_subjects_last_event(
    workload: Workload,
) -> None:
    scopes = workload.requests_by_scope()
    assert scopes[DeletionScope.ACCOUNT.value] == round(SPEC.subjects * SPEC.closure_fraction)
    assert scopes[DeletionScope.CATEGORIES.value] > 0
    for events in by_subject(workload).values():
        closures = [
            i
            for i, e in enumerate(events)
            if isinstance(e.payload, DeletionRequested) and e.payload.scope is DeletionScope.ACCOUNT
        ]
        assert closures in ([], [len(events) - 1])
    requested = {
        e.payload.request_id: e.payload.scope
        for e in workload.events
        if isinstance(e.payload, DeletionRequested)
    }
    assert requested == dict(workload.requests)


def test_no_closures_when_the_fraction_is_zero(policy: Policy) -> None:
    quiet = build_workload(policy, replace(SPEC, subjects=100, closure_fraction=0.0))
    assert DeletionScope.ACCOUNT.value not in quiet.requests_by_scope()


def test_shares_carry_the_partners_references_and_recent_transactions(
    workload: Workload,
) -> None:
    shares = [e.payload for e in workload.events if isinstance(e.payload, DataShared)]
    refs = {s.partner: set(s.partner_refs) for s in shares}
    assert refs["payment"] == {"payment_account_ref", "order_no"}
    assert refs["logistics"] == {"waybill_no", "order_no"}
    assert refs["ads"] == {"ad_id"}
    for share in shares:
        if share.partner in ("payment", "logistics"):
            assert share.transaction_completed_at is not None
            assert NOW_MS - 2 * 365 * DAY_MS < share.transaction_completed_at < NOW_MS
        else:
            assert share.transaction_completed_at is None
    orders = Counter(s.partner_refs["order_no"] for s in shares if s.partner == "payment")
    assert len(orders) > SPEC.subjects  # one to three orders per subject


def test_consent_changes_really_change_the_effective_decision(
    policy: Policy, workload: Workload
) -> None:
    for events in by_subject(workload).values():
        allowed = {p.name: p.default_allowed for p in policy.purposes.values()}
        for event in events:
            p = event.payload
            if isinstance(p, ConsentChanged):
                granted = p.decision is ConsentDecision.GRANTED
                assert allowed[p.purpose] != granted
                allowed[p.purpose] = granted
            if isinstance(p, DataShared) and p.partner == "research":
                assert allowed["research_sharing"]  # opt-in: shared only after the grant


def test_the_stream_decisions_send_work_to_every_partner(
    policy: Policy, workload: Workload
) -> None:
    fan = FanOut(policy, Pseudonyms(SubjectKeys.single(Secret("test-key"))), NOW_MS)
    states: dict[str, SubjectState] = {}
    actions: Counter[tuple[str, InstructionAction]] = Counter()
    for event in workload.events:
        decision = decide(states.get(event.subject_id, SubjectState(event.subject_id)), event, fan)
        assert decision.outcome is Outcome.APPLIED
        states[event.subject_id] = decision.state
        actions.update((i.partner, i.action) for i in decision.instructions)
    assert {partner for partner, _ in actions} == set(policy.partners)
    assert actions["payment", InstructionAction.RESTRICT] > 0  # retention applies
    assert actions["logistics", InstructionAction.RESTRICT] > 0
    assert actions["logistics", InstructionAction.ERASE] > 0
    assert actions["ads", InstructionAction.STOP_PROCESSING] > 0
    assert actions["ads", InstructionAction.ERASE] > 0
    assert actions["research", InstructionAction.RESUME_PROCESSING] > 0
    assert actions["ads", InstructionAction.REVOKE_ACCESS] > 0
    assert actions["logistics", InstructionAction.REVOKE_ACCESS] > 0
