"""Acknowledgements ahead of their tickets (``streams.parked``), through the ledger agent
with fakes: parked under their key, applied when the ticket opens, dropped and counted
after the grace period."""

from __future__ import annotations

from test_ledger_processor import (
    ADS,
    GRACE_MS,
    MINUTE,
    NOW,
    PAYMENT,
    REQUEST,
    Harness,
    _sweep_requests,
    answer,
    eid,
    in_progress,
    lone_instruction,
    published,
)

from schemas.views import OutcomeStatus, RequestState
from streams.ledger_codec import OpenEntry, SweepEntry, ticket_from_json, ticket_to_json
from streams.ticket_index import next_due, sweep_or_expiry_due

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


def test_an_ack_for_an_instruction_an_opened_ticket_does_not_track_is_ignored_at_once() -> None:
    h = Harness()
    in_progress(h)

    h.handle(REQUEST, answer(lone_instruction()))

    assert ticket_from_json(h.tickets[REQUEST.encode()]).parked == ()
    assert (
        h.metric(IGNORED, reason="unknown_instruction") == 1
        and h.metric(PARKED, partner="ads") == 0
    )
