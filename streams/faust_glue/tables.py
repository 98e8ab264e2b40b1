"""A Faust table written once per batch: the changelog through the worker's producer, the
local store after the broker acknowledged it.

``table[key] = value`` (faust-streaming 0.15) needs the stream's current event to pick the
changelog partition, which a batch of events does not have ("Cannot modify table key
from outside of stream iteration"), and it sends one changelog record per write through
Faust's per-message producer path. Here every changed key of a batch is staged with the
source partition it belongs to (the partition Faust would use), read back at once by the
batches decided after it, sent with the batch's last wave of records, and written to the
local store only once that wave is delivered: a batch that fails leaves the table as it
was, so its records are processed again from the same state. Recovery is Faust's own:
the changelog records are the ones it writes.
"""

from __future__ import annotations

from typing import Any

from streams.output import Outputs

__all__ = ["Sealed", "StagedTable", "right_sized"]

Sealed = dict[bytes, tuple[int, bytes | None]]
"""One batch's staged writes: key -> (partition, value; ``None``: deleted)."""


def right_sized(value: bytes) -> bytes:
    """A copy of ``value`` that holds only its own bytes, for a value the local store keeps.

    orjson (3.12 and later) returns bytes whose buffer is over-allocated and never shrunk:
    a document of a few hundred bytes holds ~4 KiB (4,090 B for 7 bytes with orjson
    3.13), so a table of subject states written by ``state_to_json`` took ~4.2 KB of the
    worker's memory per subject, ~4x the document (bench (e), docs/benchmarks.md).
    ``bytes.join`` of two parts always builds a new object of the exact length."""
    return b"".join((value, b""))


class StagedTable:
    """Reads from a Faust table's store; writes staged per batch (``stage``, ``seal``,
    ``send``, ``commit``).

    A batch's writes are *sealed* (``seal``) as soon as they are staged, so the next batch
    can be decided on top of them while their changelog records are on their way: reads see
    the newest staged value of a key, and ``commit(sealed)`` applies that batch's writes
    (and any sealed before it) once delivered.
    """

    def __init__(self, table: Any) -> None:
        self._table = table
        self._staged: list[Sealed] = [{}]  # oldest first

    @property
    def store(self) -> Any:
        """The local store (a mapping of bytes to bytes)."""
        return self._table.data

    def get(self, key: bytes) -> bytes | None:
        for staged in reversed(self._staged):
            entry = staged.get(key)
            if entry is not None:
                return entry[1]
        value: bytes | None = self._table.data.get(key)
        return value

    def stage(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Write ``key`` (``None``: delete it) for the reads that follow; the changelog
        record goes out with ``send`` once the writes are sealed."""
        self._staged[-1][key] = (partition, value)

    def send(self, outputs: Outputs, sealed: Sealed) -> None:
        """The changelog records of a sealed set of writes, sent with ``outputs``."""
        topic = self.changelog_topic
        for key, (partition, value) in sealed.items():
            outputs.send(topic, key, value, None, partition)

    @property
    def changelog_topic(self) -> str:
        name: str = self._table.changelog_topic.get_topic_name()
        return name

    def seal(self) -> Sealed:
        """Close the writes staged so far (one batch's); later ones start a new set."""
        sealed = self._staged[-1]
        self._staged.append({})
        return sealed

    def commit(self, sealed: Sealed) -> None:
        """The changelog records of ``sealed`` (and of every set sealed before it) are
        delivered: apply them to the local store."""
        index = next(i for i, staged in enumerate(self._staged) if staged is sealed)
        done, self._staged = self._staged[: index + 1], self._staged[index + 1 :]
        for staged in done:
            self._apply(staged)

    def _apply(self, staged: Sealed) -> None:
        store = self._table.data
        # the memory store forgets the keys of revoked partitions by this map; it is
        # filled by recovery only, so writes here keep it too
        partitions = getattr(store, "_key_partition", None)
        for key, (partition, value) in staged.items():
            if value is None:
                store.pop(key, None)
                if partitions is not None:
                    partitions.pop(key, None)
            else:
                store[key] = right_sized(value)
                if partitions is not None:
                    partitions[key] = partition

    def discard(self) -> None:
        """A batch failed: forget everything staged and not committed (sealed or not)."""
        self._staged = [{}]
