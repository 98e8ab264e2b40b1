"""A subject's state stays within what one changelog record holds (``streams.events.state_limit``).

Pure: batches are planned with ``plan_within`` over a dict of encoded states, no Kafka.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType

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
from schemas.serde import AvroSerde
from schemas.settings import Secret, SubjectKeys
from schemas.views import PermissionRevocation
from streams.events.batch import EventBatch, plan_batch, plan_within
from streams.events.decisions import Outcome, decide
from streams.events.state_limit import StateLimit
from streams.fanout import FanOut
from streams.inbound import Inbound
from streams.pseudonyms import Pseudonyms
from streams.subject import SubjectState, state_from_json, state_to_json

POLICY = load_policy()
FAN = FanOut(POLICY, Pseudonyms(SubjectKeys.single(Secret("k"))), 1_700_000_000_000)
SERDE = AvroSerde()
EVENTS = "consent.events.v1"
NOW = FAN.now_ms
SUBJECT = "buyer-4711@example.com"
LIMIT = StateLimit(4096)  # a state may grow by lineage up to 3,840 bytes


def event(payload: Payload, at: int, subject: str = SUBJECT) -> ConsentEvent:
    return ConsentEvent(str(uuid.uuid4()), subject, at, "test", payload)


def order(n: int, subject: str = SUBJECT, ref_bytes: int = 200) -> ConsentEvent:
    """Order ``n`` shared with logistics: one reference of about ``ref_bytes``."""
    refs = MappingProxyType({f"waybill-{n}": f"{n:08d}".ljust(ref_bytes, "x")})
    payload = DataShared("logistics", ("delivery_details",), refs, NOW - 3_600_000)
    return event(payload, NOW - 3_600_000 + n, subject)


def withdrawal(at: int = NOW - 1_000, subject: str = SUBJECT) -> ConsentEvent:
    payload = ConsentChanged("personalized_ads", ConsentDecision.WITHDRAWN, "2023-09-01", "app")
    return event(payload, at, subject)


def records(events: Sequence[ConsentEvent]) -> list[Inbound]:
    return [
        Inbound(e.subject_id.encode(), SERDE.encode(e, EVENTS), {}, EVENTS, 0, i)
        for i, e in enumerate(events)
    ]


def parse(record: Inbound) -> ConsentEvent:
    return SERDE.decode_as(record.value, ConsentEvent, record.topic)


def plan(
    events: Sequence[ConsentEvent], stored: dict[bytes, bytes], limit: StateLimit = LIMIT
) -> EventBatch:
    """One batch; its encoded states are written to ``stored`` (the table)."""
    batch, encoded = plan_within(records(events), parse, stored.get, FAN, limit)
    assert set(encoded) == set(batch.states)
    for key, (_, state) in batch.states.items():
        assert encoded[key] == state_to_json(state)
    stored.update(encoded)
    return batch


def refused(batch: EventBatch) -> list[int]:
    """Offsets of the records refused for their subject's state size."""
    return [r.record.offset for r in batch.rejected if r.error.reason == "state_too_large"]


def dropped(batch: EventBatch) -> list[int]:
    """Offsets of the records applied without their references (and dead-lettered)."""
    return [r.record.offset for r in batch.rejected if r.error.reason == "references_dropped"]


def bare(e: ConsentEvent) -> ConsentEvent:
    """``e`` (a data.shared) as applied when its references do not fit."""
    assert isinstance(e.payload, DataShared)
    return replace(e, payload=replace(e.payload, partner_refs=MappingProxyType({})))


def apply(state: SubjectState, e: ConsentEvent, without_refs: bool = False) -> SubjectState:
    """``decide`` as ``plan_within`` applies ``e``: without its references, its id not
    remembered, when they did not fit."""
    if not without_refs:
        return decide(state, e, FAN).state
    applied = decide(state, bare(e), FAN).state
    assert isinstance(e.payload, DataShared)
    partner = e.payload.partner
    shares = tuple(
        replace(s, refs_dropped=s.refs_dropped + 1) if s.partner == partner else s
        for s in applied.shares
    )
    return replace(applied, shares=shares, recent_event_ids=state.recent_event_ids)


