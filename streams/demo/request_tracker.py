"""The deletion requests of a demo workload, followed in Redis (the workers' request views)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any, Final

from schemas.views import FINAL_REQUEST_STATES
from streams.request_views import request_key, status_from_json

__all__ = ["NOT_SEEN", "RequestTracker"]

NOT_SEEN: Final = "NOT_SEEN"
_CHUNK: Final = 500


class RequestTracker:
    """Status of each request id; a final status is remembered and not read again."""

    def __init__(self, redis: Any, prefix: str, request_ids: Iterable[str]) -> None:
        self._redis, self._prefix = redis, prefix
        self._ids = sorted(request_ids)
        self._status = dict.fromkeys(self._ids, NOT_SEEN)
        self._final: set[str] = set()
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def poll(self) -> None:
        with self._lock:
            pending = [i for i in self._ids if i not in self._final]
            for start in range(0, len(pending), _CHUNK):
                chunk = pending[start : start + _CHUNK]
                raws = self._redis.mget([request_key(self._prefix, i) for i in chunk])
                for request_id, raw in zip(chunk, raws, strict=True):
                    if raw is None:
                        continue
                    status = status_from_json(raw).status
                    self._status[request_id] = status.value
                    if status in FINAL_REQUEST_STATES:
                        self._final.add(request_id)

    def final_count(self) -> int:
        self.poll()
        return len(self._final)

    def by_status(self) -> Counter[str]:
        self.poll()
        with self._lock:
            return Counter(self._status.values())
