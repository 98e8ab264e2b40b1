"""How large a subject's state may grow: what one changelog record holds.

The worker holds each subject's state (consent, permissions, closure, data lineage) and
writes it whole to the subjects table's changelog whenever it changes. A state larger than
the changelog takes would fail that write, and its batch with it, on every retry: the
partition would stall. An event that would take the state past ``StateLimit.max_bytes``
goes to the dead-letter topic (reason ``state_too_large``); its subject's state stays as
it was.

Lineage's references are the part without a bound (every reference a partner knows, kept
until a deletion: ``streams.subject.Share``), so a data.shared's references may take the
state only up to ``StateLimit.growth_bytes``, 15/16 of the limit. The rest is kept for
what must always apply: consent changes, permission revocations, deletions, and the share
itself without its references. A data.shared whose references do not fit is applied
without them (``StateCheck.admit``): its partner, categories and times are kept, so a
later deletion still tells that partner and holds the right retention; the record goes to
the dead-letter topic as it came (reason ``references_dropped``), so its references are
not lost, and its share counts it (``Share.refs_dropped``), so a deletion's evidence says
that the partner's instruction lacks them (``PartnerOutcome.refs_dropped``). Its event
id is not remembered as applied, so the same record, published again once the limit is
raised, applies in full (applying a share twice changes nothing; the count stays).

An event is refused or applied whatever batch it arrives in. Checking costs an encoding
per event, so ``streams.events.batch.plan_within`` checks only the subjects a batch could
take past ``growth_bytes``: their stored state plus a bound on what the batch's records
can add (``growth_bound``: every string in a state comes from a record, at most twice,
JSON-escaped at most 6-fold). A subject with a few KB of state and a few events per batch
is never checked.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final

from schemas.errors import ReferencesDroppedError, StateTooLargeError
from schemas.events import ConsentEvent, DataShared
from streams.events.decisions import Decision, shared_without_refs
from streams.fanout import FanOut
from streams.subject import SubjectState, state_to_json

__all__ = ["StateCheck", "StateLimit"]

GROWTH_PER_BYTE: Final = 12
"""A record's bytes can add at most this many bytes each to its subject's encoded state."""
GROWTH_PER_EVENT: Final = 256
"""And each event this many more (numbers, a version, the JSON around a new entry)."""


@dataclass(frozen=True, slots=True)
class StateLimit:
    """``max_bytes``: the largest encoded state (the changelog record's value)."""

    max_bytes: int

    @property
    def growth_bytes(self) -> int:
        """The largest state an event that adds entries to it may leave."""
        return self.max_bytes - self.max_bytes // 16

    @staticmethod
    def growth_bound(record_value: bytes) -> int:
        """At most how many bytes the event in ``record_value`` adds to its subject's state."""
        return GROWTH_PER_BYTE * len(record_value) + GROWTH_PER_EVENT

    def could_pass(self, stored: bytes | None, growth: int) -> bool:
        """Whether a state stored as ``stored``, grown by ``growth`` bytes at most, could
        pass ``growth_bytes``."""
        return growth + (len(stored) if stored else 0) > self.growth_bytes

    def refusal(self, event: ConsentEvent, before: int, after: int) -> StateTooLargeError | None:
        """Why ``event`` may not take its subject's encoded state from ``before`` bytes to
        ``after`` (None: it may)."""
        if after > self.max_bytes:
            return self._error(event, after, self.max_bytes)
        if _references(event) and after > max(before, self.growth_bytes):
            return self._error(event, after, self.growth_bytes)
        return None

    @staticmethod
    def _error(event: ConsentEvent, after: int, limit: int) -> StateTooLargeError:
        return StateTooLargeError(
            f"{event.type.value} {event.event_id} would make its subject's state {after} "
            f"bytes, over the {limit} it may have: not applied (the subject's older data, "
            "once deleted, leaves room)"
        )


@dataclass
class StateCheck:
    """Checks each event of the subjects in ``keys`` against ``limit`` while a batch is
    planned; remembers the encoded states it admitted (the batch's writes)."""

    limit: StateLimit
    keys: Collection[bytes]
    encode: Callable[[SubjectState], bytes] = state_to_json
    encoded: dict[bytes, bytes] = field(default_factory=dict)

    def admit(
        self, key: bytes, before: SubjectState, event: ConsentEvent, decision: Decision, fan: FanOut
    ) -> tuple[Decision | None, StateTooLargeError | None]:
        """What of ``decision`` (``event`` on ``key``'s state ``before``) may apply (None:
        nothing), and why the record goes to the dead-letter topic (None: it does not)."""
        error = self.refusal(key, before, event, decision.state)
        if error is None:
            return decision, None
        payload = event.payload
        if not isinstance(payload, DataShared) or not payload.partner_refs:
            return None, error
        bare = replace(event, payload=replace(payload, partner_refs=MappingProxyType({})))
        kept = shared_without_refs(before, event, fan)
        kept = replace(kept, state=replace(kept.state, recent_event_ids=before.recent_event_ids))
        if self.refusal(key, before, bare, kept.state) is not None:
            return None, error
        return kept, ReferencesDroppedError(
            f"{error}; applied without its references, which are in this record"
        )

    def refusal(
        self, key: bytes, before: SubjectState, event: ConsentEvent, after: SubjectState
    ) -> StateTooLargeError | None:
        """Why ``event`` may not change ``key``'s state from ``before`` to ``after``."""
        if key not in self.keys:
            return None
        known = self.encoded.get(key)
        size = len(known) if known is not None else len(self.encode(before))
        raw = self.encode(after)
        error = self.limit.refusal(event, size, len(raw))
        if error is None:
            self.encoded[key] = raw
        return error


def _references(event: ConsentEvent) -> bool:
    return isinstance(event.payload, DataShared) and bool(event.payload.partner_refs)