def full(stored: dict[bytes, bytes]) -> int:
    """Fills ``SUBJECT``'s lineage (orders to logistics); how many kept their references."""
    batch = plan([order(n) for n in range(30)], stored)
    assert refused(batch) == [] and 0 < len(dropped(batch)) < 30
    return 30 - len(dropped(batch))


def test_orders_past_the_lineage_budget_are_applied_without_their_references() -> None:
    stored: dict[bytes, bytes] = {}
    orders = [order(n) for n in range(30)]

    batch = plan(orders, stored)

    assert batch.outcomes == [("data.shared", Outcome.APPLIED)] * 30
    kept = 30 - len(dropped(batch))
    assert 0 < kept < 30 and dropped(batch) == list(range(kept, 30)) and refused(batch) == []
    error = batch.rejected[0].error
    assert "data.shared" in str(error) and SUBJECT not in str(error)
    assert "without its references" in str(error)
    state = SubjectState(SUBJECT)
    for n, e in enumerate(orders):
        state = apply(state, e, without_refs=n >= kept)
    raw = stored[SUBJECT.encode()]
    assert raw == state_to_json(state)  # every order, in order; the last ones bare
    assert [r for s in state.shares for r in s.refs] == [
        (f"waybill-{n}", f"{n:08d}".ljust(200, "x")) for n in range(kept)
    ]
    assert state.shares[0].shared_at == orders[-1].occurred_at  # the latest retention
    assert state.shares[0].refs_dropped == 30 - kept  # counted for the deletion's evidence
    assert len(raw) <= LIMIT.growth_bytes
    assert len(state_to_json(decide(state, orders[kept], FAN).state)) > LIMIT.growth_bytes


def test_a_full_subjects_share_with_a_new_partner_still_reaches_it_on_deletion() -> None:
    """The partner, categories and times of a share always fit (the policy bounds them):
    a deletion tells every partner the subject's data went to."""
    stored: dict[bytes, bytes] = {}
    kept = full(stored)
    refs = MappingProxyType({"invoice": "i" * 300})
    paid = event(DataShared("payment", ("payment_records",), refs, NOW - 7_200_000), NOW - 60)
    request = DeletionRequested(str(uuid.uuid4()), DeletionScope.ACCOUNT, "closing")

    shared = plan([paid], stored)
    deletion = plan([event(request, NOW - 10)], stored)

    assert shared.outcomes == [("data.shared", Outcome.APPLIED)] and dropped(shared) == [0]
    by_partner = {i.partner: i for i, _ in deletion.instructions}
    assert set(by_partner) == {"logistics", "payment"}
    assert by_partner["payment"].categories == ("payment_records",)
    assert dict(by_partner["payment"].partner_refs) == {}  # they are in the dead letter
    assert by_partner["payment"].action is InstructionAction.RESTRICT  # retention kept
    assert set(by_partner["logistics"].partner_refs) == {f"waybill-{n}" for n in range(kept)}
    # the ledger's entry (and so the request status) says how many records' worth each lacks
    ((_, opened),) = deletion.tickets
    lacking = {by_id: n for by_id, n in opened.refs_dropped}
    assert lacking == {
        by_partner["logistics"].instruction_id: 30 - kept,
        by_partner["payment"].instruction_id: 1,
    }


def test_a_dropped_order_published_again_once_the_limit_is_raised_applies_in_full() -> None:
    stored: dict[bytes, bytes] = {}
    extra = order(99)
    kept = full(stored)
    assert dropped(plan([extra], stored)) == [0]

    again = plan([extra], stored, StateLimit(8192))  # the record from the dead-letter topic

    assert again.outcomes == [("data.shared", Outcome.APPLIED)] and again.rejected == []
    (share,) = state_from_json(stored[SUBJECT.encode()]).shares
    assert ("waybill-99", f"{99:08d}".ljust(200, "x")) in share.refs
    assert len(share.refs) == kept + 1


