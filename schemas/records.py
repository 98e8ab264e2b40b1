"""The one explicit converter between domain objects and Avro records (dicts).

``to_record`` turns any contract object into the dict its ``.avsc`` describes;
``from_record`` turns a decoded dict back. Times are ms since the epoch in the domain
and ids strings; the single-object decoder reads them so (``Contract.parsed`` has no
logical types), a Schema Registry's deserializer hands back ``datetime`` / ``UUID``:
both are normalised and checked here, as fastavro's logical types would (a UUID's form, a
timestamp within ``datetime``'s range).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from schemas import contracts as c
from schemas.errors import SchemaMismatchError
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    EventType,
    Payload,
    PermissionRevoked,
)
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.views import (
    ConsentState,
    OutcomeStatus,
    PartnerOutcome,
    PermissionRevocation,
    PurposeDecision,
    RequestState,
    RequestStatus,
)

__all__ = ["CANONICAL_UUID", "Contracted", "contract_name_of", "from_record", "to_record"]

Record = dict[str, Any]
Contracted = (
    ConsentEvent | PartnerInstruction | PartnerAcknowledgement | ConsentState | RequestStatus
)


_MS_RANGE: Final = range(-62_135_596_800_000, 253_402_300_800_000)
"""Milliseconds since the epoch that a ``datetime`` holds (years 1-9999)."""
CANONICAL_UUID: Final = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    ms = int(value)
    if ms not in _MS_RANGE:
        raise ValueError(f"timestamp-millis {ms} out of range")
    return ms


def _opt_ms(value: Any) -> int | None:
    return None if value is None else _ms(value)


def _uuid(value: Any) -> str:
    if isinstance(value, str) and CANONICAL_UUID.fullmatch(value):
        return value  # already what str(UUID(value)) gives
    return str(value) if isinstance(value, uuid.UUID) else str(uuid.UUID(str(value)))


def _opt_uuid(value: Any) -> str | None:
    return None if value is None else _uuid(value)


def _refs(value: Mapping[str, str] | None) -> MappingProxyType[str, str]:
    return MappingProxyType(dict(value or {}))


# ---- inbound events -------------------------------------------------------------------

_PAYLOAD_NAMES = {
    ConsentChanged: "consentstream.v1.ConsentChanged",
    PermissionRevoked: "consentstream.v1.PermissionRevoked",
    DeletionRequested: "consentstream.v1.DeletionRequested",
    DataShared: "consentstream.v1.DataShared",
}


def _payload_record(payload: Payload) -> Record:
    match payload:
        case ConsentChanged():
            return {
                "purpose": payload.purpose,
                "decision": payload.decision.value,
                "notice_version": payload.notice_version,
                "method": payload.method,
            }
        case PermissionRevoked():
            return {
                "permission": payload.permission,
                "device_id": payload.device_id,
                "app_id": payload.app_id,
            }
        case DeletionRequested():
            return {
                "request_id": payload.request_id,
                "scope": payload.scope.value,
                "categories": list(payload.categories),
                "reason": payload.reason,
            }
        case DataShared():
            return {
                "partner": payload.partner,
                "categories": list(payload.categories),
                "partner_refs": dict(payload.partner_refs),
                "transaction_completed_at": payload.transaction_completed_at,
            }


def payload_from_record(event_type: EventType, rec: Record) -> Payload:
    """Build the payload of ``event_type`` from its record (or JSON) form."""
    match event_type:
        case EventType.CONSENT_CHANGED:
            return ConsentChanged(
                purpose=rec["purpose"],
                decision=ConsentDecision(rec["decision"]),
                notice_version=rec["notice_version"],
                method=rec["method"],
            )
        case EventType.PERMISSION_REVOKED:
            return PermissionRevoked(
                permission=rec.get("permission"),
                device_id=rec.get("device_id"),
                app_id=rec.get("app_id"),
            )
        case EventType.DELETION_REQUESTED:
            return DeletionRequested(
                request_id=_uuid(rec["request_id"]),
                scope=DeletionScope(rec["scope"]),
                categories=tuple(rec.get("categories") or ()),
                reason=rec["reason"],
            )
        case EventType.DATA_SHARED:
            return DataShared(
                partner=rec["partner"],
                categories=tuple(rec["categories"]),
                partner_refs=_refs(rec.get("partner_refs")),
                transaction_completed_at=_opt_ms(rec.get("transaction_completed_at")),
            )


def _event_record(event: ConsentEvent) -> Record:
    return {
        "event_id": event.event_id,
        "type": event.type.value,
        "subject_id": event.subject_id,
        "occurred_at": event.occurred_at,
        "source": event.source,
        "payload": (_PAYLOAD_NAMES[type(event.payload)], _payload_record(event.payload)),
    }


def _event_from(rec: Record) -> ConsentEvent:
    payload = rec["payload"]
    if isinstance(payload, tuple):  # fastavro with return_record_name
        payload = payload[1]
    return ConsentEvent(
        event_id=_uuid(rec["event_id"]),
        subject_id=rec["subject_id"],
        occurred_at=_ms(rec["occurred_at"]),
        source=rec["source"],
        payload=payload_from_record(EventType(rec["type"]), payload),
    )


# ---- partner instructions and acknowledgements ----------------------------------------


def _instruction_record(ins: PartnerInstruction) -> Record:
    return {
        "instruction_id": ins.instruction_id,
        "source_event_id": ins.source_event_id,
        "request_id": ins.request_id,
        "partner": ins.partner,
        "action": ins.action.value,
        "purposes": list(ins.purposes),
        "categories": list(ins.categories),
        "partner_refs": dict(ins.partner_refs),
        "subject_ref": ins.subject_ref,
        "subject_id": ins.subject_id,
        "app_id": ins.app_id,
        "issued_at": ins.issued_at,
        "due_by": ins.due_by,
        "retain_until": ins.retain_until,
        "ack_key": ins.ack_key,
    }


def _instruction_from(rec: Record) -> PartnerInstruction:
    return PartnerInstruction(
        instruction_id=_uuid(rec["instruction_id"]),
        source_event_id=_uuid(rec["source_event_id"]),
        request_id=_opt_uuid(rec.get("request_id")),
        partner=rec["partner"],
        action=InstructionAction(rec["action"]),
        purposes=tuple(rec.get("purposes") or ()),
        categories=tuple(rec.get("categories") or ()),
        partner_refs=_refs(rec.get("partner_refs")),
        subject_ref=rec["subject_ref"],
        subject_id=rec.get("subject_id"),
        app_id=rec.get("app_id"),
        issued_at=_ms(rec["issued_at"]),
        due_by=_ms(rec["due_by"]),
        retain_until=_opt_ms(rec.get("retain_until")),
        ack_key=rec["ack_key"],
    )


def _ack_record(ack: PartnerAcknowledgement) -> Record:
    return {
        "instruction_id": ack.instruction_id,
        "partner": ack.partner,
        "status": ack.status.value,
        "retain_until": ack.retain_until,
        "reason": ack.reason,
        "completed_at": ack.completed_at,
    }


def _ack_from(rec: Record) -> PartnerAcknowledgement:
    return PartnerAcknowledgement(
        instruction_id=_uuid(rec["instruction_id"]),
        partner=rec["partner"],
        status=AcknowledgementStatus(rec["status"]),
        retain_until=_opt_ms(rec.get("retain_until")),
        reason=rec.get("reason"),
        completed_at=_ms(rec["completed_at"]),
    )


# ---- published state ------------------------------------------------------------------


def _state_record(st: ConsentState) -> Record:
    return {
        "subject_id": st.subject_id,
        "version": st.version,
        "updated_at": st.updated_at,
        "account_closed_at": st.account_closed_at,
        "purposes": [
            {
                "purpose": p.purpose,
                "granted": p.granted,
                "event_time": p.event_time,
                "notice_version": p.notice_version,
            }
            for p in st.purposes
        ],
        "permissions": [
            {
                "permission": p.permission,
                "device_id": p.device_id,
                "app_id": p.app_id,
                "event_time": p.event_time,
            }
            for p in st.permissions
        ],
    }


def _state_from(rec: Record) -> ConsentState:
    return ConsentState(
        subject_id=rec["subject_id"],
        version=int(rec["version"]),
        updated_at=_ms(rec["updated_at"]),
        account_closed_at=_opt_ms(rec.get("account_closed_at")),
        purposes=tuple(
            PurposeDecision(
                purpose=p["purpose"],
                granted=bool(p["granted"]),
                event_time=_ms(p["event_time"]),
                notice_version=p["notice_version"],
            )
            for p in rec.get("purposes") or ()
        ),
        permissions=tuple(
            PermissionRevocation(
                permission=p.get("permission"),
                device_id=p.get("device_id"),
                app_id=p.get("app_id"),
                event_time=_ms(p["event_time"]),
            )
            for p in rec.get("permissions") or ()
        ),
    )


def _outcome_record(o: PartnerOutcome) -> Record:
    return {
        "partner": o.partner,
        "instruction_id": o.instruction_id,
        "action": o.action,
        "categories": list(o.categories),
        "refs_digest": o.refs_digest,
        "issued_at": o.issued_at,
        "due_by": o.due_by,
        "status": o.status.value,
        "acknowledged_at": o.acknowledged_at,
        "retain_until": o.retain_until,
        "reason": o.reason,
        "overdue": o.overdue,
        "follows_instruction_id": o.follows_instruction_id,
        "refs_dropped": o.refs_dropped,
    }


def _outcome_from(rec: Record) -> PartnerOutcome:
    return PartnerOutcome(
        partner=rec["partner"],
        instruction_id=_uuid(rec["instruction_id"]),
        action=rec["action"],
        categories=tuple(rec.get("categories") or ()),
        refs_digest=rec.get("refs_digest") or "",
        issued_at=_ms(rec["issued_at"]),
        due_by=_ms(rec["due_by"]),
        status=OutcomeStatus(rec["status"]),
        acknowledged_at=_opt_ms(rec.get("acknowledged_at")),
        retain_until=_opt_ms(rec.get("retain_until")),
        reason=rec.get("reason"),
        overdue=bool(rec.get("overdue", False)),
        follows_instruction_id=_opt_uuid(rec.get("follows_instruction_id")),
        refs_dropped=int(rec.get("refs_dropped") or 0),
    )


def _request_record(rs: RequestStatus) -> Record:
    return {
        "request_id": rs.request_id,
        "subject_digest": rs.subject_digest,
        "scope": rs.scope.value,
        "categories": list(rs.categories),
        "status": rs.status.value,
        "requested_at": rs.requested_at,
        "received_at": rs.received_at,
        "due_by": rs.due_by,
        "overdue": rs.overdue,
        "store_erased_at": rs.store_erased_at,
        "completed_at": rs.completed_at,
        "updated_at": rs.updated_at,
        "partners": [_outcome_record(o) for o in rs.partners],
    }


def _request_from(rec: Record) -> RequestStatus:
    return RequestStatus(
        request_id=_uuid(rec["request_id"]),
        subject_digest=rec["subject_digest"],
        scope=DeletionScope(rec["scope"]),
        categories=tuple(rec.get("categories") or ()),
        status=RequestState(rec["status"]),
        requested_at=_ms(rec["requested_at"]),
        received_at=_ms(rec["received_at"]),
        due_by=_ms(rec["due_by"]),
        overdue=bool(rec.get("overdue", False)),
        store_erased_at=_opt_ms(rec.get("store_erased_at")),
        completed_at=_opt_ms(rec.get("completed_at")),
        updated_at=_ms(rec["updated_at"]),
        partners=tuple(_outcome_from(o) for o in rec.get("partners") or ()),
    )


# ---- dispatch -------------------------------------------------------------------------

_TO: dict[type, tuple[str, Callable[[Any], Record]]] = {
    ConsentEvent: (c.CONSENT_EVENT, _event_record),
    PartnerInstruction: (c.PARTNER_INSTRUCTION, _instruction_record),
    PartnerAcknowledgement: (c.PARTNER_ACKNOWLEDGEMENT, _ack_record),
    ConsentState: (c.CONSENT_STATE, _state_record),
    RequestStatus: (c.REQUEST_STATUS, _request_record),
}
_FROM: dict[str, Callable[[Record], Contracted]] = {
    c.CONSENT_EVENT: _event_from,
    c.PARTNER_INSTRUCTION: _instruction_from,
    c.PARTNER_ACKNOWLEDGEMENT: _ack_from,
    c.CONSENT_STATE: _state_from,
    c.REQUEST_STATUS: _request_from,
}


def contract_name_of(obj: Contracted) -> str:
    return _TO[type(obj)][0]


def to_record(obj: Contracted) -> Record:
    """The Avro record (dict) of a contract object."""
    return _TO[type(obj)][1](obj)


def from_record(contract_name: str, rec: Record) -> Contracted:
    """The domain object of a decoded record; a record that does not fit raises."""
    try:
        return _FROM[contract_name](rec)
    except (KeyError, ValueError, TypeError) as exc:
        raise SchemaMismatchError(f"{contract_name}: record does not fit: {exc!r}") from exc
