"""Topic names of SPEC section 3, optionally under a namespace.

In production the namespace is empty and the names are exactly the contract's
(``consent.events.v1``, ``partner.ads.instructions.v1``...). A namespace (setting
``CONSENT_STREAM_TOPIC_NAMESPACE``) prefixes every name: integration tests use a uuid
namespace to run isolated workers on one broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["RECORD_HEADROOM_BYTES", "TopicNames", "record_limits"]

_COMPACT = {"cleanup.policy": "compact"}

RECORD_HEADROOM_BYTES = 65_536
"""Room beyond a record's value limit (``max_record_bytes``) for its key and headers."""


def record_limits(max_record_bytes: int) -> tuple[int, int]:
    """(events, dead letters): the largest records, key and headers included, that the
    inbound topic and the dead-letter topic must accept (a dead letter is an inbound
    record plus the reason headers). Producers and topics are configured from these."""
    events = max_record_bytes + RECORD_HEADROOM_BYTES
    return events, events + RECORD_HEADROOM_BYTES


@dataclass(frozen=True, slots=True)
class TopicNames:
    namespace: str = ""

    def _name(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name

    def scoped(self, name: str) -> str:
        """``name`` under the namespace (``consent.`` -> ``<ns>.consent.``)."""
        return self._name(name)

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

    def names(self, partners: Iterable[str]) -> list[str]:
        """Every topic of the service."""
        return list(self.specs(partners, 0))

    def specs(self, partners: Iterable[str], max_record_bytes: int) -> dict[str, dict[str, str]]:
        """Every topic of the service with its configuration overrides. Each takes records
        of ``record_limits``: an event, and what the worker derives from one subject's
        state (a deletion's instructions and ledger ticket carry its references; the
        state view its revocations), may be that large."""
        events, deadletters = record_limits(max_record_bytes)
        sized = {"max.message.bytes": str(events)}
        specs: dict[str, dict[str, str]] = {
            self.events: dict(sized),
            self.state: _COMPACT | sized,
            self.requests: _COMPACT | sized,
            self.deadletter: {"max.message.bytes": str(deadletters)},
            self.ledger: dict(sized),
        }
        for partner in sorted(partners):
            specs[self.instructions(partner)] = dict(sized)
            specs[self.acks(partner)] = dict(sized)
        return specs
