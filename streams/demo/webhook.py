"""The demo's webhook partners: one partner (logistics by default) reached over HTTP.

The demo writes its own copy of the policy in which those partners have
``delivery = "webhook"`` and a loopback ``webhook_url`` of a simulated receiver
(``consumers.simulated.webhook``), gives every child that copy and a fresh signing secret,
and runs a ``consent-stream webhook-bridge`` per webhook partner. Some of the receiver's
answers are ``202`` with a callback to the gateway child's ``POST /v1/acks``, some ``503``
(the bridge retries). The summary shows the bridge's and the receiver's figures.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Final

from schemas.policy import DEFAULT_POLICY, Policy, load_policy
from schemas.secrets import Secret
from schemas.settings import Settings
from streams.demo.latency import Samples
from streams.demo.options import DemoOptions
from streams.demo.processes import Child, Children, free_port, scrape
from streams.demo.summary import format_seconds

__all__ = [
    "HOOK_PATH",
    "WebhookChildren",
    "policy_text",
    "webhook_lines",
    "webhook_policy",
    "with_webhook_partners",
]

HOOK_PATH: Final = "/consent/hook"
DELIVERIES: Final = "consent_stream_webhook_deliveries_total"
RETRIES: Final = "consent_stream_webhook_retries_total"
ROUND_TRIP: Final = "consent_stream_webhook_round_trip_seconds"
ANSWERS: Final = "consent_stream_simulated_webhook_answers_total"
CALLBACKS: Final = "consent_stream_simulated_webhook_callbacks_total"
_OVERRIDDEN: Final = re.compile(r"^\s*(delivery|webhook_url)\s*=")


def policy_text(path: str | None) -> str:
    """The text of the policy file ``path`` (the packaged default when None)."""
    if path is None:
        return (resources.files("schemas") / "policy" / DEFAULT_POLICY).read_text("utf-8")
    return Path(path).read_text(encoding="utf-8")


def webhook_policy(text: str, urls: Mapping[str, str]) -> str:
    """``text`` with ``delivery = "webhook"`` and ``webhook_url`` for each partner of ``urls``
    (whatever delivery it had before); a partner without its table raises ValueError."""
    lines = text.splitlines()
    out: list[str] = []
    current: str | None = None
    seen: set[str] = set()
    for line in lines:
        header = re.match(r"^\s*\[partners\.([A-Za-z0-9_-]+)\]\s*(#.*)?$", line)
        if header or re.match(r"^\s*\[", line):
            current = header.group(1) if header else None
        if current in urls and _OVERRIDDEN.match(line):
            continue
        out.append(line)
        if header and current is not None and current in urls:
            seen.add(current)
            out.append('delivery = "webhook"')
            out.append(f'webhook_url = "{urls[current]}"')
    missing = sorted(set(urls) - seen)
    if missing:
        raise ValueError(f"no [partners.{missing[0]}] table in the policy")
    return "\n".join(out) + "\n"


def with_webhook_partners(
    settings: Settings, partners: Iterable[str], base_dir: Path
) -> tuple[Settings, Policy, dict[str, str]]:
    """The run's settings and policy with ``partners`` delivered by webhook to receivers
    on free loopback ports, and partner -> webhook URL. The policy copy is written to
    ``<base_dir>/policy.toml``."""
    urls = {p: f"http://127.0.0.1:{free_port()}{HOOK_PATH}" for p in sorted(set(partners))}
    path = base_dir / "policy.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(webhook_policy(policy_text(settings.policy_path), urls), encoding="utf-8")
    fresh = {p: Secret(secrets.token_urlsafe(32)) for p in urls}
    scoped = replace(
        settings,
        policy_path=str(path.resolve()),
        webhook_secrets={**settings.webhook_secrets, **fresh},
    )
    return scoped, load_policy(path), urls


def _by(samples: Samples, name: str, key: str, partner: str) -> dict[str, float]:
    return {k[0]: v for k, v in samples.by(name, key, partner=partner).items() if v}


def _counts(counts: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {int(v)}" for k, v in sorted(counts.items())) or "none"


def webhook_lines(samples: Samples, urls: Mapping[str, str]) -> list[str]:
    """The summary's webhook section (``samples``: the bridges' and receivers' metrics
    since the warm-up)."""
    lines = []
    for partner, url in sorted(urls.items()):
        done = _by(samples, DELIVERIES, "outcome", partner)
        retries = _by(samples, RETRIES, "cause", partner)
        answers = _by(samples, ANSWERS, "answer", partner)
        callbacks = _by(samples, CALLBACKS, "outcome", partner)
        p50 = format_seconds(samples.quantile(0.5, ROUND_TRIP, partner=partner))
        p99 = format_seconds(samples.quantile(0.99, ROUND_TRIP, partner=partner))
        attempts = int(samples.total(f"{ROUND_TRIP}_count", partner=partner))
        lines += [
            f"  {partner:<10} {url}",
            f"  {'':<10} deliveries {int(sum(done.values())):>6} ({_counts(done)})",
            f"  {'':<10} retries    {int(sum(retries.values())):>6} ({_counts(retries)})",
            f"  {'':<10} round trip p50 {p50}, p99 {p99} ({attempts} attempts)",
            f"  {'':<10} partner answered: {_counts(answers)}; callbacks to /v1/acks: "
            f"{_counts(callbacks)}",
        ]
    return lines


class WebhookChildren:
    """Per webhook partner: its simulated receiver and its bridge, as children of the demo."""

    def __init__(
        self, urls: Mapping[str, str], base_dir: Path, metrics_token: Secret | None = None
    ) -> None:
        self.urls, self.base_dir, self.metrics_token = dict(urls), base_dir, metrics_token
        self.items: list[Child] = []
        self.baseline = Samples()

    def start(
        self,
        children: Children,
        env: Mapping[str, str],
        options: DemoOptions,
        callback_url: str | None,
        seed: int,
    ) -> None:
        for partner in sorted(self.urls):
            port = free_port()
            args = ["partner", "--name", partner, "--metrics-port", str(port)]
            args += ["--delay-ms", str(options.partner_delay_ms), "--seed", str(seed)]
            args += ["--failure-rate", str(options.webhook_failure_rate)]
            if callback_url is not None and options.webhook_callback_fraction > 0:
                args += ["--callback-fraction", str(options.webhook_callback_fraction)]
                args += ["--callback-url", callback_url]
            name = f"partner-{partner}"
            self.items.append(children.start(name, args, env, self._log(name), port))
            port = free_port()
            args = ["webhook-bridge", "--partner", partner, "--metrics-port", str(port)]
            args += ["--state-dir", str(self.base_dir / "webhook")]
            name = f"webhook-bridge-{partner}"
            self.items.append(children.start(name, args, env, self._log(name), port))

    def _log(self, name: str) -> Path:
        return self.base_dir / f"{name}.log"

    def snapshot(self) -> Samples:
        return scrape(self.items, self.metrics_token)

    def summary(self) -> Sequence[str]:
        if not self.urls:
            return ()
        return webhook_lines(self.snapshot().since(self.baseline), self.urls)
