"""Who may post ``POST /v1/acks`` and each partner's replay guard (``streams.gateway.acks``).

``Callbacks.of`` takes the policy's partners with ``delivery = "webhook"`` that have a
secret in ``CONSENT_STREAM_WEBHOOK_SECRETS`` (a webhook partner without one is logged,
and refused); a kafka-delivery partner never may, whatever the secrets say. The route
keeps one ``ReplayGuard`` a partner; a request's ``Claim`` on it gives its signature back
when the ack was not produced (a 429 or 503 invites the same request again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from schemas.contracts import PARTNER_ACKNOWLEDGEMENT
from schemas.policy import Policy, webhook_partners
from schemas.secrets import Secret
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.topics import TopicNames
from schemas.webhook_signing import ReplayGuard

__all__ = ["Callbacks", "Claim"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Callbacks:
    """Who may call back (webhook partners with a secret) and where their acks go."""

    secrets: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    topics: TopicNames = field(default_factory=TopicNames)
    serde: AvroSerde = field(default_factory=AvroSerde)
    data_schema: str = PARTNER_ACKNOWLEDGEMENT
    clock: Callable[[], float] = time.time

    @classmethod
    def of(cls, settings: Settings, policy: Policy, serde: AvroSerde) -> Callbacks:
        """The policy's webhook partners that have a secret (the others are logged)."""
        webhook = webhook_partners(policy)
        for partner in webhook:
            if partner not in settings.webhook_secrets:
                log.warning(
                    "partner %s is delivered by webhook but has no secret in "
                    "CONSENT_STREAM_WEBHOOK_SECRETS: its callbacks are refused",
                    partner,
                )
        return cls(
            {p: settings.webhook_secrets[p] for p in webhook if p in settings.webhook_secrets},
            settings.topics,
            serde,
            settings.schema_registry_url or PARTNER_ACKNOWLEDGEMENT,
        )


class Claim:
    """One request's use of its partner's replay guard (what ``verify`` asks of a guard),
    and ``release``: the signature it accepted may be used again."""

    def __init__(self, guard: ReplayGuard) -> None:
        self._guard = guard
        self._signature: str | None = None

    def first_use(self, timestamp: int, signature: str, now_s: float) -> bool:
        if not self._guard.first_use(timestamp, signature, now_s):
            return False
        self._signature = signature
        return True

    def release(self) -> None:
        if self._signature is not None:
            self._guard.forget(self._signature)
            self._signature = None
