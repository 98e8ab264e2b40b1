"""The worker's garbage collector, out of the way of start-up and of the event path.

A full (generation 2) collection scans every tracked object of the process. While a
worker recovers its tables, the heap grows by what it reads, and each full collection
scans all of it again: with 1,000,000 ledger tickets, 61 of them took 10.9 s of the 122 s
start-up (the longest 1.7 s). Once started, the demo's worker paused ~50 ms three times in
a 1,000 events/s run, and every event waiting meanwhile took as long (the p99 of publish ->
store). So the collector is off from the start until the worker has started (tables
recovered, agents running; reference counting frees everything that is not in a cycle);
then one collection, and ``gc.freeze()`` moves what is left, long-lived by then, to the
permanent generation, which later collections do not scan. A reference cycle among frozen
objects would stay until the process ends.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["freeze_started_heap", "hold_collection_until_started"]

log = logging.getLogger(__name__)


def hold_collection_until_started() -> None:
    """No cyclic garbage collection until ``freeze_started_heap``."""
    gc.disable()


def freeze_started_heap() -> int:
    """Collect once, freeze what is left, collect from then on; the objects frozen."""
    gc.collect()
    gc.freeze()
    gc.enable()
    frozen = gc.get_freeze_count()
    log.info("%d objects of the started worker frozen out of the garbage collector's scans", frozen)
    return frozen
