"""A worker's histogram read from its /metrics page, and what happened between two reads:
how many observations, their mean, and the smallest bucket bound every one of them fitted
in (the sweep's time on the loop in (g), the event loop's lag in (c) and (g))."""

from __future__ import annotations

from typing import Any

from workerproc import WorkerProcess

__all__ = ["LOOP_LAG", "between", "loop_lag_within_s", "reading"]

LOOP_LAG = "consent_event_loop_lag_seconds"


def reading(worker: WorkerProcess, metric: str) -> dict[str, float]:
    """``count``, ``sum`` and each bucket's count by its ``le`` bound."""
    found: dict[str, float] = {}
    names = (f"{metric}_{suffix}" for suffix in ("bucket", "count", "sum"))
    for name, labels, value in worker.metrics(*names):
        if name == f"{metric}_bucket":
            found[labels["le"]] = value
        elif name in (f"{metric}_count", f"{metric}_sum"):
            found[name.rpartition("_")[2]] = value
    return found


def between(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """``count`` observations between the readings, their ``mean_s``, and
    ``longest_within_s``: the smallest bound all fitted in (None: longer than every
    bound)."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    if count <= 0:
        return {"count": 0}
    spent = after.get("sum", 0.0) - before.get("sum", 0.0)
    bounds = sorted((float(le), le) for le in after if le not in ("count", "sum", "+Inf"))
    longest = next((b for b, le in bounds if after[le] - before.get(le, 0.0) >= count), None)
    return {"count": int(count), "mean_s": spent / count, "longest_within_s": longest}


def loop_lag_within_s(before: dict[str, float], after: dict[str, float]) -> float | None:
    """The smallest bucket bound every lag of the worker's loop fitted in between two
    readings (``consent_event_loop_lag_seconds``); None: longer than every bound, or
    no sample."""
    lags = between(before, after)
    return lags.get("longest_within_s") if lags["count"] else None
