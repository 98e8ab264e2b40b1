"""The started worker's heap is frozen out of the collector's scans."""

from __future__ import annotations

import gc

from streams.gc_tuning import YOUNG_THRESHOLD, freeze_started_heap, hold_collection_until_started


def test_freezing_moves_the_live_objects_to_the_permanent_generation() -> None:
    kept = [[i] for i in range(1000)]  # tracked, alive
    thresholds = gc.get_threshold()
    hold_collection_until_started()
    assert not gc.isenabled()
    try:
        frozen = freeze_started_heap()
        assert gc.isenabled()
        assert frozen == gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert gc.get_freeze_count() == 0
