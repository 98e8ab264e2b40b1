"""A request's body as items, each item's outcome, and the answer's status. Pure.

A body is one JSON event, a JSON array of events (``application/json``) or one event a
line (``application/x-ndjson``, ``application/jsonl``). Each item is checked as the SDK
checks it (``event_from_json``, then ``ConsentPublisher.prepare``: validation, encoding,
size) plus the caller's sources. An item that fails is ``rejected`` and never sent; the
others are sent and end ``accepted`` (the broker acknowledged it), ``not_delivered`` (no
acknowledgement in time) or ``not_sent`` (the local queue was full).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from schemas.errors import ContractError, ValidationError
from schemas.events import ConsentEvent
from schemas.jsonform import event_from_json

__all__ = [
    "JSON_LINES_TYPES",
    "JSON_TYPES",
    "Item",
    "Outcome",
    "RequestError",
    "answer_body",
    "answer_status",
    "check_items",
    "parse_body",
]

JSON_TYPES: Final = frozenset({"application/json"})
JSON_LINES_TYPES: Final = frozenset({"application/x-ndjson", "application/jsonl"})
SOURCE_NOT_ALLOWED: Final = "source_not_allowed"

Prepared = tuple[bytes, bytes, list[tuple[str, bytes]]]


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    NOT_DELIVERED = "not_delivered"
    NOT_SENT = "not_sent"


class RequestError(Exception):
    """The whole request is refused (nothing sent): ``status`` and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Item:
    index: int
    line: int | None = None
    event: ConsentEvent | None = None
    prepared: Prepared | None = None
    outcome: Outcome = Outcome.ACCEPTED
    reason: str | None = None
    error: str | None = None
    field: str | None = None

    def fail(self, outcome: Outcome, reason: str, error: str, field: str | None = None) -> None:
        self.outcome, self.reason, self.error, self.field = outcome, reason, error, field

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.line is not None:
            out["line"] = self.line
        if self.event is not None:
            out["event_id"] = self.event.event_id
        out["status"] = self.outcome.value
        for name in ("reason", "field", "error"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        return out


Raw = tuple[int | None, Any]  # (line number for JSON lines, parsed JSON or the error)


def parse_body(body: bytes, media_type: str, max_items: int) -> list[Raw]:
    """The items of a body: (line, JSON value), or (line, ``ValidationError``) for a JSON
    line that is not JSON. ``RequestError`` for a body that has no items or too many."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not UTF-8") from None
    raws: list[Raw]
    if media_type in JSON_LINES_TYPES:
        raws = [(n, _line(s)) for n, s in enumerate(text.splitlines(), start=1) if s.strip()]
    elif media_type in JSON_TYPES:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RequestError(400, f"not JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(value, dict | list):
            raise RequestError(400, "the body is an event (a JSON object) or an array of them")
        raws = [(None, v) for v in (value if isinstance(value, list) else [value])]
    else:
        accepted = ", ".join(sorted(JSON_TYPES | JSON_LINES_TYPES))
        raise RequestError(415, f"content type {media_type or '(none)'}; one of {accepted}")
    if not raws:
        raise RequestError(400, "no events in the body")
    if len(raws) > max_items:
        raise RequestError(413, f"{len(raws)} events; at most {max_items} per request")
    return raws


def _line(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return ValidationError(f"not JSON: {exc.msg} at column {exc.colno}", reason="not_json")


def check_items(
    raws: Iterable[Raw], sources: Collection[str], prepare: Callable[[ConsentEvent], Prepared]
) -> list[Item]:
    """Each raw item checked: built, its source allowed for the caller, validated and
    encoded (``prepare``); ``rejected`` with the reason and field where it fails."""
    items: list[Item] = []
    for index, (line, raw) in enumerate(raws):
        item = Item(index, line)
        items.append(item)
        try:
            if isinstance(raw, ValidationError):
                raise raw
            item.event = event_from_json(raw)
            if item.event.source not in sources:
                item.fail(
                    Outcome.REJECTED,
                    SOURCE_NOT_ALLOWED,
                    f"this token may not publish source {item.event.source!r}",
                    "source",
                )
                continue
            item.prepared = prepare(item.event)
        except ContractError as exc:
            item.fail(Outcome.REJECTED, exc.reason, str(exc), getattr(exc, "field", None))
    return items


def answer_status(items: Collection[Item]) -> int:
    """503 if any event went undelivered, 429 if any was not sent (queue full), 403 if
    every item was refused for its source, 400 if any was rejected, else 202."""
    outcomes = {i.outcome for i in items}
    if Outcome.NOT_DELIVERED in outcomes:
        return 503
    if Outcome.NOT_SENT in outcomes:
        return 429
    if items and all(i.reason == SOURCE_NOT_ALLOWED for i in items):
        return 403
    if Outcome.REJECTED in outcomes:
        return 400
    return 202


def answer_body(status: int, items: Collection[Item]) -> dict[str, Any]:
    counts = {o.value: sum(1 for i in items if i.outcome is o) for o in Outcome}
    return {"status": status, **counts, "items": [i.to_json() for i in items]}
