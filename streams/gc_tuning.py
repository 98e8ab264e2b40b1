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

From then on the youngest generation is collected after ``YOUNG_THRESHOLD`` net new
container objects instead of CPython's 700: each batch of events makes and drops a few
thousand short-lived objects, so at 700 the collector ran 41-48 times a second at 3,000
events/s (with the older generations' runs, 40-50 ms of every second, ~10 runs a second
over 1 ms, and a 10 ms one now and then) and found next to nothing; at 10,000 it ran
about once in 5-10 s, ~1 ms a second in all (docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import logging
from typing import Final

__all__ = ["YOUNG_THRESHOLD", "freeze_started_heap", "hold_collection_until_started"]

log = logging.getLogger(__name__)

YOUNG_THRESHOLD: Final = 10_000
"""Net new container objects between collections of the youngest generation."""


def hold_collection_until_started() -> None:
    """No cyclic garbage collection until ``freeze_started_heap``."""
    gc.disable()


def freeze_started_heap() -> int:
    """Collect once, freeze what is left, collect from then on (the youngest generation
    after ``YOUNG_THRESHOLD`` new objects); the objects frozen."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    gc.enable()
    frozen = gc.get_freeze_count()
    log.info("%d objects of the started worker frozen out of the garbage collector's scans", frozen)
    return frozen
