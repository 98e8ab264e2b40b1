"""What a batch of inbound records implies, decided in memory (no I/O).

Records are decided in order against the subjects' states as the batch leaves them, so a
subject with several events in one batch sees each one applied on top of the previous.
The result lists every effect in the order the processor carries them out: ledger
tickets, the consent store, instructions and state records, then the changed states.
``plan_within`` also keeps each subject's state within what its changelog record holds
(``streams.events.state_limit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from schemas.cloudevents import published_at_ms
from schemas.errors import ContractError
from schemas.events import ConsentEvent
from schemas.partner import PartnerInstruction
from streams.events.decisions import Decision, Outcome, decide
from streams.events.state_limit import StateCheck, StateLimit
from streams.fanout import FanOut
from streams.inbound import Inbound
from streams.ledger.codec import OpenEntry
from streams.subject import SubjectState, state_from_json, state_to_json

__all__ = ["EventBatch", "Rejected", "StoreWrite", "plan_batch", "plan_within", "ticket_entries"]

Parse = Callable[[Inbound], ConsentEvent]
StateLookup = Callable[[bytes], bytes | None]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that goes to the dead-letter topic (as it came; a record applied in part
    also has its outcome)."""

    record: Inbound
    error: ContractError


@dataclass
class StoreWrite:
    """The consent state a subject's last consent change in the batch left, and the
    publish times of the events that changed it (for publish -> store)."""

    state: SubjectState
    published: list[int] = field(default_factory=list)


@dataclass
class EventBatch:
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    tickets: list[tuple[str, OpenEntry]] = field(default_factory=list)
    instructions: list[tuple[PartnerInstruction, int | None]] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)
    """The requests whose instructions the batch sends: each request's status becomes
    IN_PROGRESS once they are out. A lone instruction's ticket has no status anyone reads,
    so it gets no such entry."""
    store: dict[str, StoreWrite] = field(default_factory=dict)
    states: dict[bytes, tuple[int, SubjectState]] = field(default_factory=dict)
    taken: list[int] = field(default_factory=list)
    """The publish times of the batch's records that carry one (dead-lettered too)."""


def ticket_entries(d: Decision, refs_digest: Callable[..., str]) -> list[tuple[str, OpenEntry]]:
    """Ledger entries: one per request (with all its instructions) or lone instruction."""
    by_key: dict[str, list[PartnerInstruction]] = {}
    for ins in d.instructions:
        by_key.setdefault(ins.ack_key, []).append(ins)
    if d.request is not None:
        by_key.setdefault(d.request.request_id, [])
    return [
        (
            key,
            OpenEntry(
                key,
                d.request if d.request and d.request.request_id == key else None,
                tuple((i, refs_digest(i.partner_refs.items())) for i in items),
                tuple(
                    (i.instruction_id, i.references_dropped) for i in items if i.references_dropped
                ),
            ),
        )
        for key, items in by_key.items()
    ]


def plan_within(
    records: Sequence[Inbound], parse: Parse, stored: StateLookup, fan: FanOut, limit: StateLimit
) -> tuple[EventBatch, dict[bytes, bytes]]:
    """``plan_batch`` with every subject's state kept within ``limit``, and the changed
    states encoded. The subjects whose state the batch could take past
    ``limit.growth_bytes`` (``StateLimit.could_pass``) are checked event by event."""
    growth: dict[bytes, int] = {}
    for record in records:
        if record.key is not None:  # else refused: not the event's subject
            growth[record.key] = growth.get(record.key, 0) + limit.growth_bound(record.value)
    watched = [key for key, grows in growth.items() if limit.could_pass(stored(key), grows)]
    check = StateCheck(limit, frozenset(watched)) if watched else None
    batch = plan_batch(records, parse, stored, fan, check)
    known = check.encoded if check is not None else {}
    encoded = {key: known.get(key) or state_to_json(s) for key, (_, s) in batch.states.items()}
    return batch, encoded


def plan_batch(
    records: Sequence[Inbound],
    parse: Parse,
    stored: StateLookup,
    fan: FanOut,
    check: StateCheck | None = None,
) -> EventBatch:
    """Decide every record of the batch, in order; ``stored`` reads a subject's state.
    An event ``check`` refuses is rejected, its subject's state left as it was; one it
    admits in part (``StateCheck.admit``) is applied so and rejected too."""
    batch = EventBatch()
    current: dict[bytes, SubjectState] = {}
    for record in records:
        published = published_at_ms(record.headers)
        if published is not None:
            batch.taken.append(published)
        try:
            event = parse(record)
        except ContractError as exc:
            batch.rejected.append(Rejected(record, exc))
            continue
        key = event.subject_id.encode("utf-8")
        state = current.get(key)
        if state is None:
            raw = stored(key)
            state = state_from_json(raw) if raw else SubjectState(event.subject_id)
        decision = decide(state, event, fan)
        if check is not None and decision.state is not state:
            admitted, error = check.admit(key, state, event, decision, fan)
            if error is not None:
                batch.rejected.append(Rejected(record, error))
            if admitted is None:
                continue
            decision = admitted
        batch.outcomes.append((event.type.value, decision.outcome))
        if decision.outcome is Outcome.APPLIED:
            _effects(batch, event, decision, published, fan)
        if decision.state is not state:
            current[key] = decision.state
            batch.states[key] = (record.partition, decision.state)
    return batch


def _effects(
    batch: EventBatch, event: ConsentEvent, d: Decision, published: int | None, fan: FanOut
) -> None:
    tickets = ticket_entries(d, fan.pseudonyms.refs_digest)
    batch.tickets += tickets
    batch.instructions += [(ins, published) for ins in d.instructions]
    if d.instructions:  # a request's status says when its instructions are out
        batch.dispatched += [key for key, entry in tickets if entry.request is not None]
    if d.consent_changed:
        write = batch.store.get(event.subject_id)
        if write is None:
            write = batch.store[event.subject_id] = StoreWrite(d.state)
        write.state = d.state
        if published is not None:
            write.published.append(published)
