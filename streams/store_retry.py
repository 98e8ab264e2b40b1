"""Redis outages are waited out, never skipped: the worker's writes to Redis retry with a
bounded backoff until Redis answers (the batch, and so the partition, waits)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from schemas.errors import StoreUnavailableError
from streams.metrics import StreamMetrics

__all__ = ["STORE_BACKOFF_S", "wait_out_store_outages"]

log = logging.getLogger(__name__)

T = TypeVar("T")

STORE_BACKOFF_S: Final = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


async def wait_out_store_outages(write: Callable[[], Awaitable[T]], metrics: StreamMetrics) -> T:
    """Call ``write`` until it does not raise ``StoreUnavailableError``."""
    attempt = 0
    while True:
        try:
            return await write()
        except StoreUnavailableError as exc:
            delay = STORE_BACKOFF_S[min(attempt, len(STORE_BACKOFF_S) - 1)]
            attempt += 1
            metrics.store_retries.labels(reason=exc.reason).inc()
            log.warning(
                "consent store unavailable (attempt %d, retry in %.1fs): %s", attempt, delay, exc
            )
            await asyncio.sleep(delay)