def test_the_budget_holds_across_batches_and_a_full_subject_still_withdraws() -> None:
    stored: dict[bytes, bytes] = {}
    first = plan([order(n) for n in range(10)], stored)
    assert first.rejected == []

    second = plan([order(n) for n in range(10, 30)] + [withdrawal()], stored)

    no = dropped(second)
    assert no and no == list(range(no[0], 20))  # the orders past the budget
    assert second.outcomes[-1] == ("consent.changed", Outcome.APPLIED)
    assert LIMIT.growth_bytes - 300 < len(stored[SUBJECT.encode()]) <= LIMIT.max_bytes
    revoked = event(PermissionRevoked(app_id="carrier-tracking"), NOW - 400)
    third = plan([withdrawal(NOW - 500), revoked, order(99)], stored)
    assert third.outcomes == [
        ("consent.changed", Outcome.APPLIED),
        ("permission.revoked", Outcome.APPLIED),
        ("data.shared", Outcome.APPLIED),
    ]
    assert dropped(third) == [2] and refused(third) == []


def test_a_share_that_cannot_fit_even_without_references_is_refused() -> None:
    """The whole limit is a hard one: a state already near it (here filled by permission
    revocations) takes no new share at all."""
    near = SubjectState(SUBJECT, 1)
    while len(state_to_json(near)) <= LIMIT.max_bytes - 100:
        n = len(near.permissions)
        revocation = PermissionRevocation(None, f"device-{n:04d}", "location", NOW - n)
        near = replace(near, permissions=(*near.permissions, revocation))
    assert len(state_to_json(near)) <= LIMIT.max_bytes
    stored = {SUBJECT.encode(): state_to_json(near)}

    batch = plan([order(1, ref_bytes=10)], stored)

    assert batch.outcomes == [] and refused(batch) == [0]
    assert stored[SUBJECT.encode()] == state_to_json(near)


def test_a_deletion_of_a_full_subject_sends_every_reference_it_kept() -> None:
    stored: dict[bytes, bytes] = {}
    kept = full(stored)
    request = DeletionRequested(str(uuid.uuid4()), DeletionScope.ACCOUNT, "closing")

    deletion = plan([event(request, NOW - 100)], stored)

    assert deletion.outcomes == [("deletion.requested", Outcome.APPLIED)]
    (ins,) = [i for i, _ in deletion.instructions if i.partner == "logistics"]
    assert ins.action is InstructionAction.ERASE
    assert set(ins.partner_refs) == {f"waybill-{n}" for n in range(kept)}
    assert ins.references_dropped == 30 - kept  # sent with it (streams.outbox)
    ((_, opened),) = deletion.tickets
    assert opened.refs_dropped == ((ins.instruction_id, 30 - kept),)
    assert len(stored[SUBJECT.encode()]) < 1024  # the lineage is gone: room again
    assert plan([order(100)], stored).rejected == []


def test_one_order_per_batch_never_takes_the_state_past_the_budget() -> None:
    stored: dict[bytes, bytes] = {}
    sizes = []
    for n in range(30):  # each order adds ~230 bytes: less than the 256 of headroom
        plan([order(n)], stored)
        sizes.append(len(stored[SUBJECT.encode()]))
    assert max(sizes) <= LIMIT.growth_bytes < max(sizes) + 230
    assert sizes[-1] == sizes[-2]  # full: the last orders kept no references


def test_orders_are_dropped_even_when_a_deletion_later_in_the_batch_makes_room() -> None:
    """What is dropped does not depend on how events are batched: the deletion's
    instructions carry the references of the state before it, which must have fitted."""
    events = [order(n) for n in range(30)] + [forget(NOW - 5_000, SUBJECT)]
    one_batch: dict[bytes, bytes] = {}
    one_each: dict[bytes, bytes] = {}

    together = dropped(plan(events, one_batch))
    alone = [n for n, e in enumerate(events) if dropped(plan([e], one_each))]

    assert together == alone and 0 < len(together) < 30
    assert one_batch == one_each


def test_other_subjects_in_the_batch_are_not_held_back() -> None:
    stored: dict[bytes, bytes] = {}
    other = "other@example.com"
    events = [order(n) for n in range(30)] + [order(n, other, ref_bytes=10) for n in range(5)]

    batch = plan(events, stored)

    assert batch.rejected and all(r.record.key == SUBJECT.encode() for r in batch.rejected)
    assert len(batch.outcomes) == 30 + 5
    assert len(stored[other.encode()]) < 1024


