"""A Faust transport whose producer is idempotent and whose flush is a real flush.

Faust's aiokafka producer turns idempotence on only inside transactions; the worker's
sends (instructions, state, ledger) get it here, under the broker scheme
``kafka-idempotent://``, registered by ``register()`` before the app is built.

Faust flushes the producer before it commits consumer offsets, but its buffer flush (the
queue behind ``send_soon``, which carries every table changelog write) gives up after
0.1 s without a message going out, and does not see a message that its sender task has
already taken off the queue. Under load the offsets of an event could then be committed
before the changelog write of the state it produced reached the broker; a crash at that
moment lost the state change for good (the event is never redelivered). Here ``flush``
also waits until every message handed to ``send_soon`` has been acknowledged by the
broker, and refuses (so the commit does not happen) if the producer stops first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from faust.transport import drivers
from faust.transport.drivers import aiokafka as aiokafka_driver

from schemas.errors import PublishError

__all__ = ["SCHEME", "DeliveryTracker", "IdempotentProducer", "Transport", "register"]

SCHEME: Final = "kafka-idempotent"


class DeliveryTracker:
    """The futures of messages handed over but not yet acknowledged by the broker."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[Any]] = set()

    def track(self, fut: asyncio.Future[Any]) -> None:
        if not fut.done():
            self._pending.add(fut)
            fut.add_done_callback(self._pending.discard)

    def __len__(self) -> int:
        return len(self._pending)

    def snapshot(self) -> list[asyncio.Future[Any]]:
        return list(self._pending)


class IdempotentProducer(aiokafka_driver.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.undelivered = DeliveryTracker()

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    def send_soon(self, fut: Any) -> None:
        self.undelivered.track(fut)
        super().send_soon(fut)

    async def flush(self) -> None:
        await super().flush()
        while pending := self.undelivered.snapshot():
            result = await self.wait_many(pending)
            if result.stopped:
                raise PublishError(
                    f"producer stopped with {len(self.undelivered)} buffered messages "
                    "(table changelog) not acknowledged; offsets are not committed"
                )
            for fut in pending:
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise PublishError(
                        f"a buffered message was not delivered: {fut.exception()!r}"
                    )
        await super().flush()  # what the awaited futures' callbacks may have queued


class Transport(aiokafka_driver.Transport):
    Producer = IdempotentProducer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
