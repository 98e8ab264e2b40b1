"""StagedTable: a batch's writes are read back by the batch and those decided after it,
sent to the changelog once sealed (``send``), and reach the local store only on
``commit`` (``discard`` forgets them)."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from schemas.views import PurposeDecision
from streams.faust_glue.tables import StagedTable
from streams.subject import SubjectState, state_from_json, state_to_json

CHANGELOG = "app-consent-subjects-changelog"


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Any
    partition: int | None


@dataclass
class RecordingOutputs:
    sent: list[Sent] = field(default_factory=list)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any = None,
        partition: int | None = None,
    ) -> None:
        self.sent.append(Sent(topic, key, value, headers, partition))

    async def delivered(self) -> None:
        return None


def table(**data: bytes) -> tuple[StagedTable, dict[bytes, bytes], RecordingOutputs]:
    """A StagedTable over a fake Faust table holding ``data`` (keys as bytes)."""
    store = {k.encode(): v for k, v in data.items()}
    faust_table = SimpleNamespace(
        data=store, changelog_topic=SimpleNamespace(get_topic_name=lambda: CHANGELOG)
    )
    return StagedTable(faust_table), store, RecordingOutputs()


def test_get_reads_the_local_store() -> None:
    t, store, _ = table(a=b"1")

    assert t.get(b"a") == b"1" and t.get(b"b") is None
    assert t.store is store and t.changelog_topic == CHANGELOG


def test_send_sends_the_sealed_changelog_records_to_their_partitions() -> None:
    t, _, out = table()

    t.stage(5, b"a", b"1")
    t.stage(2, b"b", None)
    assert out.sent == []  # staging sends nothing
    t.send(out, t.seal())

    assert out.sent == [Sent(CHANGELOG, b"a", b"1", None, 5), Sent(CHANGELOG, b"b", None, None, 2)]


def test_a_later_set_sends_only_its_own_records() -> None:
    t, _, out = table()
    t.stage(0, b"a", b"1")
    first = t.seal()
    t.stage(1, b"a", b"2")
    second = t.seal()

    t.send(out, second)
    t.send(out, first)

    assert out.sent == [Sent(CHANGELOG, b"a", b"2", None, 1), Sent(CHANGELOG, b"a", b"1", None, 0)]


def test_staged_values_are_read_back_but_not_stored_before_commit() -> None:
    t, store, _ = table(a=b"1")

    t.stage(0, b"a", b"2")
    t.stage(0, b"b", b"3")

    assert (t.get(b"a"), t.get(b"b")) == (b"2", b"3")
    assert store == {b"a": b"1"}


def test_commit_applies_the_staged_values_once() -> None:
    t, store, _ = table(a=b"1")
    t.stage(0, b"a", b"2")
    t.stage(0, b"b", b"3")
    t.stage(0, b"b", b"4")  # the last staged value of a key wins

    t.commit(t.seal())

    assert store == {b"a": b"2", b"b": b"4"}
    store[b"a"] = b"9"  # nothing staged is left to shadow the store
    assert t.get(b"a") == b"9"


def test_a_staged_tombstone_reads_as_absent_and_commit_deletes() -> None:
    t, store, _ = table(a=b"1", b=b"2")

    t.stage(0, b"a", None)
    t.stage(0, b"zzz", None)  # deleting what is not there is fine

    assert t.get(b"a") is None and store[b"a"] == b"1"
    t.commit(t.seal())
    assert store == {b"b": b"2"}


def test_discard_forgets_what_was_staged() -> None:
    t, store, _ = table(a=b"1")
    t.stage(0, b"a", None)
    t.stage(0, b"b", b"3")

    t.discard()

    assert (t.get(b"a"), t.get(b"b")) == (b"1", None)
    t.commit(t.seal())
    assert store == {b"a": b"1"}


def test_a_sealed_batch_is_read_by_the_next_and_committed_on_its_own() -> None:
    t, store, _ = table(a=b"0")
    t.stage(0, b"a", b"1")
    first = t.seal()
    assert t.get(b"a") == b"1"  # the next batch decides on top of the first
    t.stage(0, b"a", b"2")
    t.stage(0, b"b", b"2")
    second = t.seal()

    t.commit(first)
    assert store == {b"a": b"1"} and t.get(b"a") == b"2"  # the second is still staged
    t.commit(second)
    assert store == {b"a": b"2", b"b": b"2"}


def test_discard_forgets_sealed_batches_too() -> None:
    t, store, _ = table(a=b"0")
    t.stage(0, b"a", b"1")
    t.seal()
    t.stage(0, b"a", b"2")

    t.discard()

    assert t.get(b"a") == b"0" and store == {b"a": b"0"}
    t.commit(t.seal())
    assert store == {b"a": b"0"}


def test_the_store_keeps_values_of_their_own_size() -> None:
    """orjson's output holds a buffer of ~4 KiB whatever its length (3.12 and later); the
    local store keeps every value for the worker's lifetime, so it keeps exact copies."""
    t, store, _ = table()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        length = 0
        for i in range(1000):
            state = SubjectState(
                f"subject-{i:06d}",
                version=1,
                purposes=(PurposeDecision("personalized_ads", True, 1_700_000_000_000, "v3"),),
                recent_event_ids=(f"event-{i:06d}",),
            )
            value = state_to_json(state)
            length += len(value)
            t.stage(0, b"k%06d" % i, value)
        t.commit(t.seal())
        del value
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert len(store) == 1000
    assert all(v == state_to_json(state_from_json(v)) for v in store.values())
    assert held < 3 * length, (held, length)  # ~1.8x: values, keys, the dict; 31x unfixed
