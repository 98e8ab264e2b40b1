"""Rebuild the Redis consent store from the compacted ``consent.state.v1`` topic.

Reads every partition from its low watermark to the high watermark captured at start
(``consumers.topic_reader``: partitions assigned explicitly, nothing committed), decodes
each ``ConsentState`` and applies it through the versioned write, in pipelined batches.
Because writes are versioned, a rebuild is idempotent, never moves a subject backwards and
never re-opens a closed account; running it twice changes nothing. Tombstones are counted,
not applied: a closure marker is never deleted by a rebuild.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final, TextIO

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from consumers.store.layout import ApplyOutcome
from consumers.topic_reader import ConsumerFactory, TopicToEnd
from schemas.errors import ContractError
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.views import ConsentState

__all__ = ["RebuildReport", "rebuild_from_topic", "run_rebuild_store"]

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S: Final = 5.0


@dataclass(slots=True)
class RebuildReport:
    """Counts of one rebuild; ``complete`` is False when the timeout came first."""

    read: int = 0
    applied: int = 0
    skipped: int = 0  # not newer than the stored version
    refused_closed: int = 0  # a non-closed state for a closed subject
    undecodable: int = 0
    tombstones: int = 0
    elapsed_s: float = 0.0
    complete: bool = False

    def count(self, outcomes: list[ApplyOutcome]) -> None:
        for outcome in outcomes:
            if outcome is ApplyOutcome.APPLIED:
                self.applied += 1
            elif outcome is ApplyOutcome.NOT_NEWER:
                self.skipped += 1
            else:
                self.refused_closed += 1

    def summary(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE (timed out)"
        return (
            f"rebuild-store {state}: {self.read} read, {self.applied} applied, "
            f"{self.skipped} skipped (not newer), {self.refused_closed} refused (closed), "
            f"{self.undecodable} undecodable, {self.tombstones} tombstones "
            f"in {self.elapsed_s:.2f} s"
        )


class _Rebuild:
    """Applies the states of each batch the reader yields, counting what happened."""

    def __init__(self, store: ConsentStore, serde: AvroSerde, topic: str) -> None:
        self.store, self.serde, self.topic = store, serde, topic
        self.report = RebuildReport()

    def run(self, reader: TopicToEnd) -> None:
        last = time.monotonic()
        for batch in reader.batches():
            states = [state for message in batch if (state := self._decode(message)) is not None]
            self.report.count(self.store.apply_states(states))
            if time.monotonic() - last >= _PROGRESS_EVERY_S:
                last = time.monotonic()
                log.info(
                    "rebuild-store: %d read, %d applied", self.report.read, self.report.applied
                )
        self.report.complete = reader.complete

    def _decode(self, message: Any) -> ConsentState | None:
        self.report.read += 1
        value = message.value()
        if value is None:
            self.report.tombstones += 1
            return None
        try:
            return self.serde.decode_as(value, ConsentState, self.topic)
        except ContractError as exc:
            self.report.undecodable += 1
            log.warning(
                "rebuild-store: undecodable record at %s[%d]@%d: %s",
                self.topic,
                message.partition(),
                message.offset(),
                exc.reason,
            )
            return None


def rebuild_from_topic(
    settings: Settings,
    store: ConsentStore,
    topic: str | None = None,
    group: str | None = None,
    timeout_s: float = 600.0,
    *,
    batch_size: int = 500,
    serde: AvroSerde | None = None,
    consumer_factory: ConsumerFactory | None = None,
) -> RebuildReport:
    """Apply every ConsentState on ``topic`` (start to the end captured now) to ``store``.

    ``topic`` defaults to ``settings.topics.state`` (``consent.state.v1`` under the
    configured namespace); ``serde`` to ``AvroSerde(settings.schema_registry())``;
    ``consumer_factory`` to ``confluent_kafka.Consumer`` (both injectable for tests).
    """
    started = time.monotonic()
    topic = topic or settings.topics.state
    serde = serde or AvroSerde(settings.schema_registry(), settings.max_record_bytes)
    rebuild = _Rebuild(store, serde, topic)
    group_id = group or f"{settings.client_id}-store-rebuild-{uuid.uuid4().hex[:12]}"
    reader = TopicToEnd(
        settings,
        topic,
        timeout_s,
        group=group_id,
        batch_size=batch_size,
        consumer_factory=consumer_factory,
    )
    rebuild.run(reader)
    rebuild.report.elapsed_s = time.monotonic() - started
    log.info("%s", rebuild.report.summary())
    return rebuild.report


def run_rebuild_store(
    settings: Settings,
    policy: Policy,
    *,
    topic: str | None = None,
    timeout_s: float = 600.0,
    out: TextIO | None = None,
) -> int:
    """``consent-stream rebuild-store``: prints the counts; exit 0 when complete, else 1.

    Writes under ``settings.redis_prefix`` with ``settings.subject_keys``, like the worker.
    """
    client = make_redis(settings)
    try:
        keys, prefix = settings.subject_keys, settings.redis_prefix
        store = ConsentStore(client, policy, keys, prefix, settings.redis_min_replicas)
        report = rebuild_from_topic(settings, store, topic, timeout_s=timeout_s)
    finally:
        client.close()
    print(report.summary(), file=out or sys.stdout)
    return 0 if report.complete else 1
