"""``consent-stream dead-letters``: what is on the dead-letter topic, and publishing it again.

The operations guide's answer to most dead-letter reasons ends in "re-publish the
dead-lettered records" once the cause is fixed (a policy, a raised record limit), and a
``references_dropped`` record holds references a deletion's instructions did not carry.
This lists them (one JSON object a line: where it is, the reason, the error, the source,
the subject and the event when it decodes), filtered by reason and subject; with
``--republish`` it produces the records that came from the events topic to it again, as
they came (key, bytes, headers without the ``cs_dlq_*`` ones), with the idempotent
producer. The worker then handles them as any event: one already applied is a duplicate,
one still bad is dead-lettered again.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from consumers.topic_reader import TopicToEnd
from producers.sending import CountedSends
from schemas.errors import ContractError
from schemas.events import ConsentEvent
from schemas.jsonform import event_to_json
from schemas.serde import AvroSerde
from schemas.settings import Settings
from streams.deadletter.policy import DLQ_HEADER_PREFIX, original_headers

__all__ = ["DeadLetterRecord", "run_dead_letters", "selected"]


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of the dead-letter topic, as read."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str:
        return next((v.decode("utf-8", "replace") for k, v in self.headers if k == name), "")

    def failure(self, name: str) -> str:
        """A ``cs_dlq_*`` header (``streams.deadletter.policy``): reason, error, source_topic..."""
        return self.header(DLQ_HEADER_PREFIX + name)

    @property
    def reason(self) -> str:
        return self.failure("reason")

    @property
    def original_headers(self) -> list[tuple[str, bytes]]:
        return original_headers(self.headers)

    def view(self, serde: AvroSerde, events_topic: str) -> dict[str, Any]:
        """A JSON-able description; ``event`` is None when the bytes do not decode."""
        event: dict[str, Any] | None
        try:
            decoded = serde.decode_as(self.value, ConsentEvent, events_topic)
            event = event_to_json(decoded)
        except ContractError:
            event = None
        return {
            "at": f"{self.partition}@{self.offset}",
            "reason": self.reason,
            "error": self.failure("error"),
            "source": f"{self.failure('source_topic')}[{self.failure('source_partition')}]"
            f"@{self.failure('source_offset')}",
            "failed_at": int(self.failure("failed_at") or 0),
            "subject": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "event": event,
        }


def selected(
    records: Iterator[DeadLetterRecord], reasons: Collection[str], subject: str | None
) -> Iterator[DeadLetterRecord]:
    """The records with one of ``reasons`` (all when empty) and of ``subject`` (any: None)."""
    key = subject.encode("utf-8") if subject is not None else None
    for record in records:
        if (not reasons or record.reason in reasons) and (key is None or record.key == key):
            yield record


def run_dead_letters(
    settings: Settings,
    reasons: Collection[str],
    subject: str | None,
    republish: bool,
    out: TextIO,
    timeout_s: float = 60.0,
) -> int:
    """Lists (and with ``republish`` publishes again) the selected dead letters; exit 0,
    or 1 when the topic was not read to its end or a record was not delivered (a full
    local queue is waited out; every delivery report is counted)."""
    from producers.publisher import make_producer

    reader = TopicToEnd(settings, settings.topics.deadletter, timeout_s)
    serde = AvroSerde(settings.schema_registry(), settings.max_record_bytes)
    events = settings.topics.events
    sends = CountedSends(make_producer(settings)) if republish else None
    listed = 0
    for record in selected(_records(reader), reasons, subject):
        listed += 1
        view = record.view(serde, events)
        if sends is not None and record.failure("source_topic") == events:
            sends.send(events, record.key, record.value, record.original_headers)
            view["republished"] = True
        print(json.dumps(view, ensure_ascii=False, sort_keys=True), file=out)
    delivered = sends is None or sends.settle(60.0)
    summary = f"{listed} dead letters"
    if sends is not None:
        summary += f", {sends.delivered} published again"
        if not delivered:
            summary += f" ({sends.summary()})"
    if not reader.complete:
        summary += f"; the topic was not read to its end within {timeout_s:.0f} s"
    print(f"# {summary}", file=out)
    return 0 if reader.complete and delivered else 1


def _records(reader: TopicToEnd) -> Iterator[DeadLetterRecord]:
    for msg in reader.messages():
        yield DeadLetterRecord(
            msg.partition() or 0,
            msg.offset() or 0,
            msg.key(),
            msg.value() or b"",
            tuple((k, v or b"") for k, v in (msg.headers() or [])),
        )
