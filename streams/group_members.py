"""``consent-stream remove-worker NAME...``: named workers stopped for good leave the
consumer group now, not after the group session timeout.

A worker with a name (``CONSENT_STREAM_GROUP_INSTANCE_ID``: Kafka's static membership,
KIP-345) does not leave the group when it stops, so that a restart finds its partitions
where it left them. A worker stopped for good (scale-in) therefore holds its partitions
for the session timeout (20 s by default) before the others get them, and withdrawals on
them wait as long. This sends the group's coordinator a LeaveGroup request (version 3)
naming the workers' instance ids, the request Kafka's AdminClient
``removeMembersFromConsumerGroup`` sends, so the group rebalances at once. aiokafka 0.14
has LeaveGroup up to version 1 only (a member id, no instance id), hence the structs here.
A running worker removed this way rejoins under its name (one more rebalance).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from schemas.errors import AccessDeniedError, BrokerUnavailableError
from schemas.settings import Settings
from streams.app import broker_credentials

__all__ = ["Removal", "remove_workers"]

_ATTEMPTS: Final = 5
_RETRY_S: Final = 1.0
_UNKNOWN_MEMBER: Final = kafka_errors.UnknownMemberIdError.errno


class LeaveGroupResponse_v3(Response):  # type: ignore[misc]  # aiokafka's naming
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class LeaveGroupRequest_v3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class _RemoveMembers(Request[LeaveGroupRequest_v3]):  # type: ignore[misc]
    """LeaveGroup for members known by instance id only (member id ``""``, as Kafka's
    AdminClient sends it)."""

    API_KEY = 13

    def __init__(self, group: str, instance_ids: Sequence[str]) -> None:
        self._group, self._ids = group, list(instance_ids)

    def build(self, request_struct_class: type[LeaveGroupRequest_v3]) -> LeaveGroupRequest_v3:
        return request_struct_class(self._group, [("", name) for name in self._ids])


@dataclass(frozen=True)
class Removal:
    """Per name: True when it was removed, False when the group had no such member."""

    group: str
    removed: dict[str, bool]


def _outcome(group: str, names: Sequence[str], response: Any) -> Removal:
    error = kafka_errors.for_code(response.error_code)
    if error is kafka_errors.GroupAuthorizationFailedError:
        raise AccessDeniedError(f"Kafka: not allowed to change the group {group}")
    if error is kafka_errors.GroupIdNotFound:  # no group at all: nobody to remove
        return Removal(group, dict.fromkeys(names, False))
    if error is not kafka_errors.NoError:
        raise error()
    removed = dict.fromkeys(names, False)
    for _member_id, name, code in response.members:
        if code == 0:
            removed[name] = True
        elif code != _UNKNOWN_MEMBER:
            raise kafka_errors.for_code(code)()
    return Removal(group, removed)


async def _send(client: AIOKafkaClient, group: str, names: Sequence[str]) -> Removal:
    """One try at the group's coordinator (which may move: looked up each time)."""
    node = await client.coordinator_lookup(CoordinationType.GROUP, group)
    request = _RemoveMembers(group, names)
    response = await client.send(node, request, group=ConnectionGroup.COORDINATION)
    return _outcome(group, names, response)


async def _remove(settings: Settings, names: Sequence[str]) -> Removal:
    group = settings.app_id
    auth = credentials_to_aiokafka_auth(broker_credentials(settings))
    client = AIOKafkaClient(
        bootstrap_servers=settings.bootstrap_servers, client_id=settings.client_id, **auth
    )
    try:
        await client.bootstrap()
        attempt = 1
        while True:
            try:
                return await _send(client, group, names)
            except kafka_errors.KafkaError as exc:
                if not exc.retriable or attempt == _ATTEMPTS:
                    raise
            attempt += 1
            await asyncio.sleep(_RETRY_S)
    except kafka_errors.KafkaError as exc:  # unreachable, or failing: one line, exit 5
        raise BrokerUnavailableError(f"Kafka: group {group}: {exc!r}") from exc
    finally:
        await client.close()


def remove_workers(settings: Settings, names: Sequence[str]) -> Removal:
    """Remove the named workers from the worker group (``settings.app_id``)."""
    return asyncio.run(_remove(settings, names))
