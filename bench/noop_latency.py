"""(d) for the no-op Faust agent: its latency at the offered rates of the pipeline's steps.

The agent (``noop_agent.py --samples``, the worker's own Faust settings) runs as a
subprocess on its own topic; each step publishes the same events as the pipeline's step,
through the same paced publisher, at the same rate for the same time. The agent notes
``now - cs_published_at`` for each record as it gets it and appends the pairs (seen at,
latency) to a file, which this side reads from the step's first record on.
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import create_topics, delete_groups, delete_topics, new_namespace
from ceilings import noop_process
from cpu import cpu_delta, cpu_snapshot
from paced import Step, publish_paced
from quantiles import summary

from schemas.events import ConsentEvent
from schemas.policy import Policy
from schemas.settings import Settings

__all__ = ["NoopLatency", "noop_figures"]

log = logging.getLogger(__name__)

RECORD_BYTES = 2 * array("d").itemsize  # (seen at in ms since the epoch, latency in ms)


def noop_figures(pairs: Sequence[float]) -> dict[str, Any]:
    """From the flat (seen at, latency) pairs: how many, the rate seen, latency quantiles."""
    seen_at, latency = pairs[0::2], pairs[1::2]
    out: dict[str, Any] = {"seen": len(seen_at)}
    span_ms = max(seen_at) - min(seen_at) if seen_at else 0.0
    out["achieved_events_per_s"] = (
        round((len(seen_at) - 1) * 1000 / span_ms, 1) if span_ms > 0 else math.nan
    )
    out["latency_ms"] = summary(x for x in latency if not math.isnan(x))
    return out


class NoopLatency:
    """The agent and its topic for the whole of (d); a context manager that removes both."""

    def __init__(self, settings: Settings, work_dir: Path) -> None:
        namespace = new_namespace()
        self.settings = settings
        self.topic = f"{namespace}.bench.noop-latency"
        self.app_id = f"consent-stream-{namespace}-noop"
        self.samples_path = work_dir / f"{namespace}-noop-samples.bin"
        args = ["--topic", self.topic, "--samples", str(self.samples_path)]
        self.process = noop_process(settings, self.app_id, work_dir, args)

    def __enter__(self) -> NoopLatency:
        create_topics(self.settings, [self.topic])
        self.process.start()
        log.info("no-op agent %s pid %d", self.app_id, self.process.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()
        delete_topics(self.settings, [self.topic, f"{self.app_id}-"])
        delete_groups(self.settings, [self.app_id])

    def seen(self) -> int:
        """Records the agent has written out so far."""
        try:
            return self.samples_path.stat().st_size // RECORD_BYTES
        except FileNotFoundError:
            return 0

    def pairs(self, first: int, count: int) -> array[float]:
        with self.samples_path.open("rb") as f:
            f.seek(first * RECORD_BYTES)
            data = f.read(count * RECORD_BYTES)
        values = array("d")
        values.frombytes(data[: len(data) // RECORD_BYTES * RECORD_BYTES])
        return values

    def run_step(
        self,
        publisher_settings: Settings,
        policy: Policy,
        step: Step,
        events: list[ConsentEvent],
        timeout_s: float,
    ) -> dict[str, Any]:
        """Publish ``events`` at ``step.rate``; wait (bounded) until the agent saw them."""
        first = self.seen()
        target = first + len(events)
        before = cpu_snapshot(self.process.pid)
        publisher_rate = publish_paced(publisher_settings, policy, self.topic, step, events)
        deadline = time.monotonic() + timeout_s
        while self.seen() < target and time.monotonic() < deadline and self.process.alive():
            time.sleep(0.1)
        if not self.process.alive():
            raise RuntimeError(f"no-op agent exited: {self.process.log_tail(20)}")
        cpu = cpu_delta(before, cpu_snapshot(self.process.pid), len(events))
        figures = noop_figures(self.pairs(first, len(events)))
        return {
            "offered_events_per_s": step.rate,
            "duration_s": step.duration_s,
            "events": len(events),
            "publisher_events_per_s": round(publisher_rate, 1),
            **figures,
            "complete": figures["seen"] >= len(events),
            **cpu,
        }
