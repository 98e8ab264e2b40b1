"""The subject keys: the HMAC keys of pseudonymous refs, digests and consent store keys.

One key is *current*: new refs and digests are made with it, and the consent store writes
under it. Other *accepted* keys (the previous key while a rotation is under way, or the
next one before it becomes current) are only used to verify a ref or digest and to find a
subject's consent in the store. Every key has a short id (``[a-z0-9-]{1,16}``) that refs
and digests carry as ``<key id>:<hex>``; a value without a key id was made before key ids
existed and is taken as made with the key of ``legacy_id`` (docs/security.md, "Rotating the
subject key").
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from schemas.errors import ConfigurationError, UnknownSubjectKeyError
from schemas.secrets import MIN_TOKEN_CHARS, Secret, parse_named_secrets

__all__ = [
    "DEFAULT_KEY_ID",
    "DEV_KEY_ID",
    "KEY_ID_SEPARATOR",
    "SubjectKeys",
    "check_key_id",
    "subject_keys_from_env",
]

DEFAULT_KEY_ID: Final = "k1"
DEV_KEY_ID: Final = "dev"
KEY_ID_SEPARATOR: Final = ":"
_KEY_ID: Final = re.compile(r"[a-z0-9-]{1,16}")
_DEV_KEY: Final = "consent-stream-local-development-key"


def check_key_id(key_id: str, what: str) -> str:
    """``key_id`` if it is a valid key id, else a ``ConfigurationError`` naming ``what``."""
    if not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(f"{what}: key id {key_id!r} is not 1 to 16 of a-z, 0-9 and '-'")
    return key_id


@dataclass(frozen=True)
class SubjectKeys:
    """The current subject key and its id, and the other keys still accepted, by id."""

    current_id: str
    current: Secret
    accepted: Mapping[str, Secret] = field(default_factory=dict)
    """Keys still accepted for verification and store look-ups, in the configured order."""
    legacy_id: str = DEFAULT_KEY_ID
    """The id of the key that made the values without a key id (before key ids existed)."""

    def __post_init__(self) -> None:
        what = "subject keys"
        check_key_id(self.current_id, what)
        check_key_id(self.legacy_id, what + " (legacy id)")
        for key_id in self.accepted:
            check_key_id(key_id, what)
        if self.current_id in self.accepted:
            raise ConfigurationError(
                f"{what}: {self.current_id!r} is the current key id and an accepted one"
            )
        seen: dict[bytes, str] = {}
        for key_id, secret in ((self.current_id, self.current), *self.accepted.items()):
            for value, other in seen.items():
                if hmac.compare_digest(value, secret.reveal()):
                    raise ConfigurationError(
                        f"{what}: {other!r} and {key_id!r} are the same key under two ids"
                    )
            seen[secret.reveal()] = key_id
        object.__setattr__(self, "accepted", MappingProxyType(dict(self.accepted)))

    @classmethod
    def single(
        cls, key: Secret, key_id: str = DEFAULT_KEY_ID, legacy_id: str = DEFAULT_KEY_ID
    ) -> SubjectKeys:
        """One key and no rotation (values without a key id: made with ``legacy_id``)."""
        return cls(key_id, key, legacy_id=legacy_id)

    @classmethod
    def development(cls) -> SubjectKeys:
        """The built-in development key (id ``dev``): never outside development mode."""
        return cls.single(Secret(_DEV_KEY), DEV_KEY_ID, DEV_KEY_ID)

    @property
    def rotating(self) -> bool:
        """Whether any key besides the current one is accepted."""
        return bool(self.accepted)

    def ids(self) -> tuple[str, ...]:
        """Every accepted key id, the current one first."""
        return (self.current_id, *self.accepted)

    def items(self) -> tuple[tuple[str, Secret], ...]:
        """(key id, key) of every accepted key, the current one first."""
        return ((self.current_id, self.current), *self.accepted.items())

    def key(self, key_id: str) -> Secret:
        """The key of ``key_id``; ``UnknownSubjectKeyError`` if it is not accepted here."""
        if key_id == self.current_id:
            return self.current
        try:
            return self.accepted[key_id]
        except KeyError:
            raise UnknownSubjectKeyError(
                f"subject key {key_id!r} is not configured here (accepted: "
                f"{', '.join(self.ids())}); was it removed before its values were?"
            ) from None

    def split(self, value: str) -> tuple[str, str] | None:
        """(key id, digest) of a ``<key id>:<digest>`` value; (legacy id, value) for a
        value without a key id; None when the text before the separator is no key id."""
        key_id, sep, digest = value.partition(KEY_ID_SEPARATOR)
        if not sep:
            return self.legacy_id, value
        if not _KEY_ID.fullmatch(key_id):
            return None
        return key_id, digest


def subject_keys_from_env(env: Mapping[str, str], prefix: str, dev_mode: bool) -> SubjectKeys:
    """``<prefix>SUBJECT_KEY`` (+ ``_KEY_ID``), ``<prefix>SUBJECT_KEYS_ACCEPTED`` and
    ``<prefix>SUBJECT_KEY_LEGACY_ID``; the development key only in development mode."""
    name = prefix + "SUBJECT_KEY"
    raw = env.get(name, "").strip()
    raw_id = env.get(name + "_ID", "").strip()
    if raw:
        if len(raw) < MIN_TOKEN_CHARS:
            raise ConfigurationError(f"{name} is shorter than {MIN_TOKEN_CHARS} characters")
        current, current_id = Secret(raw), check_key_id(raw_id or DEFAULT_KEY_ID, name + "_ID")
    elif dev_mode:
        if raw_id:
            raise ConfigurationError(
                f"{name}_ID is set but {name} is not (the built-in development key's id is "
                f"{DEV_KEY_ID!r})"
            )
        current, current_id = SubjectKeys.development().current, DEV_KEY_ID
    else:
        raise ConfigurationError(
            f"{name} is not set: it keys the pseudonymous subject refs, the consent store "
            f"and the evidence digests (docs/security.md); only a development set-up may "
            f"run without it, with {prefix}DEV_MODE=1 (make env sets it)"
        )
    what = prefix + "SUBJECT_KEYS_ACCEPTED"
    accepted = parse_named_secrets(env.get(what, ""), what, name="id", value="key")
    for key_id in accepted:
        check_key_id(key_id, what)
        if key_id == current_id:
            raise ConfigurationError(f"{what}: {key_id!r} is the id of the current key ({name}_ID)")
    legacy_what = name + "_LEGACY_ID"
    default_legacy = DEV_KEY_ID if current_id == DEV_KEY_ID else DEFAULT_KEY_ID
    legacy_id = check_key_id(env.get(legacy_what, "").strip() or default_legacy, legacy_what)
    return SubjectKeys(current_id, current, accepted, legacy_id)
