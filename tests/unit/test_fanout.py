"""Deletion fan-out over the default policy: who gets ERASE or RESTRICT, with which
references, retention and deadline; the request as first recorded. Pure, no Kafka."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import pytest

from schemas.events import (
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    Payload,
)
from schemas.partner import InstructionAction, PartnerInstruction
from schemas.policy import load_policy
from schemas.settings import Secret, SubjectKeys
from streams.events.decisions import Decision, Outcome, decide, shared_without_refs
from streams.fanout import FanOut, merge_refs
from streams.pseudonyms import Pseudonyms, instruction_id
from streams.subject import Share, SubjectState

POLICY = load_policy()
PSEUDONYMS = Pseudonyms(SubjectKeys.single(Secret("k")))
NOW = 1_700_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
RETENTION = 1095 * DAY  # [retention.transaction_records] duration
SUBJECT = "buyer-4711@example.com"
FAN = FanOut(POLICY, PSEUDONYMS, NOW)
TX_DONE = NOW - 10 * DAY  # a recent transaction: retention still running

ERASE = InstructionAction.ERASE
RESTRICT = InstructionAction.RESTRICT


def eid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"test:{name}"))


REQUEST = eid("request")


def event(payload: Payload, name: str, at: int) -> ConsentEvent:
    return ConsentEvent(eid(name), SUBJECT, at, "test", payload)


def shared(
    partner: str,
    categories: Sequence[str],
    refs: Mapping[str, str],
    *,
    tx: int | None = TX_DONE,
    at: int = NOW - 20 * DAY,
    name: str | None = None,
) -> ConsentEvent:
    payload = DataShared(partner, tuple(categories), MappingProxyType(dict(refs)), tx)
    return event(payload, name or f"shared-{partner}-{sorted(refs.items())}-{at}", at)


def delete(
    scope: DeletionScope = DeletionScope.ACCOUNT,
    categories: Sequence[str] = (),
    request: str = REQUEST,
    at: int = NOW - HOUR,
) -> ConsentEvent:
    payload = DeletionRequested(request, scope, "user request", tuple(categories))
    return event(payload, f"delete-{request}-{at}", at)


def lineage(*events: ConsentEvent) -> SubjectState:
    state = SubjectState(SUBJECT)
    for e in events:
        d = decide(state, e, FAN)
        assert d.outcome is Outcome.APPLIED
        state = d.state
    return state


def default_lineage(tx: int | None = TX_DONE) -> SubjectState:
    return lineage(
        shared(
            "payment", ["payment_records", "bank_account"], {"payment_account_ref": "PA-7"}, tx=tx
        ),
        shared(
            "logistics",
            ["delivery_details", "order_records"],
            {"order_no": "O-1", "waybill_no": "W-1"},
            tx=tx,
        ),
        shared("ads", ["pseudonymous_ids", "behaviour"], {"ad_id": "AD-3"}, tx=None),
    )


Row = tuple[str, InstructionAction, tuple[str, ...], int | None]


def rows(instructions: Sequence[PartnerInstruction]) -> list[Row]:
    return [(i.partner, i.action, i.categories, i.retain_until) for i in instructions]


# ---- account deletion -----------------------------------------------------------------


def test_account_deletion_reaches_exactly_the_partners_holding_data() -> None:
    d = decide(default_lineage(), delete(), FAN)

    assert d.outcome is Outcome.APPLIED
    assert rows(d.instructions) == [
        ("ads", ERASE, ("behaviour", "pseudonymous_ids"), None),
        ("logistics", ERASE, ("delivery_details",), None),
        ("logistics", RESTRICT, ("order_records",), TX_DONE + RETENTION),
        # payment's retention covers everything it holds (partner-wide rule)
        ("payment", RESTRICT, ("bank_account", "payment_records"), TX_DONE + RETENTION),
    ]
    assert "research" not in {i.partner for i in d.instructions}  # never received data


def test_deletion_instruction_fields() -> None:
    e = delete()
    d = decide(default_lineage(), e, FAN)
    by = {(i.partner, i.action): i for i in d.instructions}

    for ins in d.instructions:
        assert ins.request_id == REQUEST and ins.ack_key == REQUEST
        assert ins.source_event_id == e.event_id
        assert ins.instruction_id == instruction_id(e.event_id, ins.partner, ins.action.value)
        assert ins.issued_at == NOW and ins.due_by == NOW + 7 * DAY
        assert ins.purposes == ()
        assert ins.subject_ref == PSEUDONYMS.subject_ref(ins.partner, SUBJECT)
    assert by["ads", ERASE].subject_id is None
    assert by["payment", RESTRICT].subject_id == SUBJECT
    assert by["logistics", ERASE].subject_id == SUBJECT
    assert dict(by["payment", RESTRICT].partner_refs) == {"payment_account_ref": "PA-7"}
    assert dict(by["logistics", ERASE].partner_refs) == {"order_no": "O-1", "waybill_no": "W-1"}
    assert dict(by["ads", ERASE].partner_refs) == {"ad_id": "AD-3"}
    assert len({i.instruction_id for i in d.instructions}) == len(d.instructions)


def test_account_deletion_closes_and_clears_the_subject() -> None:
    state = lineage(
        shared("ads", ["behaviour"], {"ad_id": "AD-3"}),
        event(DataShared("research", ("deidentified_data",)), "share-research", NOW - DAY),
    )
    d = decide(state, delete(at=NOW - HOUR), FAN)

    assert d.consent_changed
    assert d.state.closed_at == NOW - HOUR and d.state.closed_by_request == REQUEST
    assert d.state.shares == () and d.state.purposes == () and d.state.permissions == ()


def test_deletion_without_lineage_sends_nothing_but_opens_the_request() -> None:
    d = decide(SubjectState(SUBJECT), delete(), FAN)

    assert d.outcome is Outcome.APPLIED and d.instructions == ()
    assert d.request is not None and d.request.request_id == REQUEST


@pytest.mark.parametrize(
    ("tx", "shared_at", "payment_action", "until"),
    [
        pytest.param(
            NOW - 10 * DAY,
            NOW - 20 * DAY,
            RESTRICT,
            NOW - 10 * DAY + RETENTION,
            id="recent-transaction-restrict",
        ),
        pytest.param(
            NOW - 4 * 365 * DAY,
            NOW - 5 * 365 * DAY,
            ERASE,
            None,
            id="transaction-4-years-ago-erase",
        ),
        pytest.param(
            NOW - RETENTION, NOW - RETENTION - DAY, ERASE, None, id="retention-ends-now-erase"
        ),
        pytest.param(
            NOW - RETENTION + 1,
            NOW - RETENTION,
            RESTRICT,
            NOW + 1,
            id="retention-ends-in-1ms-restrict",
        ),
        pytest.param(
            None,
            NOW - 30 * DAY,
            RESTRICT,
            NOW - 30 * DAY + RETENTION,
            id="no-completion-time-uses-shared-time",
        ),
    ],
)
def test_retention_decides_between_restrict_and_erase(
    tx: int | None, shared_at: int, payment_action: InstructionAction, until: int | None
) -> None:
    state = lineage(
        shared("payment", ["payment_records"], {"payment_account_ref": "PA-7"}, tx=tx, at=shared_at)
    )
    (ins,) = decide(state, delete(), FAN).instructions

    assert (ins.partner, ins.action, ins.retain_until) == ("payment", payment_action, until)
    assert ins.categories == ("payment_records",)


def test_retention_is_the_latest_end_over_the_partners_shares() -> None:
    state = lineage(
        shared("logistics", ["order_records"], {"order_no": "O-1"}, tx=NOW - 300 * DAY),
        shared("logistics", ["order_records"], {"order_no": "O-2"}, tx=NOW - 3 * DAY),
    )
    (ins,) = decide(state, delete(), FAN).instructions

    assert ins.action is RESTRICT and ins.retain_until == NOW - 3 * DAY + RETENTION


# ---- category deletion ----------------------------------------------------------------


def test_category_deletion_reaches_only_the_named_categories_and_keeps_the_rest() -> None:
    e = delete(DeletionScope.CATEGORIES, ["delivery_details", "behaviour"])
    d = decide(default_lineage(), e, FAN)

    assert rows(d.instructions) == [
        ("ads", ERASE, ("behaviour",), None),
        ("logistics", ERASE, ("delivery_details",), None),
    ]
    assert not d.consent_changed and d.state.closed_at is None
    assert [(s.partner, s.categories) for s in d.state.shares] == [
        ("payment", ("bank_account", "payment_records")),
        ("logistics", ("order_records",)),
        ("ads", ("pseudonymous_ids",)),
    ]
    # a later account closure reaches only what is left
    closure = decide(d.state, delete(request=eid("closure"), at=NOW - HOUR // 2), FAN)
    assert rows(closure.instructions) == [
        ("ads", ERASE, ("pseudonymous_ids",), None),
        ("logistics", RESTRICT, ("order_records",), TX_DONE + RETENTION),
        ("payment", RESTRICT, ("bank_account", "payment_records"), TX_DONE + RETENTION),
    ]


def test_category_deletion_of_data_nobody_holds_sends_nothing() -> None:
    d = decide(default_lineage(), delete(DeletionScope.CATEGORIES, ["biometrics"]), FAN)

    assert d.instructions == () and d.request is not None
    assert len(d.state.shares) == 3


# ---- references -----------------------------------------------------------------------


def test_references_of_several_shares_are_merged_and_comma_joined() -> None:
    state = lineage(
        shared("logistics", ["delivery_details"], {"order_no": "O-1", "waybill_no": "W-1"}),
        shared("logistics", ["delivery_details"], {"order_no": "O-2", "waybill_no": "W-2"}),
        shared("logistics", ["delivery_details"], {"order_no": "O-1", "waybill_no": "W-3"}),
    )
    (ins,) = decide(state, delete(), FAN).instructions

    assert dict(ins.partner_refs) == {"order_no": "O-1,O-2", "waybill_no": "W-1,W-2,W-3"}


@pytest.mark.parametrize(
    ("refs", "merged"),
    [
        pytest.param([], (), id="none"),
        pytest.param([[("a", "1")]], (("a", "1"),), id="one"),
        pytest.param(
            [[("b", "2"), ("a", "1")], [("a", "1")]],
            (("a", "1"), ("b", "2")),
            id="duplicate-value-once-sorted-names",
        ),
        pytest.param([[("a", "2")], [("a", "1")]], (("a", "2,1"),), id="first-seen-order"),
    ],
)
def test_merge_refs(refs: list[list[tuple[str, str]]], merged: tuple[tuple[str, str], ...]) -> None:
    shares = [
        Share(f"e{n}", "logistics", ("order_records",), tuple(r), 0) for n, r in enumerate(refs)
    ]
    assert merge_refs(shares) == merged


# ---- references dropped (the subject's state was full) ---------------------------------


def without_refs(state: SubjectState, e: ConsentEvent) -> SubjectState:
    d = shared_without_refs(state, e, FAN)
    assert d.outcome is Outcome.APPLIED and d.instructions == ()
    return d.state


def lacking(d: Decision) -> list[tuple[str, InstructionAction, int]]:
    return [
        (i.partner, i.action, i.references_dropped) for i in d.instructions if i.references_dropped
    ]


def test_instructions_lacking_dropped_references_are_counted() -> None:
    state = default_lineage()
    more = {"order_no": "O-2", "waybill_no": "W-2"}
    for n in range(2):  # two orders whose references did not fit
        late = shared("logistics", ["order_records"], more, name=f"order-{n}")
        state = without_refs(state, late)
    state = without_refs(state, shared("ads", ["behaviour"], {"ad_id": "AD-4"}))
    log = [s for s in state.shares if s.partner == "logistics"]
    assert [(s.categories, s.refs_dropped) for s in log] == [
        (("delivery_details", "order_records"), 0),
        (("order_records",), 2),  # one share, both records counted, no references kept
    ]
    assert [s.refs for s in log][1] == ()

    d = decide(state, delete(), FAN)

    assert lacking(d) == [("ads", ERASE, 1), ("logistics", RESTRICT, 2)]
    (restrict,) = [i for i in d.instructions if i.action is RESTRICT and i.partner == "logistics"]
    assert dict(restrict.partner_refs) == {"order_no": "O-1", "waybill_no": "W-1"}
    behaviour = decide(state, delete(DeletionScope.CATEGORIES, ["behaviour"]), FAN)
    assert lacking(behaviour) == [("ads", ERASE, 1)]
    payment = decide(state, delete(DeletionScope.CATEGORIES, ["payment_records"]), FAN)
    assert payment.instructions and lacking(payment) == []


def test_nothing_is_counted_when_every_reference_was_kept() -> None:
    state = default_lineage()
    d = decide(state, delete(), FAN)
    assert d.instructions and lacking(d) == []


def test_data_shared_after_closure_without_its_references_is_counted() -> None:
    state = lineage(delete(request=eid("closure"), at=NOW - 2 * HOUR))
    late = shared("ads", ["behaviour"], {"ad_id": "AD-9"}, at=NOW - HOUR, name="late-ads")

    d = shared_without_refs(state, late, FAN)

    (erase,) = d.instructions
    assert erase.action is ERASE and dict(erase.partner_refs) == {}
    assert erase.references_dropped == 1


# ---- data shared after closure --------------------------------------------------------


def test_data_shared_after_closure_is_deleted_under_the_closure_request() -> None:
    closure = eid("closure")
    state = lineage(delete(request=closure, at=NOW - 2 * HOUR))
    late = shared(
        "logistics",
        ["delivery_details", "order_records"],
        {"order_no": "O-9"},
        at=NOW - HOUR,
        name="late-share",
    )
    d = decide(state, late, FAN)

    assert d.outcome is Outcome.APPLIED and d.request is None
    assert rows(d.instructions) == [
        ("logistics", ERASE, ("delivery_details",), None),
        ("logistics", RESTRICT, ("order_records",), TX_DONE + RETENTION),
    ]
    for ins in d.instructions:
        assert ins.request_id == closure and ins.ack_key == closure
        assert ins.source_event_id == late.event_id
        assert dict(ins.partner_refs) == {"order_no": "O-9"}
    assert d.state.shares == ()  # nothing kept for a closed account


# ---- request opening and ids ----------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "categories", "store_erased_at"),
    [
        pytest.param(DeletionScope.ACCOUNT, (), NOW, id="account"),
        pytest.param(
            DeletionScope.CATEGORIES, ("order_records", "behaviour"), None, id="categories"
        ),
    ],
)
def test_request_opening(
    scope: DeletionScope, categories: tuple[str, ...], store_erased_at: int | None
) -> None:
    requested_at = NOW - 3 * HOUR
    d = decide(default_lineage(), delete(scope, categories, at=requested_at), FAN)

    r = d.request
    assert r is not None
    assert r.request_id == REQUEST and r.scope is scope
    assert r.categories == tuple(sorted(categories))
    assert r.requested_at == requested_at and r.received_at == NOW
    assert r.due_by == requested_at + 15 * DAY
    assert r.store_erased_at == store_erased_at
    assert r.subject_digest == PSEUDONYMS.evidence_digest(SUBJECT)
    assert SUBJECT not in r.subject_digest and "4711" not in r.subject_digest


def test_instruction_ids_are_deterministic_and_distinct_per_partner_and_action() -> None:
    e = delete()
    first: Decision = decide(default_lineage(), e, FAN)
    again = decide(default_lineage(), e, FanOut(POLICY, PSEUDONYMS, NOW + HOUR))
    other = decide(default_lineage(), delete(request=eid("other"), at=NOW - HOUR + 1), FAN)

    ids = [i.instruction_id for i in first.instructions]
    assert ids == [i.instruction_id for i in again.instructions]
    assert len(set(ids)) == 4
    assert set(ids).isdisjoint(i.instruction_id for i in other.instructions)
    for i in ids:
        assert uuid.UUID(i).version == 5


def test_subject_refs_differ_per_partner_and_per_key() -> None:
    refs = {p: PSEUDONYMS.subject_ref(p, SUBJECT) for p in POLICY.partners}
    other_key = Pseudonyms(SubjectKeys.single(Secret("another key")))

    assert len(set(refs.values())) == len(refs)
    assert all(SUBJECT not in r for r in refs.values())
    assert other_key.subject_ref("ads", SUBJECT) != refs["ads"]
