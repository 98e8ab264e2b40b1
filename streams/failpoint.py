"""Failpoints: named places in the worker where a crash test can stop it.

Off unless ``CONSENT_STREAM_FAILPOINT`` is set (tests only), as ``<name>:<min>``: the
first time the worker reaches ``<name>`` with at least ``<min>`` items of work, it
writes ``<data_dir>/failpoint-<name>.json`` (what it had done by then) and blocks its
event loop for good, so the test can SIGKILL it by pid at exactly that point. A
failpoint fires once per data directory (the file exists afterwards), so the restarted
worker runs normally.

Places: ``events.mid_instructions`` (half of a batch's instructions acknowledged by the
broker; the other half, the batch's tickets, state records, store writes and subjects'
states not yet sent; those of the batches in flight before it may be out already).
``events.fail_batch`` does not block: the batch fails once, with nothing of it sent, as a
batch whose records the broker did not acknowledge would (the worker goes on).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

__all__ = ["Failpoint"]

log = logging.getLogger(__name__)


class Failpoint:
    def __init__(self, spec: str, data_dir: str) -> None:
        name, _, minimum = spec.partition(":")
        self._name = name
        self._min = int(minimum or "1")
        self._dir = Path(data_dir)

    def _marker(self) -> Path:
        return self._dir / f"failpoint-{self._name}.json"

    def armed(self, name: str, size: int) -> bool:
        return (
            bool(self._name)
            and name == self._name
            and size >= self._min
            and not (self._marker().exists())
        )

    def trip(self, facts: dict[str, Any]) -> None:
        """Record ``facts``; the caller fails (once per data directory)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._marker().write_text(json.dumps(facts))
        log.warning("failpoint %s reached; the batch fails", self._name)

    def hit(self, facts: dict[str, Any]) -> None:
        """Record ``facts`` and block the whole process until it is killed."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._marker().write_text(json.dumps(facts))
        log.warning("failpoint %s reached; waiting to be killed", self._name)
        while True:
            time.sleep(3600)
