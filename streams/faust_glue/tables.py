"""A Faust table written once per batch: the changelog through the worker's producer, the
local store after the broker acknowledged it.

``table[key] = value`` (faust-streaming 0.15) needs the stream's current event to pick the
changelog partition, which a batch of events does not have ("Cannot modify table key
from outside of stream iteration"), and it sends one changelog record per write through
Faust's per-message producer path. Here every changed key of a batch is staged with the
source partition it belongs to (the partition Faust would use), sent with the batch's
last wave of records, and written to the local store only once that wave is delivered:
a batch that fails leaves the table as it was, so its records are processed again from
the same state. Recovery is Faust's own: the changelog records are the ones it writes.
"""

from __future__ import annotations

from typing import Any

from streams.output import Outputs

__all__ = ["StagedTable"]


class StagedTable:
    """Reads from a Faust table's store; writes staged per batch (``stage``/``commit``)."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._staged: dict[bytes, tuple[int, bytes | None]] = {}

    @property
    def store(self) -> Any:
        """The local store (a mapping of bytes to bytes)."""
        return self._table.data

    def get(self, key: bytes) -> bytes | None:
        staged = self._staged.get(key)
        if staged is not None:
            return staged[1]
        value: bytes | None = self._table.data.get(key)
        return value

    def stage(self, outputs: Outputs, partition: int, key: bytes, value: bytes | None) -> None:
        """Send the changelog record of ``key`` (``None``: deleted) with ``outputs``."""
        outputs.send(self.changelog_topic, key, value, None, partition)
        self._staged[key] = (partition, value)

    @property
    def changelog_topic(self) -> str:
        name: str = self._table.changelog_topic.get_topic_name()
        return name

    def commit(self) -> None:
        """The staged changelog records are delivered: apply them to the local store."""
        store = self._table.data
        # the memory store forgets the keys of revoked partitions by this map; it is
        # filled by recovery only, so writes here keep it too
        partitions = getattr(store, "_key_partition", None)
        for key, (partition, value) in self._staged.items():
            if value is None:
                store.pop(key, None)
                if partitions is not None:
                    partitions.pop(key, None)
            else:
                store[key] = value
                if partitions is not None:
                    partitions[key] = partition
        self._staged.clear()

    def discard(self) -> None:
        """The batch failed: forget what it staged."""
        self._staged.clear()
