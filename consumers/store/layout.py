"""The consent store's layout and decisions, as plain functions over plain data.

One Redis hash per subject, under a key that holds no raw subject id::

    <prefix>:s:<first 32 hex of HMAC-SHA256(subject key, subject_id)>

    p:<purpose>                  "1" granted / "0" withdrawn (explicit decisions only)
    perm:<device_id>:<perm>      event time (ms) of a revoked system permission
    app:<app_id>                 event time (ms) of an authorized app's revoked access
    v                            version of the applied ConsentState
    closed                       account closure time (ms); then the hash holds only v, closed

The subject key is the *current* subject key (``SubjectKeys``). While a key is rotated,
a subject may still sit in its *slot* under another accepted key: readers then read every
slot in one pipelined round trip and take the newest (highest ``v``; the current slot on a
tie), and every write first moves the newest slot to the current key's slot and deletes
the others. With no other key accepted, a read is one ``HMGET`` and a write one script on
one key, as before rotation existed.

Both store clients (sync and asyncio) build their commands and read their answers here;
``APPLY_STATE_LUA`` is the one versioned, closure-safe write, and ``APPLY_STATES_LUA`` the
same write for many subjects in one call (the worker's batches: redis-py spends ~30 us of
client CPU per pipelined command, more than the write itself). Both take the keys of every
subject they write in KEYS; a call across subjects needs one Redis (or Sentinel-managed
primary), not Redis Cluster, whose slots would split them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final, Generic, TypeVar

from schemas.errors import UnknownPurposeError
from schemas.policy import Policy, Purpose
from schemas.subject_keys import SubjectKeys
from schemas.views import ConsentState

__all__ = [
    "APPLY_STATES_LUA",
    "APPLY_STATES_SHA",
    "APPLY_STATE_LUA",
    "APPLY_STATE_SHA",
    "CLOSED_FIELD",
    "STATES_PER_CALL",
    "VERSION_FIELD",
    "ApplyOutcome",
    "FieldsRead",
    "Source",
    "SubjectSlots",
    "allowed_read",
    "app_field",
    "app_revoked_read",
    "apply_args",
    "apply_states_call",
    "decide",
    "decide_allowed",
    "newest_hash",
    "newest_reply",
    "permission_field",
    "permission_revoked_read",
    "purpose_field",
    "purpose_of",
    "state_fields",
    "text",
    "view_from_hash",
]

VERSION_FIELD: Final = "v"
CLOSED_FIELD: Final = "closed"
_KEY_HEX: Final = 32
_LUA_HSET_CHUNK: Final = 2000  # field/value args per HSET inside the script (even)

_APPLY_FUNCTION_LUA: Final = f"""
-- One subject's write, read in place (no copies): KEYS[k+1] its hash under the current
-- key, KEYS[k+2..k+nk] its hashes under the other accepted keys (only during a key
-- rotation); ARGV[a+1] version; ARGV[a+2] "1" when the state closes the account;
-- ARGV[a+3..a+na] field/value pairs of the new hash (always includes v).
local function apply(k, nk, a, na)
  local key = KEYS[k + 1]
  if nk > 1 then
    -- the newest hash (highest v, the current one on a tie) moves to key; no other stays
    local best = 1
    local best_v = tonumber(redis.call('HGET', key, '{VERSION_FIELD}') or '')
    for i = 2, nk do
      local v = tonumber(redis.call('HGET', KEYS[k + i], '{VERSION_FIELD}') or '')
      if v and (not best_v or v > best_v) then best, best_v = i, v end
    end
    if best > 1 then redis.call('RENAME', KEYS[k + best], key) end
    redis.call('DEL', unpack(KEYS, k + 2, k + nk))
  end
  local stored = redis.call('HMGET', key, '{VERSION_FIELD}', '{CLOSED_FIELD}')
  if stored[1] and tonumber(stored[1]) >= tonumber(ARGV[a + 1]) then return 0 end
  if stored[2] and ARGV[a + 2] ~= '1' then return -1 end
  redis.call('DEL', key)
  for i = a + 3, a + na, {_LUA_HSET_CHUNK} do
    redis.call('HSET', key, unpack(ARGV, i, math.min(i + {_LUA_HSET_CHUNK - 1}, a + na)))
  end
  return 1
end
"""
APPLY_STATE_LUA: Final = _APPLY_FUNCTION_LUA + "return apply(0, #KEYS, 0, #ARGV)\n"
"""One state: KEYS its slots, ARGV its arguments (``apply_args``)."""
APPLY_STATE_SHA: Final = hashlib.sha1(APPLY_STATE_LUA.encode(), usedforsecurity=False).hexdigest()
APPLY_STATES_LUA: Final = (
    _APPLY_FUNCTION_LUA
    + """
