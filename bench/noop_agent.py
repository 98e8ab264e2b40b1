"""The framework's ceiling: a Faust app whose one agent does nothing with its records.

Run as a subprocess by ``ceilings.py`` (b) and ``noop_latency.py`` (d). The app is built by
``streams.app.create_app`` (the worker's own Faust settings) and run by
``streams.worker.faust_worker`` (as the worker runs); the agent consumes one raw-bytes
topic (``streams.faust_glue.raw_topics``, as the worker's) with ``concurrency=1`` and
touches each event's headers like the real agent, nothing more. Two modes:

* ``--count N --out FILE`` (b): when N records were seen it writes the wall-clock times of
  the first and the last record to FILE (JSON); with ``--direct``, the agent takes the
  records the worker's way (``streams.faust_glue.direct``, in batches, acknowledged per
  batch) instead of as Faust events;
* ``--samples FILE`` (d): for each record it appends (now, now - ``cs_published_at``), in
  ms since the epoch and ms, to an in-memory array; a timer appends the new pairs to FILE
  (native doubles, 16 bytes a record) every ``FLUSH_INTERVAL_S``.

Either way it keeps running until its parent stops it by pid.

Usage: noop_agent.py --topic T (--count N --out FILE [--direct] | --samples FILE)
(settings from CONSENT_STREAM_*)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from array import array
from pathlib import Path
from typing import Any

import faust

from schemas.cloudevents import header_map, published_at_ms
from schemas.settings import Settings
from streams.app import MAX_BATCH_RECORDS, create_app
from streams.faust_glue.batches import EventBatches
from streams.faust_glue.direct import deliver_directly
from streams.faust_glue.raw_topics import raw_topic
from streams.worker import faust_worker

FLUSH_INTERVAL_S = 0.2


def build(
    settings: Settings, topic_name: str, count: int, out: Path, *, direct: bool = False
) -> faust.App:
    app = create_app(settings)
    seen = {"n": 0, "first": 0.0}

    def note() -> None:
        seen["n"] += 1
        if seen["n"] == 1:
            seen["first"] = time.time()
        if seen["n"] == count:
            last = time.time()
            result = {"records": count, "first": seen["first"], "last": last}
            out.write_text(json.dumps(result))

    if direct:  # the worker's own path: messages handed over, batches acknowledged
        deliver_directly(app, [topic_name])

        @app.agent(raw_topic(app, topic_name), concurrency=1, name="noop-counter")
        async def batches(stream: Any) -> None:
            taken = EventBatches(stream, MAX_BATCH_RECORDS)
            async for batch in taken:
                for message in batch:
                    _ = message.headers
                    note()
                await taken.ack(batch)

        return app

    @app.agent(raw_topic(app, topic_name), concurrency=1, name="noop-counter")
    async def counter(stream: Any) -> None:
        async for event in stream.events():
            _ = event.message.headers
            note()

    return app


def build_latency(settings: Settings, topic_name: str, samples: Path) -> faust.App:
    app = create_app(settings)
    fd = os.open(samples, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pending = array("d")

    @app.agent(raw_topic(app, topic_name), concurrency=1, name="noop-latency")
    async def latency(stream: Any) -> None:
        append = pending.append
        async for event in stream.events():
            now = time.time() * 1000
            at = published_at_ms(header_map(event.message.headers))
            append(now)
            append(now - at if at is not None else math.nan)

    @app.timer(FLUSH_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def flush() -> None:
        if pending:  # one write of whole records, then cleared: no await in between
            os.write(fd, pending.tobytes())
            del pending[:]

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--samples", type=Path)
    parser.add_argument("--direct", action="store_true", help="the worker's own path")
    args = parser.parse_args()
    settings = Settings.from_env().as_principal("admin")
    if args.samples is not None:
        app = build_latency(settings, args.topic, args.samples)
    elif args.count is not None and args.out is not None:
        app = build(settings, args.topic, args.count, args.out, direct=args.direct)
    else:
        parser.error("either --samples or both --count and --out")
    faust_worker(app, "warning").execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
