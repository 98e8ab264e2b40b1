"""CloudEvents Kafka protocol binding, binary mode: attributes as ``ce_*`` headers.

Besides the CloudEvents attributes, every record carries ``cs_published_at`` (ms since the
epoch, when the publisher handed it to Kafka): the start of every latency hop.

Extension attributes of partner instructions (``ce_<name>`` on Kafka, ``ce-<name>`` over
HTTP), each present only when it says something:

- ``referencesdropped``: how many data.shared records' references an ERASE or RESTRICT
  lacks, because they did not fit the subject's state (``streams.events.state_limit``); the
  partner finds that data by ``subject_ref`` and ``categories`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "PUBLISHED_AT",
    "REFERENCES_DROPPED",
    "Headers",
    "ce_headers",
    "header_map",
    "instruction_event_type",
    "published_at_ms",
    "references_dropped",
]

PUBLISHED_AT: Final = "cs_published_at"
REFERENCES_DROPPED: Final = "referencesdropped"
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
    extensions: Mapping[str, str] | None = None,
) -> Headers:
    """Binary-mode CloudEvents headers. ``subject`` is omitted when None (no raw PII);
    ``extensions`` are extension attributes (lower-case names, ``ce_<name>``)."""
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
    for name, value in (extensions or {}).items():
        headers.append((f"ce_{name}", value.encode()))
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


def references_dropped(headers: Mapping[str, bytes | str]) -> int:
    """The ``referencesdropped`` extension of an instruction's Kafka (``ce_``) or HTTP
    (``ce-``, any case) headers; 0 when absent or not a count."""
    raw = headers.get(f"ce_{REFERENCES_DROPPED}") or headers.get(f"ce-{REFERENCES_DROPPED}")
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else (raw or "")
    return int(text) if text.isascii() and text.isdigit() else 0
