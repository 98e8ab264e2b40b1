"""The webhook bridge: one partner's instructions, POSTed to its URL, answers to its acks.

``consent-stream webhook-bridge --partner <p>`` logs in to Kafka as ``partner-<p>`` (it
acts for the partner: reads ``partner.<p>.instructions.v1`` as group ``partner.<p>``,
writes ``partner.<p>.acks.v1``). For each instruction:

1. an answer remembered for its id (``SqliteProcessedInstructions``, the partner SDK's
   store) is sent again unchanged, without calling the partner;
2. else it is POSTed (``consumers.webhook.poster``; the request and what an answer means:
   ``consumers.webhook.delivery``, JSON, CloudEvents binary mode, signed) until the partner
   answers, retrying 5xx/408/429/timeouts/connection errors
   with backoff and jitter (or ``Retry-After``) up to the instruction's ``due_by``;
3. the acknowledgement (the answer's, FAILED for a final failure or a missed deadline) is
   remembered, then produced (idempotent, acks=all) keyed by ``ack_key``; a ``202`` has no
   ack now (the partner calls back, ``consumers.webhook.callback``);
4. a partition's offset is committed only up to the last instruction before the first
   one that is not finished (``commit_points``).

Order: instructions with the same Kafka key (the partner-scoped subject ref) are
delivered one after the other, in offset order: the next one is POSTed only once the
previous one is finished. Different keys run concurrently, at most
``webhook_concurrency`` requests at a time. Delivery is at-least-once (a crash between an
answer and its commit repeats the POST, with the same ``ce-id``); acks are at-least-once
with the same instruction id and ce_id, which the worker's ledger ignores as repeated.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, start_http_server

from consumers.dedup import ProcessedInstructions, SqliteProcessedInstructions
from consumers.partner_clients import KafkaConsumer, KafkaProducer, partner_clients
from consumers.partner_delivery import commit_points, instruction_of
from consumers.partner_metrics import partner_metrics
from consumers.partner_sender import AckSender, PendingAck
from consumers.webhook.delivery import RetryPolicy
from consumers.webhook.metrics import OUTCOMES, WebhookMetrics, webhook_metrics
from consumers.webhook.poster import Stopped, WebhookPoster
from schemas.partner import PartnerInstruction
from schemas.secrets import Secret
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.stop_signals import stop_on_signals

__all__ = ["WebhookBridge", "run_webhook_bridge"]

log = logging.getLogger(__name__)

_POLL_S: Final = 0.05  # also how long a commit may wait behind a poll
_BATCH: Final = 100


@dataclass(slots=True)
class _Slot:
    """One consumed record, in consumption order; ``done`` once its effect is durable."""

    record: Any
    done: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def partition(self) -> tuple[str, int]:
        return (self.record.topic(), self.record.partition())


class WebhookBridge:
    """One partner's bridge. ``await run(stop)``; closes its clients when it returns."""

    def __init__(
        self,
        settings: Settings,
        partner: str,
        url: str,
        secret: Secret,
        dedup: ProcessedInstructions,
        *,
        consumer: KafkaConsumer | None = None,
        producer: KafkaProducer | None = None,
        serde: AvroSerde | None = None,
        registry: CollectorRegistry | None = None,
        group_id: str | None = None,
        instructions_topic: str | None = None,
        acks_topic: str | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.partner = partner
        self.url = url
        self.instructions_topic = instructions_topic or settings.topics.instructions(partner)
        self.acks_topic = acks_topic or settings.topics.acks(partner)
        group = group_id or settings.topics.partner_group(partner)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics: WebhookMetrics = webhook_metrics(self.registry)
        for outcome in OUTCOMES:  # a counter's first increase must show in increase()
            self.metrics.deliveries.labels(partner, outcome)
        self.metrics.deadline_failures.labels(partner)
        self.metrics.in_flight.labels(partner)
        self._dedup = dedup
        clients = partner_clients(
            settings, group, consumer=consumer, producer=producer, serde=serde
        )
        self._consumer, self._producer, self._serde = (
            clients.consumer,
            clients.producer,
            clients.serde,
        )
        self._concurrency = settings.webhook_concurrency
        self._timeout_s = settings.webhook_timeout_s
        self._max_buffered = max(100, 10 * self._concurrency)
        self._clock = clock
        self._poster = WebhookPoster(
            partner,
            url,
            secret,
            dedup,
            self.metrics,
            concurrency=self._concurrency,
            timeout_s=self._timeout_s,
            retry=retry or RetryPolicy(),
            rng=rng or random.Random(),  # noqa: S311 - jitter, not security
            clock=clock,
        )
        self._thread_stop = threading.Event()
        self._sender = AckSender(
            self._producer,
            self._serde,
            topic=self.acks_topic,
            partner=partner,
            data_schema=clients.ack_data_schema,
            metrics=partner_metrics(self.registry),
            now_ms=self._now_ms,
            retry_wait_s=0.2,
        )
        self._pending: list[_Slot] = []
        self._tails: dict[bytes | None, asyncio.Task[None]] = {}
        self._progress = asyncio.Event()
        self._kafka = ThreadPoolExecutor(1, thread_name_prefix="webhook-kafka")
        self._stop = asyncio.Event()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._kafka, self._consumer.subscribe, [self.instructions_topic])
        log.info(
            "webhook bridge for %s: %s -> %s (%d in flight at most)",
            self.partner,
            self.instructions_topic,
            _origin(self.url),
            self._concurrency,
        )
        committer = asyncio.create_task(self._commit_loop())
        try:
            async with self._poster:
                await self._consume_loop(loop)
                await self._drain()
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            await self._commit()
            await loop.run_in_executor(self._kafka, self._close_clients)
            self._kafka.shutdown(wait=True)

    async def _consume_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop.is_set():
            if len(self._pending) >= self._max_buffered:
                await self._wait_progress()
                continue
            records = await loop.run_in_executor(self._kafka, self._next_batch)
            for record in records:
                if record.error() is not None:
                    log.warning("consumer error on %s: %s", self.instructions_topic, record.error())
                    continue
                self._start(record)

    def _next_batch(self) -> list[Any]:
        records = list(self._consumer.consume(1, _POLL_S))
        if records:
            records += self._consumer.consume(_BATCH - 1, 0)
        return records

    def _start(self, record: Any) -> None:
        slot = _Slot(record)
        self._pending.append(slot)
        key = record.key()
        previous = self._tails.get(key)
        task = asyncio.create_task(self._deliver(slot, previous))
        slot.task = task
        self._tails[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))

    def _forget(self, key: bytes | None, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]
        self._progress.set()

    async def _wait_progress(self) -> None:
        self._progress.clear()
        stop = asyncio.create_task(self._stop.wait())
        progress = asyncio.create_task(self._progress.wait())
        await asyncio.wait({stop, progress}, return_when=asyncio.FIRST_COMPLETED)
        for t in (stop, progress):
            t.cancel()

    async def _drain(self) -> None:
        """On stop: requests in flight get their timeout to finish, the rest is left."""
        tasks = [s.task for s in self._pending if s.task is not None and not s.task.done()]
        if not tasks:
            return
        done, running = await asyncio.wait(tasks, timeout=self._timeout_s + 1)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        log.info("stopped: %d finished, %d left for the next run", len(done), len(running))

    # -- one instruction -------------------------------------------------------------------

    async def _deliver(self, slot: _Slot, previous: asyncio.Task[None] | None) -> None:
        try:
            if previous is not None:
                await asyncio.shield(previous)  # same key: strictly after the previous one
            instruction = self._decode(slot.record)
            if instruction is not None:
                await self._answer(instruction)
            slot.done = True
        except Stopped:
            pass
        except Exception:  # a bug must not end the bridge silently: log, leave uncommitted
            if not self._stop.is_set():
                log.exception("delivery failed unexpectedly; stopping the bridge")
                self._stop.set()

    def _decode(self, record: Any) -> PartnerInstruction | None:
        try:
            return instruction_of(self._serde, record)
        except Exception as exc:
            log.error(  # never the payload: it may hold personal data
                "undecodable record at %s[%s]@%s skipped (%s)",
                record.topic(),
                record.partition(),
                record.offset(),
                getattr(exc, "reason", type(exc).__name__),
            )
            return None

    async def _answer(self, instruction: PartnerInstruction) -> None:
        sent = await asyncio.to_thread(self._dedup.get, instruction.instruction_id)
        if sent is None:
            sent = await self._poster.answer(instruction, self._stop)
            if sent is None:
                return  # 202: the partner calls back
        else:
            log.info("instruction %s answered before: re-sending its ack", sent.ack.instruction_id)
        item = PendingAck(sent, instruction.ack_key, instruction.subject_ref)
        await asyncio.to_thread(self._sender.send_all, [item], self._thread_stop)
        if not item.delivered:
            raise Stopped

    # -- commits ---------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._progress.wait()
            self._progress.clear()
            await self._commit()

    async def _commit(self) -> None:
        points = commit_points((s.partition, s, s.done) for s in self._pending)
        if not points:
            return
        committed = {p: s.record.offset() for p, s in points.items()}
        self._pending = [
            s
            for s in self._pending
            if s.partition not in committed or s.record.offset() > committed[s.partition]
        ]
        records = [s.record for s in points.values()]
        await asyncio.get_running_loop().run_in_executor(self._kafka, self._commit_records, records)

    def _commit_records(self, records: list[Any]) -> None:
        for record in records:
            try:
                self._consumer.commit(message=record, asynchronous=False)
            except Exception as exc:  # rebalance or broker gone: redelivery repeats the POST
                log.warning("commit of %s[%s] failed: %s", record.topic(), record.partition(), exc)

    def _close_clients(self) -> None:
        self._thread_stop.set()
        left = self._producer.flush(10.0)
        if left:
            log.error("%d acks were not delivered before close (they will be re-sent)", left)
        self._consumer.close()


def _origin(url: str) -> str:
    """Scheme, host and port of a URL, for logs (a path may carry a partner's token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def run_webhook_bridge(
    settings: Settings,
    partner: str,
    url: str,
    *,
    state_dir: str | Path | None = None,
    metrics_port: int | None = None,
) -> int:
    """Run the bridge until SIGTERM/SIGINT. Returns 0.

    Answers are remembered in ``<state_dir>/webhook-<partner>.sqlite3`` (default:
    ``<settings.data_dir>/webhook``), so a restart does not POST an answered instruction
    again."""
    directory = Path(settings.data_dir) / "webhook" if state_dir is None else Path(state_dir)
    secret = settings.webhook_secret(partner)
    dedup = SqliteProcessedInstructions(directory / f"webhook-{partner}.sqlite3")
    try:
        bridge = WebhookBridge(settings, partner, url, secret, dedup)
        if metrics_port is not None:
            start_http_server(metrics_port, addr=settings.http_bind, registry=bridge.registry)
        asyncio.run(_run_until_signal(bridge))
    finally:
        dedup.close()
    log.info("webhook bridge for %s stopped", partner)
    return 0


async def _run_until_signal(bridge: WebhookBridge) -> None:
    stop = stop_on_signals()
    await bridge.run(stop)
