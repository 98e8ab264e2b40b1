"""JSON codecs of the worker's internal data: ledger tickets (table values) and the
entries of the internal ``consent.ledger.v1`` topic. Internal, not a partner contract."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from schemas.contracts import PARTNER_ACKNOWLEDGEMENT, PARTNER_INSTRUCTION
from schemas.events import DeletionScope
from schemas.partner import PartnerAcknowledgement, PartnerInstruction
from schemas.records import from_record, to_record
from schemas.views import OutcomeStatus, PartnerOutcome, RequestState
from streams.fanout import RequestOpening
from streams.ledger import Ticket, TrackedInstruction

__all__ = [
    "AckEntry",
    "DispatchedEntry",
    "LedgerEntry",
    "OpenEntry",
    "SweepEntry",
    "decode_entry",
    "encode_entry",
    "ticket_from_json",
    "ticket_to_json",
]


@dataclass(frozen=True, slots=True)
class OpenEntry:
    key: str
    request: RequestOpening | None
    instructions: tuple[tuple[PartnerInstruction, str], ...]  # with refs digest


@dataclass(frozen=True, slots=True)
class AckEntry:
    partner: str  # the partner whose acks topic it came from
    ack: PartnerAcknowledgement
    received_at: int


@dataclass(frozen=True, slots=True)
class DispatchedEntry:
    at: int


@dataclass(frozen=True, slots=True)
class SweepEntry:
    at: int


LedgerEntry = OpenEntry | AckEntry | DispatchedEntry | SweepEntry


def _ins(ins: PartnerInstruction) -> dict[str, Any]:
    return to_record(ins)


def _ins_from(rec: dict[str, Any]) -> PartnerInstruction:
    obj = from_record(PARTNER_INSTRUCTION, rec)
    assert isinstance(obj, PartnerInstruction)  # noqa: S101 - decoded by its own contract
    return obj


def _opening(r: RequestOpening | None) -> dict[str, Any] | None:
    return None if r is None else {**asdict(r), "categories": list(r.categories)}


def _opening_from(d: dict[str, Any] | None) -> RequestOpening | None:
    if d is None:
        return None
    return RequestOpening(
        **{**d, "scope": DeletionScope(d["scope"]), "categories": tuple(d["categories"])}
    )


def _outcome_from(d: dict[str, Any]) -> PartnerOutcome:
    return PartnerOutcome(
        **{**d, "status": OutcomeStatus(d["status"]), "categories": tuple(d["categories"])}
    )


def encode_entry(entry: LedgerEntry) -> bytes:
    match entry:
        case OpenEntry():
            doc: dict[str, Any] = {
                "kind": "open",
                "key": entry.key,
                "request": _opening(entry.request),
                "instructions": [[_ins(i), d] for i, d in entry.instructions],
            }
        case AckEntry():
            doc = {
                "kind": "ack",
                "partner": entry.partner,
                "ack": to_record(entry.ack),
                "received_at": entry.received_at,
            }
        case DispatchedEntry():
            doc = {"kind": "dispatched", "at": entry.at}
        case SweepEntry():
            doc = {"kind": "sweep", "at": entry.at}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_entry(data: bytes) -> LedgerEntry:
    doc = json.loads(data)
    kind = doc["kind"]
    if kind == "open":
        return OpenEntry(
            doc["key"],
            _opening_from(doc["request"]),
            tuple((_ins_from(i), d) for i, d in doc["instructions"]),
        )
    if kind == "ack":
        ack = from_record(PARTNER_ACKNOWLEDGEMENT, doc["ack"])
        assert isinstance(ack, PartnerAcknowledgement)  # noqa: S101
        return AckEntry(doc["partner"], ack, doc["received_at"])
    if kind == "dispatched":
        return DispatchedEntry(doc["at"])
    if kind == "sweep":
        return SweepEntry(doc["at"])
    raise ValueError(f"unknown ledger entry kind {kind!r}")


def ticket_to_json(t: Ticket) -> bytes:
    doc = {
        "key": t.key,
        "request": _opening(t.request),
        "status": t.status.value,
        "completed_at": t.completed_at,
        "dispatched_at": t.dispatched_at,
        "answered_at": t.answered_at,
        "overdue": t.overdue,
        "updated_at": t.updated_at,
        "instructions": [
            [
                {**asdict(i.outcome), "categories": list(i.outcome.categories)},
                None if i.sent is None else _ins(i.sent),
            ]
            for i in t.instructions
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def ticket_from_json(data: bytes) -> Ticket:
    doc = json.loads(data)
    return Ticket(
        key=doc["key"],
        request=_opening_from(doc["request"]),
        status=RequestState(doc["status"]),
        completed_at=doc["completed_at"],
        dispatched_at=doc.get("dispatched_at"),
        answered_at=doc.get("answered_at"),
        overdue=doc["overdue"],
        updated_at=doc["updated_at"],
        instructions=tuple(
            TrackedInstruction(_outcome_from(o), None if s is None else _ins_from(s))
            for o, s in doc["instructions"]
        ),
    )
