"""Where the processors send records: a port with a Faust-backed implementation.

``send`` enqueues and returns an awaitable that completes when the broker acknowledged
the record; processors await every effect before they update their state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from schemas.cloudevents import Headers, ce_headers
from schemas.partner import PartnerInstruction
from schemas.records import Contracted
from schemas.serde import AvroSerde
from schemas.topics import TopicNames

__all__ = ["FaustOutbox", "Outbox", "RecordSender", "instruction_headers"]


class Outbox(Protocol):
    async def send(
        self, topic: str, key: bytes, value: bytes, headers: Headers
    ) -> Awaitable[Any]: ...


class FaustOutbox:
    """Sends raw records through the Faust app's producer."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._topics: dict[str, Any] = {}

    def _topic(self, name: str) -> Any:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._app.topic(name, key_serializer="raw", value_serializer="raw")
            self._topics[name] = topic
        return topic

    async def send(self, topic: str, key: bytes, value: bytes, headers: Headers) -> Awaitable[Any]:
        fut: Awaitable[Any] = await self._topic(topic).send(key=key, value=value, headers=headers)
        return fut


def instruction_headers(ins: PartnerInstruction, data_schema: str) -> Headers:
    return ce_headers(
        event_id=ins.instruction_id,
        event_type=f"partner.instruction.{ins.action.value.lower()}",
        source="consent-stream",
        time_ms=ins.issued_at,
        subject=ins.subject_ref,
        content_type="application/avro",
        data_schema=data_schema,
        published_at_ms=ins.issued_at,
    )


class RecordSender:
    """Encodes contract objects and sends them; the one place topics meet the serde."""

    def __init__(
        self, outbox: Outbox, serde: AvroSerde, data_schema: str, topics: TopicNames
    ) -> None:
        self.outbox = outbox
        self._topics = topics
        self._serde = serde
        self._schema = data_schema

    async def send_object(
        self, topic: str, key: str, obj: Contracted, headers: Headers | None = None
    ) -> Awaitable[Any]:
        value = self._serde.encode(obj, topic)
        return await self.outbox.send(topic, key.encode("utf-8"), value, headers or [])

    async def send_instructions(
        self, instructions: Sequence[PartnerInstruction]
    ) -> list[Awaitable[Any]]:
        return [
            await self.send_object(
                self._topics.instructions(ins.partner),
                ins.subject_ref,
                ins,
                instruction_headers(ins, self._schema),
            )
            for ins in instructions
        ]
