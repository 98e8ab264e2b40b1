"""Topics read as raw bytes, without Faust's codec registry.

The agents decode records themselves (``schemas.serde``), so their topics carry bytes.
With ``key_serializer="raw"`` Faust still passes every key and value through its
serializer registry (a chain of calls per record, ~4 % of the worker's busy time when it
drains a backlog); ``RawSchema``, a ``faust.Schema`` (Faust's public extension point for
how a topic's records are decoded), hands them over as they came.
"""

from __future__ import annotations

from typing import Any

import faust

__all__ = ["RawSchema", "raw_topic"]


class RawSchema(faust.Schema[bytes, bytes]):
    """Keys and values as the broker gave them (``bytes``, or ``None``)."""

    def __init__(self) -> None:
        super().__init__(
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    def loads_key(self, app: Any, message: Any, **kwargs: Any) -> Any:
        return message.key

    def loads_value(self, app: Any, message: Any, **kwargs: Any) -> Any:
        return message.value


def raw_topic(
    app: faust.App, *names: str, internal: bool = False, partitions: int | None = None
) -> Any:
    """The worker's topics, and the benchmark's no-op agent's (read the same way)."""
    return app.topic(*names, schema=RawSchema(), internal=internal, partitions=partitions)
