"""Acknowledgements ahead of their tickets (``streams.ledger.parked``), through the ledger agent
with fakes: parked under their key, applied when the ticket opens, dropped and counted
after the grace period."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from test_ledger_processor import (
    ADS,
    GRACE_MS,
    HOUR,
    MINUTE,
    NOW,
    PAYMENT,
    POLICY,
    PSEUDONYMS,
    REQUEST,
    REQUESTS,
    SUBJECT,
    TX_DONE,
    Harness,
    _sweep_requests,
    answer,
    digest,
    eid,
    event,
    in_progress,
    lone_instruction,
    published,
)

from schemas.events import DataShared
from schemas.partner import PartnerInstruction
from schemas.views import OutcomeStatus, RequestState
from streams.events.decisions import decide
from streams.fanout import FanOut
from streams.ledger.codec import OpenEntry, SweepEntry, ticket_from_json, ticket_to_json
from streams.ledger.index import next_due, sweep_or_expiry_due
from streams.subject import SubjectState

PARKED = "consent_acknowledgements_parked_total"
IGNORED = "consent_acknowledgements_ignored_total"


def test_an_ack_before_its_lone_instruction_ticket_is_applied_when_the_ticket_opens() -> None:
    h = Harness()
    ins = lone_instruction()
    key = ins.instruction_id

    h.handle(key, answer(ins, received_at=NOW + MINUTE))

    placeholder = ticket_from_json(h.tickets[key.encode()])
    assert placeholder.request is None and placeholder.instructions == ()
    assert [p.ack.instruction_id for p in placeholder.parked] == [key]
    assert (
        h.metric(PARKED, partner="ads") == 1
        and h.metric(IGNORED, reason="unknown_instruction") == 0
    )
    assert h.metric("consent_acknowledgements_total", partner="ads", status="DONE") == 0

    h.handle(key, OpenEntry(key, None, ((ins, ""),)))

    assert h.tickets == {}  # answered on opening: a lone instruction is done with
    assert published(h) == [] and h.views.puts == []
    assert h.metric("consent_acknowledgements_total", partner="ads", status="DONE") == 1
    assert h.metric("consent_instruction_to_ack_seconds_sum", partner="ads") == 60.0


def test_an_ack_before_its_request_ticket_counts_in_the_published_status() -> None:
    h = Harness()
    h.handle(REQUEST, answer(ADS))
    assert published(h) == []

    in_progress(h)

    ticket = ticket_from_json(h.tickets[REQUEST.encode()])
    assert ticket.parked == ()
    assert ticket.find(ADS.instruction_id).outcome.status is OutcomeStatus.DONE  # type: ignore[union-attr]
    assert ticket.find(PAYMENT.instruction_id).pending  # type: ignore[union-attr]
    assert h.published() == [RequestState.RECEIVED, RequestState.IN_PROGRESS]
    assert h.metric("consent_acknowledgements_total", partner="ads", status="DONE") == 1


def test_a_parked_ack_from_the_wrong_partner_is_ignored_when_the_ticket_opens() -> None:
    h = Harness()
    h.handle(REQUEST, answer(ADS, via="logistics"))

    in_progress(h)

    ticket = ticket_from_json(h.tickets[REQUEST.encode()])
    assert ticket.parked == () and ticket.find(ADS.instruction_id).pending  # type: ignore[union-attr]
    assert h.metric(IGNORED, reason="wrong_partner") == 1
    assert h.metric("consent_acknowledgements_total", partner="ads", status="DONE") == 0


def test_the_same_ledger_record_delivered_again_parks_its_ack_once() -> None:
    h = Harness()
    entry = answer(ADS)

    h.handle(REQUEST, entry)
    h.handle(REQUEST, entry)

    assert ticket_from_json(h.tickets[REQUEST.encode()]).parked == (entry,)


def test_an_ack_whose_ticket_never_opens_is_dropped_after_the_grace_period() -> None:
    h = Harness()
    stray = eid("stray")
    received = NOW + MINUTE
    h.handle(stray, answer(ADS, received_at=received))
    placeholder = ticket_from_json(h.tickets[stray.encode()])
    assert next_due(placeholder, GRACE_MS) == received + GRACE_MS

    h.now = received + GRACE_MS - 1
    assert _sweep_requests(h) == []
    h.now = received + GRACE_MS
    assert _sweep_requests(h) == [stray]
    h.handle(stray, SweepEntry(h.now))

    assert h.tickets == {}
    (tombstone,) = [r for r in h.outbox.on("tickets-changelog") if r.key == stray.encode()]
    assert tombstone.value is None
    assert h.metric(IGNORED, reason="unknown_instruction") == 1


def test_an_opened_ticket_keeps_only_the_acks_still_unknown_and_their_due_time() -> None:
    h = Harness()
    other = answer(lone_instruction(), received_at=NOW + 2 * MINUTE)
    h.handle(REQUEST, answer(ADS, received_at=NOW + MINUTE))
    h.handle(REQUEST, other)

    in_progress(h)

    ticket = ticket_from_json(h.tickets[REQUEST.encode()])
    assert ticket.parked == (other,) and not ticket.settled
    assert ticket_from_json(ticket_to_json(ticket)) == ticket
    due = next_due(ticket, GRACE_MS)
    assert due is not None and due <= other.received_at + GRACE_MS
    assert sweep_or_expiry_due(ticket, due, GRACE_MS)
    assert not sweep_or_expiry_due(ticket, due - 1, GRACE_MS)


def test_an_ack_for_an_instruction_a_lone_ticket_does_not_track_is_ignored_at_once() -> None:
    h = Harness()
    ins = lone_instruction()
    key = ins.instruction_id
    h.handle(key, OpenEntry(key, None, ((ins, ""),)))
    other = replace(ins, instruction_id=eid("other"))

    h.handle(key, answer(other))

    assert ticket_from_json(h.tickets[key.encode()]).parked == ()
    assert (
        h.metric(IGNORED, reason="unknown_instruction") == 1
        and h.metric(PARKED, partner="ads") == 0
    )


def share_after_closure() -> PartnerInstruction:
    """The ERASE a share of the closed account's data adds to the closure's request."""
    closed = SubjectState(SUBJECT, closed_at=NOW - HOUR, closed_by_request=REQUEST)
    payload = DataShared("ads", ("behaviour",), MappingProxyType({"ad_id": "AD-9"}), TX_DONE)
    late = event(payload, "share-after-closure", NOW - MINUTE)
    (ins,) = decide(closed, late, FanOut(POLICY, PSEUDONYMS, NOW)).instructions
    assert ins.ack_key == REQUEST
    return ins


def test_an_ack_ahead_of_an_instruction_added_to_an_opened_request_is_parked() -> None:
    """A crash between the instruction and its ticket entry: the request's ticket is open,
    the answer to its new instruction comes first and waits for the entry."""
    h = Harness()
    in_progress(h)
    late = share_after_closure()
    statuses = len(h.outbox.on(REQUESTS))

    h.handle(REQUEST, answer(late))

    ticket = ticket_from_json(h.tickets[REQUEST.encode()])
    assert [p.ack.instruction_id for p in ticket.parked] == [late.instruction_id]
    assert h.metric(PARKED, partner="ads") == 1
    assert h.metric(IGNORED, reason="unknown_instruction") == 0
    assert len(h.outbox.on(REQUESTS)) == statuses  # the request's status did not change

    h.handle(REQUEST, OpenEntry(REQUEST, None, ((late, digest(late)),)))

    ticket = ticket_from_json(h.tickets[REQUEST.encode()])
    assert ticket.parked == ()
    assert ticket.find(late.instruction_id).outcome.status is OutcomeStatus.DONE  # type: ignore[union-attr]
    assert h.metric("consent_acknowledgements_total", partner="ads", status="DONE") == 1
    assert len(h.outbox.on(REQUESTS)) == statuses + 1  # now with the answered instruction
