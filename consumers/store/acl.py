"""Who may write and who may only read the consent store: its Redis ACL users.

Two roles, each confined to one deployment's keys (``<CONSENT_STREAM_REDIS_PREFIX>:*``):

- ``writer``: the stream workers (their store writes, their HTTP API's reads, ``WAIT`` for
  replicas) and ``consent-stream rebuild-store``. Reads, writes and the store's scripts
  (``EVALSHA``, ``SCRIPT LOAD``), nothing of ``@dangerous`` (no ``KEYS``, ``FLUSHDB``,
  ``CONFIG``, ``ACL``, ``INFO``...).
- ``reader``: what checks consent: online services through the client library
  (``consumers.store.consent_store``), ``consent-stream check``, ``status`` and ``report``.
  Reads only: a write is refused by Redis (``NoPermissionError``), whatever the client
  does.

``setuser_args`` gives the arguments of ``ACL SETUSER`` for a user of a role (an operator
runs it as Redis's admin, or writes the same rule into the ACL file; the password is
then hashed by Redis, ``ACL GETUSER`` shows only its SHA-256). The local stack's Redis has
these two roles as users on every prefix (``deploy/local/stack_auth.STORE_RULES``). Each
process gets its user in ``CONSENT_STREAM_REDIS_URL``
(``redis://<user>:<password>@host:port/0``; with Sentinels, the URL's user and password
are the data nodes'). ``tests/integration/test_store_acl.py``
runs a worker, ``rebuild-store`` and the readers with exactly these rules, and checks that
Redis logged no denial for the writer.
"""

from __future__ import annotations

from typing import Final, Literal

from schemas.secrets import Secret

__all__ = ["ROLE_RULES", "Role", "setuser_args"]

Role = Literal["writer", "reader"]

ROLE_RULES: Final[dict[Role, tuple[str, ...]]] = {
    "writer": ("-@all", "+@read", "+@write", "+@connection", "+@scripting", "-@dangerous"),
    "reader": ("-@all", "+@read", "+@connection", "-@dangerous"),
}
"""The command rules of each role, applied in order (``-@dangerous`` last: it takes back
what ``@read`` and ``@write`` hold of it)."""


def setuser_args(user: str, password: Secret, prefix: str, role: Role) -> list[str]:
    """``ACL SETUSER`` arguments: ``user`` enabled with ``password`` only, the keys of
    ``prefix`` only, no Pub/Sub channel, the commands of ``role``. ``reset`` first: a user
    set again gets exactly these rules."""
    return [
        user,
        "reset",
        "on",
        f">{password.reveal().decode()}",
        f"~{prefix}:*",
        "resetchannels",
        *ROLE_RULES[role],
    ]
