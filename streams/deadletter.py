"""The dead-letter policy: undecodable or invalid records go to consent.deadletter.v1.

The record keeps its original key, bytes and headers; ``cs_dlq_*`` headers name the
reason, the error text (no payload data) and where it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["DeadLetter", "deadletter_headers"]

_MAX_ERROR_CHARS: Final = 500


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
    headers = [(k, v) for k, v in original.items() if not k.startswith("cs_dlq_")]
    headers += [
        ("cs_dlq_reason", dl.reason.encode()),
        ("cs_dlq_error", dl.error[:_MAX_ERROR_CHARS].encode("utf-8", "replace")),
        ("cs_dlq_source_topic", dl.topic.encode()),
        ("cs_dlq_source_partition", str(dl.partition).encode()),
        ("cs_dlq_source_offset", str(dl.offset).encode()),
        ("cs_dlq_failed_at", str(dl.failed_at).encode()),
    ]
    return headers
