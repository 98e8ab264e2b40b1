"""``consent-stream remove-worker``: the LeaveGroup v3 request naming instance ids, and
what the coordinator's answer means (no Kafka)."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from schemas.errors import AccessDeniedError
from streams.group_members import LeaveGroupRequest_v3, _outcome, _RemoveMembers


def _string(text: str) -> bytes:
    return struct.pack(">h", len(text)) + text.encode()


def test_the_request_names_the_members_by_instance_id_only() -> None:
    request = _RemoveMembers("consent-stream", ["worker-2", "worker-3"])
    built = request.prepare({13: (0, 5)})  # the broker's LeaveGroup versions

    assert isinstance(built, LeaveGroupRequest_v3)
    assert built.encode() == (
        _string("consent-stream")
        + struct.pack(">i", 2)
        + _string("")  # no member id: the coordinator finds each by its instance id
        + _string("worker-2")
        + _string("")
        + _string("worker-3")
    )


def _answer(error: int, members: list[tuple[str, str, int]]) -> SimpleNamespace:
    return SimpleNamespace(error_code=error, members=members)


def test_each_name_is_removed_or_not_in_the_group() -> None:
    answer = _answer(0, [("m-1", "worker-2", 0), ("", "gone", 25)])  # 25: UNKNOWN_MEMBER_ID

    removal = _outcome("g", ["worker-2", "gone"], answer)

    assert removal.group == "g" and removal.removed == {"worker-2": True, "gone": False}


def test_no_group_means_nobody_to_remove() -> None:
    removal = _outcome("g", ["worker-2"], _answer(69, []))  # GROUP_ID_NOT_FOUND

    assert removal.removed == {"worker-2": False}


def test_a_group_the_principal_may_not_change_is_access_denied() -> None:
    with pytest.raises(AccessDeniedError, match="not allowed to change the group g"):
        _outcome("g", ["worker-2"], _answer(30, []))  # GROUP_AUTHORIZATION_FAILED
