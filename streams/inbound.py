"""One consumed record, as an agent hands it over (plain data, no Faust types)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Inbound"]


@dataclass(frozen=True, slots=True)
class Inbound:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    topic: str
    partition: int
    offset: int
