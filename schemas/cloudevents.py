"""CloudEvents Kafka protocol binding, binary mode: attributes as ``ce_*`` headers.

Besides the CloudEvents attributes, every record carries ``cs_published_at`` (ms since the
epoch, when the publisher handed it to Kafka): the start of every latency hop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "PUBLISHED_AT",
    "Headers",
    "ce_headers",
    "header_map",
    "instruction_event_type",
    "published_at_ms",
]

PUBLISHED_AT: Final = "cs_published_at"
_SPEC_VERSION: Final = "1.0"

Headers = list[tuple[str, bytes]]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def instruction_event_type(action: str) -> str:
    """``ce_type`` of a partner instruction: ``partner.instruction.<action, lower case>``
    (the same on Kafka and in webhook deliveries)."""
    return f"partner.instruction.{action.lower()}"


def ce_headers(
    *,
    event_id: str,
    event_type: str,
    source: str,
    time_ms: int,
    subject: str | None,
    content_type: str,
    data_schema: str,
    published_at_ms: int,
) -> Headers:
    """Binary-mode CloudEvents headers. ``subject`` is omitted when None (no raw PII)."""
    headers: Headers = [
        ("ce_specversion", _SPEC_VERSION.encode()),
        ("ce_id", event_id.encode()),
        ("ce_type", event_type.encode()),
        ("ce_source", source.encode()),
        ("ce_time", _iso(time_ms).encode()),
        ("content-type", content_type.encode()),
        ("ce_dataschema", data_schema.encode()),
        (PUBLISHED_AT, str(published_at_ms).encode()),
    ]
    if subject is not None:
        headers.insert(5, ("ce_subject", subject.encode()))
    return headers


def header_map(
    headers: Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
) -> dict[str, bytes]:
    """Headers as a dict (last value wins), whatever shape the client handed them in."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (v.encode() if isinstance(v, str) else (v or b"")) for k, v in items}


def published_at_ms(headers: Mapping[str, bytes]) -> int | None:
    raw = headers.get(PUBLISHED_AT)
    try:
        return int(raw) if raw else None
    except ValueError:
        return None
