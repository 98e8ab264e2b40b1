"""The dead-letter policy: undecodable or invalid records go to consent.deadletter.v1.

The record keeps its original key, bytes and headers; ``cs_dlq_*`` headers name the
reason, the error text (no payload data) and where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["DLQ_HEADER_PREFIX", "DeadLetter", "deadletter_headers", "original_headers"]

_MAX_ERROR_CHARS: Final = 500
DLQ_HEADER_PREFIX: Final = "cs_dlq_"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    error: str
    topic: str
    partition: int
    offset: int
    failed_at: int


def deadletter_headers(original: Mapping[str, bytes], dl: DeadLetter) -> list[tuple[str, bytes]]:
    """Original headers first, then the ``cs_dlq_*`` headers describing the failure."""
    p = DLQ_HEADER_PREFIX
    return [
        *original_headers(original.items()),
        (p + "reason", dl.reason.encode()),
        (p + "error", dl.error[:_MAX_ERROR_CHARS].encode("utf-8", "replace")),
        (p + "source_topic", dl.topic.encode()),
        (p + "source_partition", str(dl.partition).encode()),
        (p + "source_offset", str(dl.offset).encode()),
        (p + "failed_at", str(dl.failed_at).encode()),
    ]


def original_headers(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``headers`` without the ``cs_dlq_*`` ones: the record's headers as it came."""
    return [(k, v) for k, v in headers if not k.startswith(DLQ_HEADER_PREFIX)]
