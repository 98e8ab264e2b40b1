"""Delivery decisions of the partner SDK: retry schedule, ack headers, what to commit, and
the instruction a record carries."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Final, TypeVar

from schemas.cloudevents import Headers, ce_headers, header_map
from schemas.partner import PartnerAcknowledgement, PartnerInstruction, received_instruction
from schemas.serde import AvroSerde

__all__ = [
    "ACK_CONTENT_TYPE",
    "ACK_EVENT_TYPE",
    "ack_headers",
    "backoff_schedule",
    "commit_points",
    "instruction_of",
]

ACK_EVENT_TYPE: Final = "partner.acknowledgement"
ACK_CONTENT_TYPE: Final = "application/avro"
MAX_BACKOFF_S: Final = 30.0

K = TypeVar("K", bound=Hashable)
M = TypeVar("M")


def backoff_schedule(
    max_attempts: int, backoff_s: float, max_backoff_s: float = MAX_BACKOFF_S
) -> tuple[float, ...]:
    """Seconds to wait after each failed attempt but the last: backoff_s * 2**k, capped.

    ``max_attempts`` attempts need ``max_attempts - 1`` waits.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if backoff_s < 0:
        raise ValueError("backoff_s must not be negative")
    return tuple(min(backoff_s * 2**k, max_backoff_s) for k in range(max_attempts - 1))


def ack_headers(
    ack: PartnerAcknowledgement,
    *,
    ce_id: str,
    subject_ref: str,
    data_schema: str,
    published_at_ms: int,
) -> Headers:
    """CloudEvents headers of an ack: subject is the partner-scoped ref, never a subject id."""
    return ce_headers(
        event_id=ce_id,
        event_type=ACK_EVENT_TYPE,
        source=f"partner/{ack.partner}",
        time_ms=ack.completed_at,
        subject=subject_ref,
        content_type=ACK_CONTENT_TYPE,
        data_schema=data_schema,
        published_at_ms=published_at_ms,
    )


def commit_points(messages: Iterable[tuple[K, M, bool]]) -> dict[K, M]:
    """Per partition, the last message that may be committed.

    ``messages`` are (partition, message, done) in consumption order; ``done`` is True once
    its effect is durable (ack delivered, or nothing to send). Only a partition's unbroken
    prefix of done messages may be committed: a later offset would skip the first one that
    is not done.
    """
    points: dict[K, M] = {}
    blocked: set[K] = set()
    for partition, message, done in messages:
        if partition in blocked:
            continue
        if done:
            points[partition] = message
        else:
            blocked.add(partition)
    return points


def instruction_of(serde: AvroSerde, record: Any) -> PartnerInstruction:
    """The instruction a record of a partner's topic carries: its value decoded, with what
    its headers add (``schemas.partner.received_instruction``). ``ValueError`` for an empty
    record, the serde's ``DecodeError`` for bytes that are not an instruction."""
    value = record.value()
    if not value:
        raise ValueError("empty record")
    instruction = serde.decode_as(value, PartnerInstruction, record.topic() or "")
    return received_instruction(instruction, header_map(record.headers()))
