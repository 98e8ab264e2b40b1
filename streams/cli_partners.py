"""The ``consent-stream`` commands of the partner side: ``partner`` (a simulated partner,
Kafka or webhook) and ``webhook-bridge``. Added to the parser by ``streams.cli``."""

from __future__ import annotations

import argparse
from typing import Any

from schemas.errors import ConfigurationError
from schemas.policy import Policy
from schemas.settings import Settings

__all__ = ["add_partner_commands"]


def _partner(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from consumers.simulated.partner import run_partner

    if args.name not in policy.partners:
        raise ConfigurationError(f"partner {args.name!r} is not in the policy")
    if policy.partners[args.name].webhook:
        return _webhook_partner(args, settings, policy)
    return run_partner(
        settings,
        args.name,
        delay_ms=args.delay_ms,
        failure_rate=args.failure_rate,
        seed=args.seed,
        state_dir=args.state_dir,
        metrics_port=args.metrics_port,
        group_id=settings.topics.partner_group(args.name),
        instructions_topic=settings.topics.instructions(args.name),
        acks_topic=settings.topics.acks(args.name),
        retention_days=_retention_days(policy, args.name),
    )


def _webhook_partner(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    """The simulated partner of a webhook partner: an HTTP receiver at its webhook URL."""
    from consumers.simulated.webhook import WebhookPartnerOptions, run_webhook_partner

    url = policy.partners[args.name].webhook_url
    assert url is not None  # noqa: S101 - the policy requires it for webhook delivery
    options = WebhookPartnerOptions(
        partner=args.name,
        url=url,
        secret=settings.webhook_secret(args.name).reveal(),
        delay_ms=args.delay_ms,
        failure_rate=args.failure_rate,
        callback_fraction=args.callback_fraction,
        callback_url=args.callback_url,
        seed=args.seed,
        retention_days=_retention_days(policy, args.name),
    )
    try:
        options.check()
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return run_webhook_partner(options, metrics_port=args.metrics_port)


def _webhook_bridge(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from consumers.webhook.bridge import run_webhook_bridge

    partner = policy.partners.get(args.partner)
    if partner is None:
        raise ConfigurationError(f"partner {args.partner!r} is not in the policy")
    if not partner.webhook or partner.webhook_url is None:
        raise ConfigurationError(
            f'partner {args.partner!r} is not delivered by webhook (policy: delivery = "webhook")'
        )
    return run_webhook_bridge(
        settings,
        partner.name,
        partner.webhook_url,
        state_dir=args.state_dir,
        metrics_port=args.metrics_port,
    )


def _retention_days(policy: Policy, partner: str) -> int:
    """The partner-wide retention of the policy, for the simulated partner's answers."""
    from consumers.simulated.partner import RETENTION_DAYS

    rule = policy.partners[partner].retention
    if rule is None:
        return RETENTION_DAYS
    return max(1, policy.retention[rule].duration_ms // 86_400_000)


def add_partner_commands(sub: Any) -> None:
    partner = sub.add_parser("partner", help="run a simulated partner (payment, logistics, ads...)")
    partner.add_argument("--name", required=True)
    partner.add_argument("--delay-ms", type=int, default=20, help="processing time per instruction")
    partner.add_argument("--failure-rate", type=float, default=0.0, help="0..1, handler failures")
    partner.add_argument("--seed", type=int, default=None)
    partner.add_argument("--state-dir", default=".stack/partners", help="de-duplication state")
    partner.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    partner.add_argument(
        "--callback-fraction",
        type=float,
        default=0.0,
        help="webhook partners: 0..1, share answered 202 with a callback later",
    )
    partner.add_argument(
        "--callback-url", default=None, help="webhook partners: the gateway's POST /v1/acks URL"
    )
    partner.set_defaults(handler=_partner)
    bridge = sub.add_parser(
        "webhook-bridge", help="deliver a webhook partner's instructions (docs/webhooks.md)"
    )
    bridge.add_argument("--partner", required=True)
    bridge.add_argument("--state-dir", default=None, help="answers remembered across restarts")
    bridge.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    bridge.set_defaults(handler=_webhook_bridge)
