"""The stop of a long-running asyncio command: an event set by SIGTERM or SIGINT.

The gateway, the webhook bridge and the simulated webhook partner each run until one of
the two signals arrives, then shut down in order (flush, close, commit)."""

from __future__ import annotations

import asyncio
import signal

__all__ = ["stop_on_signals"]


def stop_on_signals() -> asyncio.Event:
    """An event of the running loop that SIGTERM and SIGINT set (main thread only)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
