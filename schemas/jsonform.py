"""JSON forms of the contracts: inbound events (what the CLI and HTTP gateway accept), and
partner instructions and acknowledgements (what webhook delivery sends and reads).

Instructions and acknowledgements mirror their Avro records exactly (times in ms since the
epoch, ``null`` for absent optionals), built by the one converter ``schemas.records``.

The event form:
It mirrors the Avro record: ``{"event_id", "type", "subject_id", "occurred_at", "source",
"payload": {...}}``; ``occurred_at`` (and ``transaction_completed_at``) may be ms since the
epoch or an ISO-8601 string with a zone. ``event_id`` may be omitted: it is then derived
(UUID v5) from the event's content, so publishing the same line twice is still one event.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from schemas.contracts import PARTNER_ACKNOWLEDGEMENT, PARTNER_INSTRUCTION
from schemas.errors import SchemaMismatchError, ValidationError
from schemas.events import ConsentEvent, EventType
from schemas.partner import AcknowledgementStatus, PartnerAcknowledgement, PartnerInstruction
from schemas.records import from_record, payload_from_record, to_record

__all__ = [
    "ack_from_json",
    "ack_to_json",
    "event_from_json",
    "event_to_json",
    "instruction_from_json",
    "instruction_to_json",
    "parse_event_line",
]

_EVENT_NAMESPACE = uuid.UUID("5d1f3c1e-2f0b-4c39-9a43-6b1f3f0c0a11")
_FIELDS = ("event_id", "type", "subject_id", "occurred_at", "source", "payload")


def _time_ms(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise ValidationError(f"{field} is not a time: {value!r}", field=field)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return round(parsed.timestamp() * 1000)
    raise ValidationError(
        f"{field} must be ms since the epoch or ISO-8601 with a zone: {value!r}", field=field
    )


def _content_id(obj: dict[str, Any]) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NAMESPACE, json.dumps(obj, sort_keys=True, ensure_ascii=False))


def event_from_json(obj: Any) -> ConsentEvent:
    """Build an event from its JSON form; malformed input raises ``ValidationError``."""
    if not isinstance(obj, dict):
        raise ValidationError("an event is a JSON object", field="(root)")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}", field=unknown[0])
    for field in ("type", "subject_id", "occurred_at", "source", "payload"):
        if field not in obj:
            raise ValidationError(f"missing field {field!r}", field=field)
    try:
        event_type = EventType(obj["type"])
    except ValueError:
        raise ValidationError(
            f"unknown type {obj['type']!r}; one of {', '.join(t.value for t in EventType)}",
            field="type",
            reason="unknown_type",
        ) from None
    payload = obj["payload"]
    if not isinstance(payload, dict):
        raise ValidationError("payload must be an object", field="payload")
    if "transaction_completed_at" in payload and payload["transaction_completed_at"] is not None:
        payload = {
            **payload,
            "transaction_completed_at": _time_ms(
                payload["transaction_completed_at"], "payload.transaction_completed_at"
            ),
        }
    for name in ("subject_id", "source"):
        if not isinstance(obj[name], str):
            raise ValidationError(f"{name} must be a string", field=name)
    try:
        built = payload_from_record(event_type, payload)
    except KeyError as exc:
        raise ValidationError(f"missing field payload.{exc.args[0]}", field="payload") from None
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"invalid payload: {exc}", field="payload") from None
    return ConsentEvent(
        event_id=str(obj.get("event_id") or _content_id(obj)),
        subject_id=obj["subject_id"],
        occurred_at=_time_ms(obj["occurred_at"], "occurred_at"),
        source=obj["source"],
        payload=built,
    )


def parse_event_line(line: str) -> ConsentEvent:
    try:
        obj = json.loads(line.strip())
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"not JSON: {exc.msg} at column {exc.colno}", reason="not_json"
        ) from None
    return event_from_json(obj)


def event_to_json(event: ConsentEvent) -> dict[str, Any]:
    rec = to_record(event)
    rec["payload"] = rec["payload"][1]
    return rec


# ---- partner instructions and acknowledgements ----------------------------------------

_ACK_FIELDS = ("instruction_id", "partner", "status", "retain_until", "reason", "completed_at")


def instruction_to_json(instruction: PartnerInstruction) -> dict[str, Any]:
    """The JSON form of an instruction: its Avro record (every field, ms times)."""
    return to_record(instruction)


def instruction_from_json(obj: Any) -> PartnerInstruction:
    """An instruction from its JSON form (a webhook delivery's body, as a partner reads it);
    ``ValidationError`` when it does not fit the contract."""
    if not isinstance(obj, dict):
        raise ValidationError("an instruction is a JSON object", field="(root)")
    try:
        instruction = from_record(PARTNER_INSTRUCTION, obj)
    except SchemaMismatchError as exc:
        raise ValidationError(f"invalid instruction: {exc}", field="(root)") from None
    assert isinstance(instruction, PartnerInstruction)  # noqa: S101 - from_record's contract
    return instruction


def ack_to_json(ack: PartnerAcknowledgement) -> dict[str, Any]:
    return to_record(ack)


def ack_from_json(
    obj: Any, *, partner: str, now_ms: int, instruction_id: str | None = None
) -> PartnerAcknowledgement:
    """An acknowledgement from its JSON form, as a partner sends it.

    ``{"status": "DONE" | "RESTRICTED" | "REJECTED" | "FAILED", "retain_until": ...,
    "reason": ..., "completed_at": ..., "instruction_id": ..., "partner": ...}``: times are
    ms since the epoch or ISO-8601 with a zone; ``completed_at`` defaults to ``now_ms``;
    ``partner`` defaults to (and must equal) the partner answering; ``instruction_id`` is
    required unless given (a webhook answer is for the instruction just sent, and must not
    name another one). RESTRICTED needs ``retain_until``, REJECTED and FAILED a ``reason``.
    Anything else raises ``ValidationError`` naming the field."""
    if not isinstance(obj, dict):
        raise ValidationError("an acknowledgement is a JSON object", field="(root)")
    unknown = sorted(set(obj) - set(_ACK_FIELDS))
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}", field=unknown[0])
    rec = dict(obj)
    given_id = rec.get("instruction_id")
    if instruction_id is not None:
        if given_id is not None and str(given_id) != instruction_id:
            raise ValidationError("instruction_id is not the one delivered", field="instruction_id")
        rec["instruction_id"] = instruction_id
    elif not isinstance(given_id, str):
        raise ValidationError("missing field 'instruction_id'", field="instruction_id")
    if rec.setdefault("partner", partner) != partner:
        raise ValidationError("partner is not the partner answering", field="partner")
    status = rec.get("status")
    if status not in {s.value for s in AcknowledgementStatus}:
        raise ValidationError(
            f"status must be one of {', '.join(s.value for s in AcknowledgementStatus)}",
            field="status",
        )
    for name in ("completed_at", "retain_until"):
        if rec.get(name) is not None:
            rec[name] = _time_ms(rec[name], name)
    rec["completed_at"] = rec.get("completed_at") or now_ms
    if status == AcknowledgementStatus.RESTRICTED and rec.get("retain_until") is None:
        raise ValidationError("RESTRICTED needs retain_until", field="retain_until")
    reason = rec.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValidationError("reason must be a string", field="reason")
    if status in ("REJECTED", "FAILED") and not reason:
        raise ValidationError(f"{status} needs a reason", field="reason")
    try:
        ack = from_record(PARTNER_ACKNOWLEDGEMENT, rec)
    except SchemaMismatchError as exc:
        raise ValidationError(f"invalid acknowledgement: {exc}", field="(root)") from None
    assert isinstance(ack, PartnerAcknowledgement)  # noqa: S101 - from_record's contract
    return ack
