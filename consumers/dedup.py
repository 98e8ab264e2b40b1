"""Processed instructions: instruction id -> the acknowledgement sent for it.

A redelivered or republished instruction (same ``instruction_id``) is answered with the
acknowledgement remembered here, so the handler runs once and a lost ack is re-sent
unchanged. ``InMemoryProcessedInstructions`` forgets on restart;
``SqliteProcessedInstructions`` keeps its answers in a file across restarts.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from schemas.partner import AcknowledgementStatus, PartnerAcknowledgement

__all__ = [
    "InMemoryProcessedInstructions",
    "ProcessedInstructions",
    "SentAck",
    "SqliteProcessedInstructions",
]


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


class InMemoryProcessedInstructions:
    """For tests and stateless partners: duplicates are caught within one process only."""

    def __init__(self) -> None:
        self._acks: dict[str, SentAck] = {}
        self._lock = threading.Lock()

    def get(self, instruction_id: str) -> SentAck | None:
        with self._lock:
            return self._acks.get(instruction_id)

    def remember(self, sent: SentAck) -> SentAck:
        with self._lock:
            return self._acks.setdefault(sent.ack.instruction_id, sent)

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
_COLUMNS: Final = "instruction_id, partner, status, completed_at, retain_until, reason, ce_id"


class SqliteProcessedInstructions:
    """Answers kept in a SQLite file (WAL, synchronous=FULL): survive a crash or restart.

    One file per partner process; the parent directory is created if missing.
    """

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

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
        stored = self.get(ack.instruction_id)
        return sent if stored is None else stored

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
