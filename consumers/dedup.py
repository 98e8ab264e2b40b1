"""Processed instructions: instruction id -> the acknowledgement sent for it.

A redelivered or republished instruction (same ``instruction_id``) is answered with the
acknowledgement remembered here, so the handler runs once and a lost ack is re-sent
unchanged. ``InMemoryProcessedInstructions`` forgets on restart;
``SqliteProcessedInstructions`` keeps its answers in a file across restarts.

Neither grows without end: the memory store keeps the ``MAX_IN_MEMORY`` answers given most
recently, the file the answers of the last ``KEEP_ANSWERS_S`` (by their ``completed_at``),
far longer than an instruction stays on its topic (the broker's default retention is 7
days). An instruction delivered again after its answer was forgotten is handled again: the
handler's idempotence (docs/partner-sdk.md) covers it, and the platform ignores a second
answer to an answered instruction (``repeated``, or ``unknown_instruction`` once its
settled ticket is gone).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, Protocol, TypeVar

from schemas.partner import AcknowledgementStatus, PartnerAcknowledgement

__all__ = [
    "KEEP_ANSWERS_S",
    "MAX_IN_MEMORY",
    "PRUNE_EVERY_S",
    "FirstAnswers",
    "InMemoryProcessedInstructions",
    "ProcessedInstructions",
    "SentAck",
    "SqliteProcessedInstructions",
]

MAX_IN_MEMORY: Final = 100_000
"""Answers the memory store keeps (the most recent; ~0.5 KB each)."""
KEEP_ANSWERS_S: Final = 30 * 86_400
"""How long the file store keeps an answer, from its ``completed_at``."""
PRUNE_EVERY_S: Final = 3_600
"""How often the file store deletes the answers past ``KEEP_ANSWERS_S`` (and when opened)."""

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class SentAck:
    """An acknowledgement and the CloudEvents id it is sent with (the same on every re-send)."""

    ack: PartnerAcknowledgement
    ce_id: str


class ProcessedInstructions(Protocol):
    """Where the SDK remembers its answers. Implementations must be durable to be useful."""

    def get(self, instruction_id: str) -> SentAck | None: ...

    def remember(self, sent: SentAck) -> SentAck:
        """Store ``sent`` unless an answer is already stored; return the stored answer."""
        ...

    def close(self) -> None: ...


class FirstAnswers(Generic[K, V]):
    """The first answer given under each key, for the ``max_entries`` keys answered most
    recently (the oldest is forgotten first). Not thread-safe."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._max = max_entries
        self._answers: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._answers.get(key)

    def keep(self, key: K, answer: V) -> V:
        """Keep ``answer`` unless ``key`` has one; return the one kept."""
        kept = self._answers.setdefault(key, answer)
        if len(self._answers) > self._max:
            self._answers.popitem(last=False)
        return kept

    def __len__(self) -> int:
        return len(self._answers)


class InMemoryProcessedInstructions:
    """For tests and stateless partners: duplicates are caught within one process only,
    among its last ``max_answers`` answers."""

    def __init__(self, max_answers: int = MAX_IN_MEMORY) -> None:
        self._acks: FirstAnswers[str, SentAck] = FirstAnswers(max_answers)
        self._lock = threading.Lock()

    def get(self, instruction_id: str) -> SentAck | None:
        with self._lock:
            return self._acks.get(instruction_id)

    def remember(self, sent: SentAck) -> SentAck:
        with self._lock:
            return self._acks.keep(sent.ack.instruction_id, sent)

    def __len__(self) -> int:
        return len(self._acks)

    def close(self) -> None:
        """Nothing to release."""


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS processed_instructions (
    instruction_id TEXT PRIMARY KEY,
    partner        TEXT NOT NULL,
    status         TEXT NOT NULL,
    completed_at   INTEGER NOT NULL,
    retain_until   INTEGER,
    reason         TEXT,
    ce_id          TEXT NOT NULL
)
"""
_INDEX: Final = """
CREATE INDEX IF NOT EXISTS processed_instructions_completed_at
    ON processed_instructions (completed_at)
"""
_COLUMNS: Final = "instruction_id, partner, status, completed_at, retain_until, reason, ce_id"


class SqliteProcessedInstructions:
    """Answers kept in a SQLite file (WAL, synchronous=FULL): survive a crash or restart.

    One file per partner process; the parent directory is created if missing. Answers
    completed more than ``keep_for_s`` ago (None: never) are deleted when the file is
    opened and then at most every ``PRUNE_EVERY_S``, by ``clock`` (epoch seconds).
    """

    def __init__(
        self,
        path: str | Path,
        keep_for_s: float | None = KEEP_ANSWERS_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._keep_for_s, self._clock = keep_for_s, clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._db.execute(_INDEX)
        self._pruned_at = clock()
        self._prune(self._pruned_at)

    def get(self, instruction_id: str) -> SentAck | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM processed_instructions WHERE instruction_id = ?",  # noqa: S608
                (instruction_id,),
            ).fetchone()
        return None if row is None else _from_row(row)

    def remember(self, sent: SentAck) -> SentAck:
        ack = sent.ack
        row = (
            ack.instruction_id,
            ack.partner,
            ack.status.value,
            ack.completed_at,
            ack.retain_until,
            ack.reason,
            sent.ce_id,
        )
        with self._lock:
            self._db.execute(
                f"INSERT OR IGNORE INTO processed_instructions ({_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        now = self._clock()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            self._prune(now)
        stored = self.get(ack.instruction_id)
        return sent if stored is None else stored

    def _prune(self, now: float) -> None:
        if self._keep_for_s is None:
            return
        before_ms = int((now - self._keep_for_s) * 1000)
        with self._lock:
            self._db.execute(
                "DELETE FROM processed_instructions WHERE completed_at < ?", (before_ms,)
            )

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM processed_instructions").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _from_row(row: tuple[str, str, str, int, int | None, str | None, str]) -> SentAck:
    instruction_id, partner, status, completed_at, retain_until, reason, ce_id = row
    ack = PartnerAcknowledgement(
        instruction_id=instruction_id,
        partner=partner,
        status=AcknowledgementStatus(status),
        completed_at=completed_at,
        retain_until=retain_until,
        reason=reason,
    )
    return SentAck(ack, ce_id)
