"""Records on their topics: contract objects (Avro, CloudEvents headers) and ledger
entries, sent through an agent's ``Outputs`` (enqueued; the agent waits for a whole wave
with ``Outputs.delivered``)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.cloudevents import Headers, ce_headers, instruction_event_type
from schemas.partner import PartnerInstruction, instruction_extensions
from schemas.records import Contracted
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from streams.ledger.codec import LedgerEntry, entries_by_partition
from streams.output import Outputs

__all__ = ["RecordSender", "instruction_headers"]


def instruction_headers(ins: PartnerInstruction, data_schema: str) -> Headers:
    return ce_headers(
        event_id=ins.instruction_id,
        event_type=instruction_event_type(ins.action.value),
        source="consent-stream",
        time_ms=ins.issued_at,
        subject=ins.subject_ref,
        content_type="application/avro",
        data_schema=data_schema,
        published_at_ms=ins.issued_at,
        extensions=instruction_extensions(ins),
    )


class RecordSender:
    """Encodes contract objects and sends them; the one place topics meet the serde."""

    def __init__(
        self, serde: AvroSerde, data_schema: str, topics: TopicNames, ledger_partitions: int
    ) -> None:
        self._topics = topics
        self._serde = serde
        self._schema = data_schema
        self._ledger_partitions = ledger_partitions

    def send_ledger(self, outputs: Outputs, entries: Sequence[tuple[str, LedgerEntry]]) -> None:
        """Ledger entries (internal, JSON), one record per ledger partition."""
        by_partition = entries_by_partition(entries, self._ledger_partitions)
        for partition, value in by_partition.items():
            outputs.send(self._topics.ledger, None, value, None, partition)

    def send_object(
        self,
        outputs: Outputs,
        topic: str,
        key: str,
        obj: Contracted,
        headers: Headers | None = None,
    ) -> None:
        value = self._serde.encode(obj, topic)
        outputs.send(topic, key.encode("utf-8"), value, headers)

    def send_instruction(self, outputs: Outputs, ins: PartnerInstruction) -> None:
        self.send_object(
            outputs,
            self._topics.instructions(ins.partner),
            ins.subject_ref,
            ins,
            instruction_headers(ins, self._schema),
        )
