"""The policy file: purposes, permissions, categories, retention, partners and deadlines.

Loaded and validated once at start-up; a malformed file raises ``PolicyError`` naming
the offending key (``partners.ads.receives[1]``).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from schemas.errors import PolicyError
from schemas.partner import InstructionAction

__all__ = [
    "DEFAULT_POLICY",
    "DELIVERIES",
    "Partner",
    "Policy",
    "Purpose",
    "RetentionRule",
    "load_policy",
    "parse_duration_ms",
    "webhook_partners",
]

DEFAULT_POLICY: Final = "policy.v1.toml"
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
DELIVERIES: Final = ("kafka", "webhook")
"""How a partner gets its instructions: its own Kafka consumer (the partner SDK), or a
webhook bridge that POSTs them to ``webhook_url`` (docs/webhooks.md)."""
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


def parse_duration_ms(text: str, key: str) -> int:
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise PolicyError(key, f"not a duration like '15d' or '24h': {text!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


@dataclass(frozen=True, slots=True)
class Purpose:
    name: str
    opt_in: bool
    withdrawable: bool
    sensitive: bool
    section: str
    description: str

    @property
    def default_allowed(self) -> bool:
        return not self.opt_in


@dataclass(frozen=True, slots=True)
class RetentionRule:
    name: str
    categories: frozenset[str]
    duration_ms: int
    starts: str
    basis: str


@dataclass(frozen=True, slots=True)
class Partner:
    name: str
    description: str
    receives: frozenset[str]
    purposes: frozenset[str]
    holds_identity: bool
    retention: str | None
    apps: frozenset[str]
    deadlines_ms: Mapping[InstructionAction, int]
    delivery: str = "kafka"
    """``kafka`` (default) or ``webhook``."""
    webhook_url: str | None = None
    """Where the webhook bridge POSTs instructions (``delivery = "webhook"`` only). The
    signing secret is a setting (``CONSENT_STREAM_WEBHOOK_SECRETS``), never in this file."""

    @property
    def webhook(self) -> bool:
        return self.delivery == "webhook"


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    notice_version: str
    request_answer_ms: int
    purposes: Mapping[str, Purpose]
    system_permissions: frozenset[str]
    categories: frozenset[str]
    retention: Mapping[str, RetentionRule]
    partners: Mapping[str, Partner]

    def deadline_ms(self, partner: str, action: InstructionAction) -> int:
        return self.partners[partner].deadlines_ms[action]

    def partner_of_app(self, app_id: str) -> str | None:
        for partner in self.partners.values():
            if app_id in partner.apps:
                return partner.name
        return None

    def partners_processing(self, purpose: str) -> tuple[str, ...]:
        return tuple(sorted(p.name for p in self.partners.values() if purpose in p.purposes))


class _Reader:
    """Typed access to the raw TOML, naming the full key in every error."""

    def __init__(self, raw: Mapping[str, Any], key: str = "") -> None:
        self.raw, self.key = raw, key

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def table(self, name: str, *, required: bool = True) -> _Reader:
        value = self.raw.get(name)
        if value is None and not required:
            return _Reader({}, self.path(name))
        if not isinstance(value, dict):
            raise PolicyError(self.path(name), "missing table" if value is None else "not a table")
        return _Reader(value, self.path(name))

    def string(self, name: str, default: str | None = None) -> str:
        value = self.raw.get(name, default)
        if not isinstance(value, str) or not value:
            raise PolicyError(self.path(name), "missing or not a non-empty string")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise PolicyError(self.path(name), f"not true/false: {value!r}")
        return value

    def ids(self, name: str, allowed: frozenset[str] | None, what: str) -> frozenset[str]:
        value = self.raw.get(name, [])
        if not isinstance(value, list):
            raise PolicyError(self.path(name), "not a list")
        for i, item in enumerate(value):
            if not isinstance(item, str) or (allowed is not None and item not in allowed):
                raise PolicyError(f"{self.path(name)}[{i}]", f"unknown {what} {item!r}")
        return frozenset(value)

    def only(self, *allowed: str) -> _Reader:
        """Reject keys this table does not define (a typo must not pass silently)."""
        for name in self.raw:
            if name not in allowed:
                raise PolicyError(
                    self.path(name), f"unknown key; expected one of {', '.join(allowed)}"
                )
        return self

    def names(self) -> list[str]:
        for name in self.raw:
            if not _ID.match(name):
                raise PolicyError(self.path(name), "ids are lowercase letters, digits, _ and -")
        return list(self.raw)


def _purposes(r: _Reader) -> dict[str, Purpose]:
    out = {}
    for name in r.names():
        p = r.table(name).only("default", "withdrawable", "sensitive", "section", "description")
        default = p.string("default")
        if default not in ("opt_in", "opt_out"):
            raise PolicyError(p.path("default"), f"must be 'opt_in' or 'opt_out', not {default!r}")
        out[name] = Purpose(
            name=name,
            opt_in=default == "opt_in",
            withdrawable=p.boolean("withdrawable", True),
            sensitive=p.boolean("sensitive", False),
            section=p.string("section", "-"),
            description=p.string("description", name),
        )
    if not out:
        raise PolicyError(r.key, "no purposes defined")
    return out


def _retention(r: _Reader, categories: frozenset[str]) -> dict[str, RetentionRule]:
    out = {}
    for name in r.names():
        t = r.table(name).only("categories", "duration", "starts", "basis")
        starts = t.string("starts", "transaction_completed")
        if starts != "transaction_completed":
            raise PolicyError(t.path("starts"), f"unknown start {starts!r}")
        out[name] = RetentionRule(
            name=name,
            categories=t.ids("categories", categories, "category"),
            duration_ms=parse_duration_ms(t.string("duration"), t.path("duration")),
            starts=starts,
            basis=t.string("basis", "-"),
        )
    return out


def _deadlines(
    r: _Reader, defaults: Mapping[InstructionAction, int]
) -> dict[InstructionAction, int]:
    out = dict(defaults)
    for name in r.raw:
        try:
            action = InstructionAction(name)
        except ValueError:
            raise PolicyError(r.path(name), "unknown instruction action") from None
        out[action] = parse_duration_ms(r.string(name), r.path(name))
    missing = [a.value for a in InstructionAction if a not in out]
    if missing:
        raise PolicyError(r.key, f"no deadline for {', '.join(missing)}")
    return out


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _webhook_url(t: _Reader, delivery: str) -> str | None:
    """The partner's ``webhook_url``: required for webhook delivery, refused otherwise;
    https, or plain http to a loopback host only (tests, the demo)."""
    key = t.path("webhook_url")
    if "webhook_url" not in t.raw:
        if delivery == "webhook":
            raise PolicyError(key, 'missing: delivery = "webhook" needs a webhook_url')
        return None
    url = t.string("webhook_url")
    if delivery != "webhook":
        raise PolicyError(key, 'only for delivery = "webhook"')
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyError(key, f"not an http(s) URL: {url!r}")
    if parts.username or parts.password:
        raise PolicyError(key, "credentials do not belong in the URL (the secret is a setting)")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise PolicyError(key, "plain http only to a loopback host; use https")
    return url


def _delivery(t: _Reader) -> str:
    delivery = t.string("delivery", "kafka")
    if delivery not in DELIVERIES:
        raise PolicyError(
            t.path("delivery"), f"must be one of {', '.join(DELIVERIES)}, not {delivery!r}"
        )
    return delivery


def _partners(r: _Reader, policy: dict[str, Any]) -> dict[str, Partner]:
    out = {}
    for name in r.names():
        t = r.table(name).only(
            "description",
            "receives",
            "purposes",
            "holds_identity",
            "retention",
            "apps",
            "deadlines",
            "delivery",
            "webhook_url",
        )
        # a string when present (a list here once made a TypeError: found by fuzzing)
        retention = t.string("retention") if "retention" in t.raw else None
        if retention is not None and retention not in policy["retention"]:
            raise PolicyError(t.path("retention"), f"unknown retention rule {retention!r}")
        delivery = _delivery(t)
        out[name] = Partner(
            name=name,
            description=t.string("description", name),
            receives=t.ids("receives", policy["categories"], "category"),
            purposes=t.ids("purposes", frozenset(policy["purposes"]), "purpose"),
            holds_identity=t.boolean("holds_identity", False),
            retention=retention,
            apps=t.ids("apps", None, "app"),
            deadlines_ms=MappingProxyType(
                _deadlines(t.table("deadlines", required=False), policy["deadlines"])
            ),
            delivery=delivery,
            webhook_url=_webhook_url(t, delivery),
        )
    return out


def parse_policy(raw: Mapping[str, Any]) -> Policy:
    r = _Reader(raw)
    deadlines = r.table("deadlines").only("request_answer", "actions")
    parts: dict[str, Any] = {
        "purposes": _purposes(r.table("purposes")),
        "categories": frozenset(r.table("categories").names()),
        "deadlines": _deadlines(deadlines.table("actions"), {}),
    }
    parts["retention"] = _retention(r.table("retention", required=False), parts["categories"])
    partners = _partners(r.table("partners"), parts)
    policy = Policy(
        version=r.string("version"),
        notice_version=r.string("notice_version"),
        request_answer_ms=parse_duration_ms(
            deadlines.string("request_answer"), deadlines.path("request_answer")
        ),
        purposes=MappingProxyType(parts["purposes"]),
        system_permissions=r.table("permissions").ids("system", None, "permission"),
        categories=parts["categories"],
        retention=MappingProxyType(parts["retention"]),
        partners=MappingProxyType(partners),
    )
    r.only(
        "version",
        "notice_version",
        "deadlines",
        "purposes",
        "permissions",
        "categories",
        "retention",
        "partners",
    )
    return policy


def webhook_partners(policy: Policy, partners: Iterable[str] | None = None) -> list[str]:
    """The partners (of ``partners``, default all) whose policy says ``delivery =
    "webhook"``: the ones whose acks the gateway may write, sorted."""
    chosen = policy.partners if partners is None else partners
    return sorted(p for p in chosen if p in policy.partners and policy.partners[p].webhook)


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate the policy file (the packaged default when ``path`` is None)."""
    if path is None:
        text = (resources.files("schemas") / "policy" / DEFAULT_POLICY).read_text("utf-8")
        source = DEFAULT_POLICY
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError("(file)", f"cannot read {path}: {exc.strerror}") from exc
        source = str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError("(syntax)", f"{source}: {exc}") from exc
    return parse_policy(raw)
