"""Simulated partners (payment, logistics, ads, ...) for the demo and the tests.

Each answers its instructions like the real partner would: ``payment`` keeps everything
under a legal duty (RESTRICTED for ERASE and RESTRICT), the others carry out what they are
told (DONE) and restrict when asked. Delay and failure rate are configurable.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, start_http_server

from consumers.dedup import SqliteProcessedInstructions
from consumers.partner import PartnerConsumer
from consumers.partner_results import Done, Handler, Restricted, Result
from schemas.errors import TransientError
from schemas.partner import InstructionAction, PartnerAcknowledgement, PartnerInstruction
from schemas.settings import Settings

__all__ = ["LEGAL_DUTY_PARTNERS", "SIMULATED_OUTAGE", "run_partner", "simulated_handler"]

log = logging.getLogger(__name__)

LEGAL_DUTY_PARTNERS: Final = frozenset({"payment"})
SIMULATED_OUTAGE: Final = "simulated_outage"
RETENTION_DAYS: Final = 1095  # 3 years after the transaction (e-commerce law)
_DAY_MS: Final = 86_400_000
_RESTRICTING: Final = frozenset({InstructionAction.RESTRICT, InstructionAction.ERASE})


def simulated_handler(
    partner: str,
    delay_s: float = 0.0,
    failure_rate: float = 0.0,
    rng: random.Random | None = None,
    retention_days: int = RETENTION_DAYS,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Handler:
    """A handler that waits ``delay_s``, raises with probability ``failure_rate``, answers."""
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError("failure_rate must be between 0 and 1")
    draw = rng or random.Random()  # noqa: S311 - simulation, not security
    keeps_everything = partner in LEGAL_DUTY_PARTNERS

    def handle(instruction: PartnerInstruction) -> Result:
        if delay_s > 0:
            sleep(delay_s)
        if failure_rate > 0 and draw.random() < failure_rate:
            raise TransientError(f"simulated {partner} outage", reason=SIMULATED_OUTAGE)
        restricts = instruction.action is InstructionAction.RESTRICT or (
            keeps_everything and instruction.action in _RESTRICTING
        )
        if not restricts:
            return Done()
        if instruction.retain_until is not None:
            return Restricted(instruction.retain_until)
        return Restricted(int(clock() * 1000) + retention_days * _DAY_MS)

    return handle


def run_partner(
    settings: Settings,
    partner: str,
    delay_ms: int = 0,
    failure_rate: float = 0.0,
    seed: int | None = None,
    state_dir: str | Path | None = None,
    stop_event: threading.Event | None = None,
    *,
    retention_days: int = RETENTION_DAYS,
    registry: CollectorRegistry | None = None,
    metrics_port: int | None = None,
    log_every: int = 100,
    group_id: str | None = None,
    instructions_topic: str | None = None,
    acks_topic: str | None = None,
) -> int:
    """Run one simulated partner until SIGTERM/SIGINT (or ``stop_event``). Returns 0.

    Answers are remembered in ``<state_dir>/partner-<partner>.sqlite3`` (default state_dir:
    ``<settings.data_dir>/partners``), so a restart does not handle an instruction twice.
    """
    stop = threading.Event() if stop_event is None else stop_event
    registry = registry if registry is not None else CollectorRegistry()
    directory = Path(settings.data_dir) / "partners" if state_dir is None else Path(state_dir)
    rng = random.Random(seed)  # noqa: S311 - simulation, not security
    handler = simulated_handler(partner, delay_ms / 1000, failure_rate, rng, retention_days)
    tally = _AckTally(partner, log_every)
    with _stop_on_signals(stop):
        if metrics_port is not None:
            start_http_server(metrics_port, registry=registry)
        dedup = SqliteProcessedInstructions(directory / f"partner-{partner}.sqlite3")
        try:
            consumer = PartnerConsumer(
                settings,
                partner,
                handler,
                dedup=dedup,
                registry=registry,
                on_ack=tally,
                group_id=group_id,
                instructions_topic=instructions_topic,
                acks_topic=acks_topic,
            )
            log.info(
                "simulated partner %s started (delay %d ms, failure rate %.2f)",
                partner,
                delay_ms,
                failure_rate,
            )
            with consumer:
                consumer.run(stop)
        finally:
            dedup.close()
            log.info("simulated partner %s stopped: %s", partner, tally.summary())
    return 0


class _AckTally:
    """Counts acks by status and logs a line every ``every`` acks."""

    def __init__(self, partner: str, every: int) -> None:
        self.partner = partner
        self.every = max(every, 1)
        self.by_status: Counter[str] = Counter()

    def __call__(self, ack: PartnerAcknowledgement) -> None:
        self.by_status[ack.status.value] += 1
        if self.by_status.total() % self.every == 0:
            log.info("partner %s: %s", self.partner, self.summary())

    def summary(self) -> str:
        parts = ", ".join(f"{status} {n}" for status, n in sorted(self.by_status.items()))
        return f"{self.by_status.total()} acks ({parts or 'none'})"


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (main thread only; restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda _signum, _frame: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
