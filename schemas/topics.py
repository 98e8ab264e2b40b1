"""Topic names of SPEC section 3, optionally under a namespace.

In production the namespace is empty and the names are exactly the contract's
(``consent.events.v1``, ``partner.ads.instructions.v1``...). A namespace (setting
``CONSENT_STREAM_TOPIC_NAMESPACE``) prefixes every name: integration tests use a uuid
namespace to run isolated workers on one broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["TopicNames"]

_COMPACT = {"cleanup.policy": "compact"}


@dataclass(frozen=True, slots=True)
class TopicNames:
    namespace: str = ""

    def _name(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name

    @property
    def events(self) -> str:
        return self._name("consent.events.v1")

    @property
    def state(self) -> str:
        return self._name("consent.state.v1")

    @property
    def requests(self) -> str:
        return self._name("consent.requests.v1")

    @property
    def deadletter(self) -> str:
        return self._name("consent.deadletter.v1")

    @property
    def ledger(self) -> str:
        """Internal: acknowledgements and request work, ordered per request."""
        return self._name("consent.ledger.v1")

    def instructions(self, partner: str) -> str:
        return self._name(f"partner.{partner}.instructions.v1")

    def acks(self, partner: str) -> str:
        return self._name(f"partner.{partner}.acks.v1")

    def partner_group(self, partner: str) -> str:
        """Consumer group of a partner's consumer: ``partner.<p>`` (namespaced in tests)."""
        return self._name(f"partner.{partner}")

    def partner_of_acks(self, topic: str) -> str | None:
        """``[ns.]partner.<p>.acks.v1`` -> ``<p>``; None for any other topic."""
        prefix, suffix = self._name("partner."), ".acks.v1"
        if topic.startswith(prefix) and topic.endswith(suffix):
            return topic[len(prefix) : -len(suffix)] or None
        return None

    def specs(self, partners: Iterable[str]) -> dict[str, dict[str, str]]:
        """Every topic of the service with its configuration overrides."""
        specs: dict[str, dict[str, str]] = {
            self.events: {},
            self.state: dict(_COMPACT),
            self.requests: dict(_COMPACT),
            self.deadletter: {},
            self.ledger: {},
        }
        for partner in sorted(partners):
            specs[self.instructions(partner)] = {}
            specs[self.acks(partner)] = {}
        return specs