-- ARGV[1] n; ARGV[2s], ARGV[2s+1] how many keys and arguments state s has; then the
-- arguments of states 1..n in order; KEYS the slots of states 1..n in order
local n = tonumber(ARGV[1])
local out, k, a = {}, 0, 1 + 2 * n
for s = 1, n do
  local nk, na = tonumber(ARGV[2 * s]), tonumber(ARGV[2 * s + 1])
  out[s] = apply(k, nk, a, na)
  k, a = k + nk, a + na
end
return out
"""
)
"""Many states in one call (``apply_states_call``); answers one outcome per state."""
APPLY_STATES_SHA: Final = hashlib.sha1(APPLY_STATES_LUA.encode(), usedforsecurity=False).hexdigest()
STATES_PER_CALL: Final = 100
"""States per ``APPLY_STATES_LUA`` call: a script holds Redis for its whole run, so a large
batch goes as several calls (in one pipeline) and readers wait at most for one of them."""

T = TypeVar("T")
Raw = bytes | str | None


class ApplyOutcome(IntEnum):
    """What ``APPLY_STATE_LUA`` did (its integer reply)."""

    REFUSED_CLOSED = -1  # a non-closed state for a closed subject: never re-opened
    NOT_NEWER = 0  # version <= stored version: replay or redelivery, no change
    APPLIED = 1


class SubjectSlots:
    """The Redis keys (slots) of a subject: keyed hashes, never the raw id.

    ``current`` is the slot under the current subject key, where writes go; ``others`` the
    slots under the other accepted keys (empty unless a key is being rotated).
    """

    __slots__ = ("_macs", "prefix")

    def __init__(self, keys: SubjectKeys, prefix: str) -> None:
        self.prefix = prefix
        self._macs = [hmac.new(k.reveal(), digestmod=hashlib.sha256) for _, k in keys.items()]

    def _slot(self, mac: Any, subject_id: str) -> str:
        mac = mac.copy()
        mac.update(subject_id.encode("utf-8"))
        return f"{self.prefix}:s:{mac.hexdigest()[:_KEY_HEX]}"

    @property
    def rotating(self) -> bool:
        return len(self._macs) > 1

    def current(self, subject_id: str) -> str:
        return self._slot(self._macs[0], subject_id)

    def __call__(self, subject_id: str) -> list[str]:
        """Every slot of the subject, the current one first."""
        return [self._slot(mac, subject_id) for mac in self._macs]

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every subject key under this prefix."""
        return f"{self.prefix}:s:*"


def _version(value: Raw) -> int:
    version = text(value)
    return int(version) if version is not None else -1


def newest_reply(replies: Sequence[Sequence[Raw]]) -> Sequence[Raw]:
    """Of the HMGET replies of several slots, each ending with the ``v`` field, the one of
    the newest slot (highest version; the first on a tie), without its ``v``."""
    best = max(range(len(replies)), key=lambda i: (_version(replies[i][-1]), -i))
    return replies[best][:-1]


def newest_hash(hashes: Sequence[Mapping[Any, Any]]) -> Mapping[Any, Any]:
    """Of the HGETALL replies of several slots, the newest (highest ``v``; first on a tie)."""

    def version(raw: Mapping[Any, Any]) -> int:
        value = raw.get(VERSION_FIELD.encode(), raw.get(VERSION_FIELD))
        return _version(value)

    best = max(range(len(hashes)), key=lambda i: (version(hashes[i]), -i))
    return hashes[best]


def purpose_field(purpose: str) -> str:
    return f"p:{purpose}"


def permission_field(device_id: str, permission: str) -> str:
    return f"perm:{device_id}:{permission}"


def app_field(app_id: str) -> str:
    return f"app:{app_id}"


