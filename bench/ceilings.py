"""(a) raw confluent-kafka produce -> consume and (b) a no-op Faust agent: the ceilings.

Both use the pipeline's own records (key, Avro value, CloudEvents headers, as encoded by
the SDK), cycled to the wanted count, and the service's librdkafka settings
(``Settings.producer_config`` / ``consumer_config``).
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchlib import (
    Record,
    create_topics,
    delete_groups,
    delete_topics,
    free_port,
    poll_until,
    produce_all,
)
from childproc import ChildProcess, child_env
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas.settings import Settings

__all__ = ["CEILING_PATHS", "NOOP_PATHS", "faust_noop", "noop_ceiling", "noop_process", "raw_kafka"]

HERE = Path(__file__).resolve().parent

NOOP_PATHS = {
    "faust_noop": "librdkafka",
    "faust_noop_aiokafka": "aiokafka",
    "faust_noop_direct": "direct",
}
"""The no-op agent three times, by result name: (b), a Faust agent iterating its stream's
events, fetched by the worker's record reader (``librdkafka``) and by Faust's own fetcher
(``aiokafka``); and the worker's own path without its work (``direct``: the reader's
messages handed to the agent's queue, taken and acknowledged in batches,
``streams.faust_glue.direct``), reported beside (b), not as (b)."""
CEILING_PATHS = ("faust_noop", "faust_noop_aiokafka")
"""(b): the no-op Faust agent as the issue defines it (``async for event in
stream.events()``), whichever fetch client."""


def noop_ceiling(results: dict[str, Any]) -> float | None:
    """(b): the faster of the no-op Faust agent's drains, so the pipeline is measured
    against the higher ceiling, whichever fetch client gives it."""
    rates = [results.get(name, {}).get("records_per_s") for name in CEILING_PATHS]
    measured = [rate for rate in rates if isinstance(rate, int | float)]
    return max(measured) if measured else None


def _cycled(pool: list[Record], count: int) -> list[Record]:
    return list(itertools.islice(itertools.cycle(pool), count))


class _Reader(threading.Thread):
    """Consumes ``count`` records of ``topic`` from the beginning; times first and last."""

    def __init__(self, settings: Settings, topic: str, count: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.count, self.deadline = count, deadline
        self.seen = 0
        self.first = self.last = 0.0
        self.consumer = Consumer(settings.consumer_config(f"bench-raw-{uuid.uuid4().hex}"))
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)]
        )

    def run(self) -> None:
        try:
            while self.seen < self.count and time.monotonic() < self.deadline:
                batch = self.consumer.consume(num_messages=1000, timeout=0.2)
                good = sum(1 for m in batch if m.error() is None)
                if good:
                    now = time.monotonic()
                    self.first = self.first or now
                    self.last = now
                    self.seen += good
        finally:
            self.consumer.close()


def raw_kafka(
    settings: Settings, namespace: str, pool: list[Record], count: int, timeout_s: float
) -> dict[str, Any]:
    """Produce ``count`` records while a consumer reads them; then re-read the backlog."""
    topic = f"{namespace}.bench.raw"
    create_topics(settings, [topic])
    deadline = time.monotonic() + timeout_s
    try:
        reader = _Reader(settings, topic, count, deadline)
        reader.start()
        delivered, sent, acked = produce_all(settings, topic, _cycled(pool, count), timeout_s)
        reader.join(max(1.0, deadline - time.monotonic()))
        backlog = _Reader(settings, topic, count, time.monotonic() + timeout_s / 2)
        backlog.run()
    finally:
        delete_topics(settings, [topic])
    result: dict[str, Any] = {
        "records": count,
        "mean_record_bytes": round(_mean_size(pool), 1),
        "produce_records_per_s": round(delivered / max(acked - sent, 1e-9), 1),
        "consumed": reader.seen,
        "complete": reader.seen >= count and backlog.seen >= count,
    }
    if reader.seen >= count:
        result["end_to_end_s"] = round(reader.last - sent, 3)
        result["end_to_end_records_per_s"] = round(count / (reader.last - sent), 1)
    if backlog.seen >= count and backlog.last > backlog.first:
        result["consume_backlog_records_per_s"] = round(
            (count - 1) / (backlog.last - backlog.first), 1
        )
    return result


def _mean_size(pool: list[Record]) -> float:
    """Key + value + header bytes per record."""
    total = sum(len(k) + len(v) + sum(len(h) + len(b) for h, b in hs) for k, v, hs in pool)
    return total / len(pool)


def faust_noop(
    settings: Settings,
    namespace: str,
    pool: list[Record],
    count: int,
    work_dir: Path,
    timeout_s: float,
    path: str = "librdkafka",
) -> dict[str, Any]:
    """Pre-produce ``count`` records, start the no-op agent (records taken by ``path``, a
    value of ``NOOP_PATHS``), time its first to last."""
    topic = f"{namespace}.bench.faust-{path}"
    app_id = f"consent-stream-{namespace}-noop-{path}"
    create_topics(settings, [topic])
    out = work_dir / f"noop-result-{path}.json"
    args = ["--topic", topic, "--count", str(count), "--out", str(out)]
    fetch_client = "aiokafka" if path == "aiokafka" else "librdkafka"
    if path == "direct":
        args.append("--direct")
    agent = noop_process(settings, app_id, work_dir, args, fetch_client)
    try:
        delivered, _, _ = produce_all(settings, topic, _cycled(pool, count), timeout_s)
        started = time.monotonic()
        agent.start()
        poll_until(lambda: out.exists() or not agent.alive(), timeout_s, "no-op agent")
        if not out.exists():
            raise RuntimeError(f"no-op agent exited {agent.returncode}: {agent.log_tail(20)}")
        timing = json.loads(out.read_text())
        wall = time.monotonic() - started
    finally:
        agent.stop()
        delete_topics(settings, [topic, f"{app_id}-"])
        delete_groups(settings, [app_id])
    span = timing["last"] - timing["first"]
    return {
        "records": count,
        "path": path,
        "fetch_client": fetch_client,
        "produced": delivered,
        "mean_record_bytes": round(_mean_size(pool), 1),
        "first_to_last_s": round(span, 3),
        "records_per_s": round((count - 1) / span, 1) if span > 0 else None,
        "start_to_last_s": round(wall, 1),
        "complete": True,
    }


def noop_process(
    settings: Settings,
    app_id: str,
    work_dir: Path,
    args: list[str],
    fetch_client: str = "librdkafka",
) -> ChildProcess:
    """``noop_agent.py ARGS`` under its own Faust app id (not started yet); its records are
    fetched by ``fetch_client`` (``CONSENT_STREAM_FETCH_CLIENT``: the worker's record
    reader, ``librdkafka``, or Faust's own fetcher, ``aiokafka``)."""
    env = child_env(
        {
            "CONSENT_STREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "CONSENT_STREAM_PARTITIONS": str(settings.partitions),
            "CONSENT_STREAM_APP_ID": app_id,
            "CONSENT_STREAM_HTTP_PORT": str(free_port()),
            "CONSENT_STREAM_DATA_DIR": str(work_dir / f"{app_id}-data"),
            "CONSENT_STREAM_DEV_MODE": "1",
            "CONSENT_STREAM_FETCH_CLIENT": fetch_client,
        }
    )
    argv = [sys.executable, str(HERE / "noop_agent.py"), *args]
    return ChildProcess(argv, env, work_dir / f"{app_id}.log")
