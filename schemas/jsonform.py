"""The JSON form of an inbound event (what the CLI and HTTP gateway accept).

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

from schemas.errors import ValidationError
from schemas.events import ConsentEvent, EventType
from schemas.records import payload_from_record, to_record

__all__ = ["event_from_json", "event_to_json", "parse_event_line"]

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
