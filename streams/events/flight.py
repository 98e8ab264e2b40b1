"""A batch in flight: its effects on their way while the events agent decides the next.

The events agent decides a batch, sends its first wave and goes on to the next batch; the
rest of the batch's life (the first wave's round trips, the last wave, the table, the
acknowledgement) is a task of its own. First waves go out in the batches' order, as each
is decided. A batch's subjects' states (and "dispatched" ledger entries) go out only after
the batch before it has sent those, so on every topic and partition a later batch's
records follow an earlier one's (the idempotent producer keeps per-partition order, and
fails a later record of a partition whose earlier record failed). A batch is settled (its
table writes committed, its records acknowledged) only after the batch before it.

When a batch fails, every batch after it fails at its gate or when it settles: their
decisions were made on top of the failed one's states, so all of them are processed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["Flight", "FlightAborted", "Gate"]


class FlightAborted(Exception):
    """A batch in flight before this one failed, so this one is processed again too."""


class Gate:
    """Opened once, when a batch has sent its last wave's records, or when it failed."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._error: BaseException | None = None

    def open(self) -> None:
        self._open.set()

    def fail(self, error: BaseException) -> None:
        if not self._open.is_set():
            self._error = error
            self._open.set()

    async def passed(self) -> None:
        """Wait until it is open; raises ``FlightAborted`` if its batch failed first."""
        await self._open.wait()
        if self._error is not None:
            raise FlightAborted(f"an earlier batch failed: {self._error!r}") from self._error


class Flight:
    """One batch's effects on their way (``EventProcessor.launch``); ``task`` ends when the
    batch is settled, or with the error that stopped it."""

    def __init__(self, before: Flight | None) -> None:
        self.before = before
        self.states_sent = Gate()
        self._task: asyncio.Task[Any] | None = None

    def start(self, carried: Coroutine[Any, Any, Any]) -> None:
        self._task = asyncio.ensure_future(carried)

    @property
    def task(self) -> asyncio.Task[Any]:
        if self._task is None:
            raise RuntimeError("the flight was not started")
        return self._task

    def failed(self) -> bool:
        task = self._task
        return (
            task is not None and task.done() and (task.cancelled() or task.exception() is not None)
        )

    def fail(self, error: BaseException) -> None:
        """Open the gate with ``error`` (if not opened yet), so later batches stop."""
        self.states_sent.fail(error)

    async def after_states_before(self) -> None:
        if self.before is not None:
            await self.before.states_sent.passed()

    async def after_settled_before(self) -> None:
        """The batch before this one is settled (``FlightAborted`` if it failed)."""
        before = self.before
        if before is not None:
            try:
                await asyncio.shield(before.task)
            except FlightAborted:
                raise
            except BaseException as exc:
                if not before.task.done():  # this batch's own task was cancelled
                    raise
                raise FlightAborted(f"an earlier batch failed: {exc!r}") from exc
        self.before = None  # settled: no need to keep the chain of batches alive
