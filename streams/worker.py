"""``consent-stream worker``: build the parts, the Faust app, and run it."""

from __future__ import annotations

import logging
import os
from typing import Any

import faust
from prometheus_client import CollectorRegistry, Histogram

from consumers.store.clients import make_async_redis
from consumers.store.consent_store import AsyncConsentStore
from schemas.contracts import CONSENT_EVENT
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from streams.api.server import attach_views, build_http_parts
from streams.app import WorkerParts, attach_agents, create_app
from streams.events.processor import EventProcessor
from streams.failpoint import Failpoint
from streams.faust_glue.internal_topics import internal_topics
from streams.gc_tuning import freeze_started_heap, hold_collection_until_started
from streams.ledger.index import TicketIndex
from streams.ledger_processor import LedgerProcessor
from streams.loop_lag import LoopPulse, watch_loop_lag
from streams.metrics import stream_metrics
from streams.outbox import RecordSender
from streams.output import OutputProducer, output_producer_config
from streams.pseudonyms import Pseudonyms
from streams.request_views import AsyncRequestViews
from streams.source_reader import KafkaSourceReader
from streams.topics import ensure_topics

__all__ = ["build_parts", "build_worker_app", "faust_worker", "run_worker"]

log = logging.getLogger(__name__)


def build_parts(app: faust.App, settings: Settings, policy: Policy) -> WorkerParts:
    registry = CollectorRegistry()
    metrics = stream_metrics(registry)
    redis = make_async_redis(settings)
    store = AsyncConsentStore(
        redis, policy, settings.subject_keys, settings.redis_prefix, settings.redis_min_replicas
    )
    views = AsyncRequestViews(redis, settings.redis_prefix)
    serde = AvroSerde(settings.schema_registry(), settings.max_record_bytes)
    schema_ref = settings.schema_registry_url or CONSENT_EVENT.rsplit(".", 1)[0]
    sender = RecordSender(serde, schema_ref, settings.topics, settings.partitions)
    pseudonyms = Pseudonyms(settings.subject_keys)
    topics = settings.topics
    return WorkerParts(
        events=EventProcessor(
            policy,
            pseudonyms,
            serde,
            sender,
            store,
            metrics,
            topics,
            failpoint=Failpoint(settings.failpoint, settings.data_dir),
        ),
        ledger=LedgerProcessor(
            policy, serde, sender, views, metrics, topics, TicketIndex(settings.ticket_grace_ms)
        ),
        registry=registry,
        metrics=metrics,
        source_reader=KafkaSourceReader(settings, str(app.conf.id)),
        output=OutputProducer(output_producer_config(settings, "worker")),
        loop_pulse=LoopPulse(),
    )


def build_worker_app(settings: Settings, policy: Policy) -> tuple[faust.App, WorkerParts]:
    app = create_app(settings)
    parts = build_parts(app, settings, policy)
    attach_agents(app, settings, policy, parts)
    http = build_http_parts(settings, policy, parts.registry, parts.metrics, parts.loop_pulse)
    attach_views(app, http, settings)
    return app, parts


class _Worker(faust.Worker):
    def __init__(
        self,
        app: faust.App,
        *,
        loop_lag: Histogram | None,
        pulse: LoopPulse | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._loop_lag, self._pulse = loop_lag, pulse

    async def on_first_start(self) -> None:
        """The loop's lag is watched from the start, through the tables' recovery (Faust
        starts an app's own tasks only once it is over)."""
        await super().on_first_start()
        if self._loop_lag is not None:
            self.add_future(watch_loop_lag(self._loop_lag, pulse=self._pulse))

    async def on_startup_finished(self) -> None:
        """Once started (tables recovered): the heap so far is out of the collector's way."""
        await super().on_startup_finished()
        freeze_started_heap()


def faust_worker(
    app: faust.App,
    loglevel: str,
    loop_lag: Histogram | None = None,
    pulse: LoopPulse | None = None,
) -> faust.Worker:
    """The Faust worker that runs ``app``: the service's and the benchmark's no-op agent's
    (so the framework's ceiling is measured as the service runs). Faust's terminal spinner
    is off: at WARNING and above it sets the root logger to DEBUG, so that every debug
    record of aiokafka is built (about 10 % of the worker's CPU). With ``loop_lag``, the
    event loop's lag is observed in it from the worker's start (and each turn noted in
    ``pulse``, which ``/healthz`` reads)."""
    worker = _Worker(app, loop_lag=loop_lag, pulse=pulse, loglevel=loglevel, quiet=True)
    worker.spinner = None
    return worker


def run_worker(settings: Settings, policy: Policy, loglevel: str = "info") -> int:
    app, parts = build_worker_app(settings, policy)
    created = ensure_topics(settings, policy, extra=internal_topics(app, settings.max_record_bytes))
    if created:
        log.info("created %d topics", len(created))
    log.info("worker pid %d serving HTTP on 127.0.0.1:%d", os.getpid(), settings.http_port)
    hold_collection_until_started()
    worker = faust_worker(app, loglevel, parts.metrics.loop_lag, parts.loop_pulse)
    worker.execute_from_commandline()
    return 0
