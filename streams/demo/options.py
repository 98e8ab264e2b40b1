"""The options of ``consent-stream demo`` (its command-line flags, ``add_demo_command``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["DemoOptions"]


@dataclass(frozen=True)
class DemoOptions:
    subjects: int = 2000
    rate: float = 1000.0
    workers: int = 1
    seed: int = 1
    timeout_s: float = 300.0
    partner_delay_ms: int = 5
    partner_failure_rate: float = 0.0
    closure_fraction: float = 0.10
    namespace: str | None = None
    keep_running: bool = False
    keep_data: bool = False
    via_gateway: float = 0.0
    webhook_partners: tuple[str, ...] = ("logistics",)
    webhook_failure_rate: float = 0.05
    webhook_callback_fraction: float = 0.2

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        return cls(
            subjects=args.subjects,
            rate=args.rate,
            workers=args.workers,
            seed=args.seed,
            timeout_s=args.timeout_s,
            partner_delay_ms=args.partner_delay_ms,
            partner_failure_rate=args.partner_failure_rate,
            closure_fraction=args.closure_fraction,
            namespace=args.namespace,
            keep_running=args.keep_running,
            keep_data=args.keep_data,
            via_gateway=args.via_gateway,
            webhook_partners=tuple(p for p in args.webhook_partners.split(",") if p),
            webhook_failure_rate=args.webhook_failure_rate,
            webhook_callback_fraction=args.webhook_callback_fraction,
        )
