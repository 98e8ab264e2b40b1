"""A minimal partner integration: erase, restrict and stop processing in a toy database.

Run it against the local stack (``make stack``)::

    eval "$(python deploy/local/stack.py env)"
    python examples/partner_example.py logistics

It answers every instruction on ``partner.logistics.instructions.v1`` on
``partner.logistics.acks.v1`` until Ctrl-C or SIGTERM, remembers its answers in
``./partner-logistics.sqlite3`` and serves its metrics on http://127.0.0.1:9464/metrics.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from prometheus_client import REGISTRY, start_http_server

from consumers.partner_sdk import (
    Done,
    InstructionAction,
    PartnerConsumer,
    PartnerInstruction,
    Rejected,
    Restricted,
    Result,
    Settings,
    SqliteProcessedInstructions,
)

log = logging.getLogger("partner_example")

# The partner's own data, keyed by its own references (order number, waybill, ...).
DATABASE: dict[str, dict[str, str]] = {}
STOPPED_PURPOSES: set[tuple[str, str]] = set()


def handle(instruction: PartnerInstruction) -> Result:
    """Carry out one instruction. Idempotent: doing it twice leaves the same state."""
    refs = list(instruction.partner_refs.values())
    match instruction.action:
        case InstructionAction.ERASE:
            for ref in refs:
                DATABASE.pop(ref, None)  # erasing what is already gone is fine
            return Done()
        case InstructionAction.RESTRICT:
            if instruction.retain_until is None:
                return Rejected("RESTRICT without retain_until")
            for ref in refs:
                DATABASE.setdefault(ref, {})["restricted"] = "yes"
            return Restricted(instruction.retain_until)
        case InstructionAction.STOP_PROCESSING:
            STOPPED_PURPOSES.update((instruction.subject_ref, p) for p in instruction.purposes)
            return Done()
        case InstructionAction.RESUME_PROCESSING:
            STOPPED_PURPOSES.difference_update(
                (instruction.subject_ref, p) for p in instruction.purposes
            )
            return Done()
        case InstructionAction.REVOKE_ACCESS:
            return Done()  # drop the tokens issued to instruction.app_id here


def main(partner: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    start_http_server(9464, addr="127.0.0.1")
    dedup = SqliteProcessedInstructions(f"partner-{partner}.sqlite3")
    try:
        with PartnerConsumer(
            Settings.from_env(), partner, handle, dedup=dedup, registry=REGISTRY
        ) as consumer:
            log.info("answering %s until Ctrl-C", consumer.instructions_topic)
            consumer.run(stop)
    finally:
        dedup.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "logistics"))
