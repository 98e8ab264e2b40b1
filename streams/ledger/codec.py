"""JSON codecs of the worker's internal data: ledger tickets (table values) and the
entries of the internal ``consent.ledger.v1`` topic. Internal, not a partner contract.

A ledger record carries the entries of one batch for one ledger partition
(``encode_entries``: a JSON list of ``[ticket key, entry]``), so the ledger agent reads
one record per partition and batch rather than one per entry. Tickets are placed by the
Java client's murmur2 of their key (``ledger_partition``), the placement Faust's producer
gave single-entry records (a single-entry record, ``encode_entry``, is still read).

Dataclasses (``RequestOpening``, ``PartnerOutcome``) are handed to orjson as they are: it
writes each as an object of its fields, in order (enums as their values, tuples as
lists), what ``dataclasses.asdict`` did at several times the cost."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from schemas.contracts import PARTNER_ACKNOWLEDGEMENT, PARTNER_INSTRUCTION
from schemas.events import DeletionScope
from schemas.partner import PartnerAcknowledgement, PartnerInstruction
from schemas.records import from_record, to_record
from schemas.views import OutcomeStatus, PartnerOutcome, RequestState
from streams.fanout import RequestOpening
from streams.ledger.tickets import AckEntry, Ticket, TrackedInstruction

__all__ = [
    "AckEntry",
    "DispatchedEntry",
    "LedgerEntry",
    "OpenEntry",
    "SweepEntry",
    "decode_entries",
    "decode_entry",
    "encode_entries",
    "encode_entry",
    "entries_by_partition",
    "ledger_partition",
    "ticket_from_json",
    "ticket_to_json",
]


@dataclass(frozen=True, slots=True)
class OpenEntry:
    key: str
    request: RequestOpening | None
    instructions: tuple[tuple[PartnerInstruction, str], ...]  # with refs digest
    refs_dropped: tuple[tuple[str, int], ...] = ()
    """Instructions (by id) lacking the references of some data.shared records, and how
    many (``PartnerInstruction.references_dropped``, which the instructions' own encoding
    does not keep)."""


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
    return orjson.dumps(_entry_doc(entry))


def _entry_doc(entry: LedgerEntry) -> dict[str, Any]:
    match entry:
        case OpenEntry():
            doc: dict[str, Any] = {
                "kind": "open",
                "key": entry.key,
                "request": entry.request,
                "instructions": [[_ins(i), d] for i, d in entry.instructions],
            }
            if entry.refs_dropped:
                doc["refs_dropped"] = entry.refs_dropped
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
    return doc


def decode_entry(data: bytes) -> LedgerEntry:
    return _entry_from(orjson.loads(data))


def encode_entries(entries: Iterable[tuple[str, LedgerEntry]]) -> bytes:
    """One ledger record holding many entries (of one ledger partition), in order."""
    docs = [[key, _entry_doc(entry)] for key, entry in entries]
    return orjson.dumps(docs)


def decode_entries(key: bytes | None, data: bytes) -> list[tuple[str, LedgerEntry]]:
    """The entries of a ledger record: many (``encode_entries``) or one (``encode_entry``,
    keyed by its ticket)."""
    doc = orjson.loads(data)
    if isinstance(doc, dict):
        return [((key or b"").decode(), _entry_from(doc))]
    return [(ticket, _entry_from(entry)) for ticket, entry in doc]


def ledger_partition(key: str, partitions: int) -> int:
    """The ledger partition of a ticket (the Java client's default partitioner)."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def entries_by_partition(
    entries: Sequence[tuple[str, LedgerEntry]], partitions: int
) -> dict[int, bytes]:
    """The ledger records of a batch of entries: one per partition, order kept."""
    grouped: dict[int, list[tuple[str, LedgerEntry]]] = {}
    for key, entry in entries:
        grouped.setdefault(ledger_partition(key, partitions), []).append((key, entry))
    return {partition: encode_entries(group) for partition, group in grouped.items()}


def _entry_from(doc: dict[str, Any]) -> LedgerEntry:
    kind = doc["kind"]
    if kind == "open":
        return OpenEntry(
            doc["key"],
            _opening_from(doc["request"]),
            tuple((_ins_from(i), d) for i, d in doc["instructions"]),
            tuple((i, n) for i, n in doc.get("refs_dropped", ())),
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
    doc: dict[str, Any] = {
        "key": t.key,
        "request": t.request,
        "status": t.status.value,
        "completed_at": t.completed_at,
        "dispatched_at": t.dispatched_at,
        "answered_at": t.answered_at,
        "overdue": t.overdue,
        "updated_at": t.updated_at,
        "instructions": [
            [i.outcome, None if i.sent is None else _ins(i.sent)] for i in t.instructions
        ],
    }
    if t.parked:
        doc["parked"] = [_entry_doc(a) for a in t.parked]
    return orjson.dumps(doc)


def ticket_from_json(data: bytes) -> Ticket:
    doc = orjson.loads(data)
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
        parked=tuple(_ack_from(a) for a in doc.get("parked", ())),
    )


def _ack_from(doc: dict[str, Any]) -> AckEntry:
    entry = _entry_from(doc)
    if not isinstance(entry, AckEntry):
        raise ValueError(f"a parked acknowledgement of kind {doc['kind']!r}")
    return entry