def text(value: Raw) -> str | None:
    """A Redis reply value as text (clients may or may not decode responses)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def state_fields(state: ConsentState) -> dict[str, str]:
    """The hash that represents ``state``; a closed account is only ``{v, closed}``."""
    fields = {VERSION_FIELD: str(state.version)}
    if state.account_closed_at is not None:
        fields[CLOSED_FIELD] = str(state.account_closed_at)
        return fields
    for decision in state.purposes:
        fields[purpose_field(decision.purpose)] = "1" if decision.granted else "0"
    for rev in state.permissions:
        if rev.app_id is not None:
            fields[app_field(rev.app_id)] = str(rev.event_time)
        elif rev.permission is not None:
            fields[permission_field(rev.device_id or "", rev.permission)] = str(rev.event_time)
    return fields


def apply_args(state: ConsentState) -> list[str]:
    """ARGV of ``APPLY_STATE_LUA`` for ``state``."""
    args = [str(state.version), "1" if state.account_closed_at is not None else "0"]
    for name, value in state_fields(state).items():
        args += (name, value)
    return args


def apply_states_call(calls: Sequence[tuple[list[str], list[str]]]) -> tuple[int, list[str]]:
    """numkeys, then KEYS + ARGV of ``APPLY_STATES_LUA`` for (slots, ``apply_args``) of each
    state, in order."""
    keys: list[str] = []
    counts: list[str] = []
    args: list[str] = []
    for slots, state_args in calls:
        keys += slots
        counts += (str(len(slots)), str(len(state_args)))
        args += state_args
    return len(keys), [*keys, str(len(calls)), *counts, *args]


def purpose_of(policy: Policy, purpose: str) -> Purpose:
    try:
        return policy.purposes[purpose]
    except KeyError:
        raise UnknownPurposeError(f"unknown purpose {purpose!r}", field="purpose") from None


class Source(StrEnum):
    """Where an effective purpose value comes from."""

    DEFAULT = "default"
    EXPLICIT = "explicit"
    CLOSED = "closed"


def decide(purpose: Purpose, explicit: str | None, closed: str | None) -> tuple[bool, Source]:
    """May the subject's data be processed for ``purpose``, and why?

    Closed account: never. An explicit decision wins, except that a stored withdrawal of a
    non-withdrawable purpose (which the policy rejects) is ignored. Else the policy default.
    """
    if closed is not None:
        return False, Source.CLOSED
    if explicit == "1":
        return True, Source.EXPLICIT
    if explicit == "0" and purpose.withdrawable:
        return False, Source.EXPLICIT
    return purpose.default_allowed, Source.DEFAULT


def decide_allowed(purpose: Purpose, explicit: str | None, closed: str | None) -> bool:
    return decide(purpose, explicit, closed)[0]


@dataclass(frozen=True, slots=True)
class FieldsRead(Generic[T]):
    """One HMGET: the key, the fields, and how to turn the reply into the answer."""

    key: str
    fields: tuple[str, ...]
    parse: Callable[[Sequence[Raw]], T]


def allowed_read(policy: Policy, key: str, purpose: str) -> FieldsRead[bool]:
    spec = purpose_of(policy, purpose)
    return FieldsRead(
        key,
        (purpose_field(purpose), CLOSED_FIELD),
        lambda raw: decide_allowed(spec, text(raw[0]), text(raw[1])),
    )


def _present_or_closed(raw: Sequence[Raw]) -> bool:
    return raw[0] is not None or raw[1] is not None


def permission_revoked_read(key: str, permission: str, device_id: str) -> FieldsRead[bool]:
    """Revoked, or the account is closed (nothing may be processed any more)."""
    return FieldsRead(
        key, (permission_field(device_id, permission), CLOSED_FIELD), _present_or_closed
    )


def app_revoked_read(key: str, app_id: str) -> FieldsRead[bool]:
    """Revoked, or the account is closed."""
    return FieldsRead(key, (app_field(app_id), CLOSED_FIELD), _present_or_closed)


def view_from_hash(policy: Policy, raw: Mapping[Any, Any]) -> dict[str, Any]:
    """The JSON-ready view of one subject's hash (HGETALL reply) under ``policy``."""
    fields = {text(k) or "": text(v) or "" for k, v in raw.items()}
    closed = fields.get(CLOSED_FIELD)
    purposes = {}
    for name, spec in policy.purposes.items():
        allowed, source = decide(spec, fields.get(purpose_field(name)), closed)
        purposes[name] = {
            "allowed": allowed,
            "default": source is Source.DEFAULT,
            "source": source.value,
        }
    permissions, apps = [], []
    for name, value in sorted(fields.items()):
        if name.startswith("perm:"):
            device_id, permission = name[len("perm:") :].rsplit(":", 1)
            permissions.append(
                {"device_id": device_id, "permission": permission, "revoked_at": int(value)}
            )
        elif name.startswith("app:"):
            apps.append({"app_id": name[len("app:") :], "revoked_at": int(value)})
    version = fields.get(VERSION_FIELD)
    return {
        # a subject the store never saw has the policy's defaults, the same answers as
        # ``is_allowed``; "seen" says which it is
        "seen": version is not None,
        "version": int(version) if version is not None else None,
        "closed": closed is not None,
        "closed_at": int(closed) if closed is not None else None,
        "purposes": purposes,
        "revoked_permissions": permissions,
        "revoked_apps": apps,
    }
