"""What ``consent-stream replay`` sends: instructions in chunks, each chunk's ledger
entries acknowledged before its instructions go (an acknowledgement can never precede
its ticket). A full local queue is waited out and every delivery report is counted
(``producers.sending``): a record the broker refused is a failure, not "sent"."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from producers.sending import CountedSends
from schemas.partner import PartnerInstruction
from schemas.serde import AvroSerde
from schemas.settings import Settings
from streams.ledger.codec import OpenEntry, encode_entry
from streams.outbox import instruction_headers

__all__ = ["CHUNK", "ReplaySender"]

CHUNK: Final = 5_000
"""Instructions per chunk: their ledger entries are acknowledged before they are sent."""
_SETTLE_S: Final = 60.0


def _chunks(items: Iterable[PartnerInstruction], size: int) -> Iterator[list[PartnerInstruction]]:
    chunk: list[PartnerInstruction] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class ReplaySender:
    def __init__(self, settings: Settings, serde: AvroSerde, partner: str, producer: Any) -> None:
        self._ledger_topic = settings.topics.ledger
        self._topic = settings.topics.instructions(partner)
        self._serde = serde
        self.ledger, self.instructions = CountedSends(producer), CountedSends(producer)

    def send(self, instructions: Iterable[PartnerInstruction], chunk_size: int = CHUNK) -> bool:
        """True once every instruction and its ledger entry were delivered."""
        for chunk in _chunks(instructions, chunk_size):
            for ins in chunk:
                entry = OpenEntry(ins.ack_key, None, ((ins, ""),))
                self.ledger.send(self._ledger_topic, ins.ack_key.encode(), encode_entry(entry))
            if not self.ledger.settle(_SETTLE_S):
                return False
            for ins in chunk:
                value = self._serde.encode(ins, self._topic)
                headers = instruction_headers(ins, "consentstream.v1")
                self.instructions.send(self._topic, ins.subject_ref.encode(), value, headers)
        return self.instructions.settle(_SETTLE_S)

    def failures(self) -> list[str]:
        """One line for each kind of record not all delivered."""
        kinds = (("ledger entries", self.ledger), ("instructions", self.instructions))
        return [f"{what}: {s.summary()}" for what, s in kinds if s.failed or s.pending]