def test_a_batch_under_the_budget_is_planned_once_and_unchanged() -> None:
    stored: dict[bytes, bytes] = {}
    events = [order(n, ref_bytes=20) for n in range(5)] + [withdrawal()]

    batch = plan(events, stored)

    alone = plan_batch(records(events), parse, {}.get, FAN)
    assert batch.rejected == [] and batch.outcomes == alone.outcomes
    assert batch.states == alone.states


def test_refusal_rules() -> None:
    shared, consent = order(1), withdrawal()
    revoked = event(PermissionRevoked(app_id="carrier-tracking"), NOW - 5)
    deletion = event(DeletionRequested("r", DeletionScope.ACCOUNT, "x"), NOW - 5)
    top, budget = LIMIT.max_bytes, LIMIT.growth_bytes
    assert budget == 4096 - 256
    assert LIMIT.refusal(shared, 100, budget) is None
    assert LIMIT.refusal(shared, 100, budget + 1) is not None
    assert LIMIT.refusal(shared, budget + 10, budget + 10) is None  # did not grow
    assert LIMIT.refusal(shared, budget + 10, budget + 11) is not None
    for other in (consent, deletion, revoked, bare(shared)):
        assert LIMIT.refusal(other, budget, top) is None  # the headroom is theirs
        assert LIMIT.refusal(other, budget, top + 1) is not None
    assert LIMIT.refusal(deletion, top + 50, top + 1) is not None  # cannot be written


def forget(at: int, subject: str) -> ConsentEvent:
    """A deletion of the categories the orders shared (the lineage goes, the account stays)."""
    request = DeletionRequested(
        str(uuid.uuid4()), DeletionScope.CATEGORIES, "x", ("delivery_details",)
    )
    return event(request, at, subject)


def _decided(events: Sequence[ConsentEvent], bare_ids: set[str]) -> dict[bytes, SubjectState]:
    states: dict[bytes, SubjectState] = {}
    for e in events:
        key = e.subject_id.encode()
        state = states.get(key, SubjectState(e.subject_id))
        states[key] = apply(state, e, without_refs=e.event_id in bare_ids)
    return states


Planned = tuple[dict[bytes, bytes], set[str], set[str]]


def _planned(events: list[ConsentEvent], cuts: list[int]) -> Planned:
    """The table after the events in batches of the sizes in ``cuts`` (cycled), the ids
    of the events refused and of those applied without their references."""
    stored: dict[bytes, bytes] = {}
    no: set[str] = set()
    bare_ids: set[str] = set()
    start, i = 0, 0
    while start < len(events):
        chunk = events[start : start + cuts[i % len(cuts)]]
        batch = plan(chunk, stored)
        no |= {chunk[o].event_id for o in refused(batch)}
        bare_ids |= {chunk[o].event_id for o in dropped(batch)}
        start, i = start + len(chunk), i + 1
    return stored, no, bare_ids


KINDS = ["order", "order", "order", "withdraw", "forget"]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(KINDS), st.booleans(), st.integers(10, 400)),
        min_size=1,
        max_size=60,
    ),
    st.lists(st.integers(1, 40), min_size=1, max_size=10),
)
def test_whatever_the_batches_the_same_events_are_refused_and_states_stay_within(
    steps: list[tuple[str, bool, int]], cuts: list[int]
) -> None:
    subjects = ["a@example.com", "b@example.com"]
    at = NOW - 10_000
    events = [
        order(i, subjects[b], size)
        if kind == "order"
        else withdrawal(at + i, subjects[b])
        if kind == "withdraw"
        else forget(at + i, subjects[b])
        for i, (kind, b, size) in enumerate(steps)
    ]

    stored, no, bare_ids = _planned(events, cuts)

    assert (stored, no, bare_ids) == _planned(events, [1])  # one event per batch
    assert all(isinstance(e.payload, DataShared) for e in events if e.event_id in bare_ids)
    assert not no  # a share without references always fits beside these events
    for key, state in _decided(events, bare_ids).items():
        assert stored[key] == state_to_json(state)
        assert len(stored[key]) <= LIMIT.max_bytes
