"""``consent-stream demo --via-gateway F``: a share of the workload through the HTTP gateway.

The demo starts a ``consent-stream gateway`` child (as the ``gateway`` principal, a token
of its own naming the workload's sources) and routes a fixed share of the *subjects* to it
(every event of a routed subject, so each subject's events keep their order: one sender
thread, batches posted one after the other, events in order within a batch). The sender
posts what has queued up, up to ``BATCH`` events a request, and counts the answers.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from schemas.events import ConsentEvent
from schemas.jsonform import event_to_json
from schemas.settings import ENV_PREFIX

__all__ = ["BATCH", "GatewaySender", "gateway_env", "routed"]

log = logging.getLogger(__name__)

BATCH: Final = 500
_IDLE_S: Final = 0.05


def routed(subject_id: str, fraction: float) -> bool:
    """Whether ``subject_id``'s events go through the gateway (stable, by hash)."""
    return zlib.crc32(subject_id.encode("utf-8")) < fraction * 2**32


def gateway_env(port: int, token: str, sources: Iterable[str]) -> dict[str, str]:
    return {
        f"{ENV_PREFIX}GATEWAY_PORT": str(port),
        f"{ENV_PREFIX}GATEWAY_TOKENS": f"demo={token}:{'|'.join(sorted(set(sources)))}",
    }


def new_token() -> str:
    return f"demo-{secrets.token_hex(16)}"


@dataclass
class SenderCounts:
    events: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    requests: int = 0
    answer_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        times = sorted(self.answer_s) or [0.0]
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
        return (
            f"gateway: {self.events} events in {self.requests} POSTs: {self.accepted} accepted, "
            f"{self.rejected} rejected, {self.failed} not delivered; answer p50 "
            f"{1000 * times[len(times) // 2]:.0f} ms, p99 {1000 * p99:.0f} ms"
        )


class GatewaySender:
    """A thread posting queued events to the gateway on 127.0.0.1:``port``."""

    def __init__(self, port: int, token: str, delivered: Callable[[str], None]) -> None:
        self._port, self._token, self._delivered = port, token, delivered
        self._queue: queue.Queue[ConsentEvent | None] = queue.Queue()
        self.counts = SenderCounts()
        self._thread = threading.Thread(target=self._run, name="gateway-sender", daemon=True)
        self._thread.start()

    def put(self, event: ConsentEvent) -> None:
        self._queue.put(event)

    def close(self, timeout_s: float = 120.0) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=60)
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=_IDLE_S)
            except queue.Empty:
                continue
            batch: list[ConsentEvent] = []
            item: ConsentEvent | None = first
            while item is not None:
                batch.append(item)
                if len(batch) >= BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            stopping = item is None
            if batch:
                self._post(conn, batch)
        conn.close()

    def _post(self, conn: http.client.HTTPConnection, batch: list[ConsentEvent]) -> None:
        body = json.dumps([event_to_json(e) for e in batch]).encode("utf-8")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"}
        started = time.monotonic()
        c = self.counts
        c.events += len(batch)
        c.requests += 1
        try:
            conn.request("POST", "/v1/events", body=body, headers=headers)
            resp = conn.getresponse()
            answer = json.loads(resp.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            c.failed += len(batch)
            c.errors.append(f"POST /v1/events: {exc}")
            return
        c.answer_s.append(time.monotonic() - started)
        by_id = {e.event_id: e for e in batch}
        for item in answer.get("items", []):
            status = item.get("status")
            if status == "accepted":
                c.accepted += 1
                self._delivered(by_id[item["event_id"]].type.value)
            elif status == "rejected":
                c.rejected += 1
            else:
                c.failed += 1
        if resp.status != 202:
            c.errors.append(f"POST /v1/events answered {resp.status}: {str(answer)[:200]}")
            if "items" not in answer:
                c.failed += len(batch)
