"""(b) The framework's ceiling: a Faust app whose one agent only counts records.

Run as a subprocess by ``faust_ceiling.py``. The app is built by ``streams.app.create_app``
(the worker's own Faust settings); the agent consumes one raw-bytes topic with
``concurrency=1`` and touches each event's headers like the real agent, nothing more.
When ``--count`` records were seen it writes the wall-clock times of the first and the
last record to ``--out`` (JSON) and keeps idling until its parent stops it by pid.

Usage: noop_agent.py --topic T --count N --out FILE  (settings from CONSENT_STREAM_*)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import faust

from schemas.settings import Settings
from streams.app import create_app


def build(settings: Settings, topic_name: str, count: int, out: Path) -> faust.App:
    app = create_app(settings)
    topic = app.topic(
        topic_name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    seen = {"n": 0, "first": 0.0}

    @app.agent(topic, concurrency=1, name="noop-counter")
    async def counter(stream: Any) -> None:
        async for event in stream.events():
            _ = event.message.headers
            seen["n"] += 1
            if seen["n"] == 1:
                seen["first"] = time.time()
            if seen["n"] == count:
                last = time.time()
                result = {"records": count, "first": seen["first"], "last": last}
                out.write_text(json.dumps(result))  # noqa: ASYNC240 - once, after timing

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    app = build(Settings.from_env(), args.topic, args.count, args.out)
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
