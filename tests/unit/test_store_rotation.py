"""The consent store while the subject key is rotated (an in-memory Redis, no server).

Before: one key, one slot per subject, one HMGET per check, one script on one key per write.
During: a subject written under the old key is still found; a write moves it to the new
key's slot and leaves no old slot behind; the newest slot wins when both exist."""

from __future__ import annotations

import asyncio

import pytest
from memory_redis import AsyncMemoryRedis, MemoryRedis

from consumers.store.consent_store import AsyncConsentStore, ConsentStore
from consumers.store.layout import (
    APPLY_STATE_LUA,
    APPLY_STATES_LUA,
    ApplyOutcome,
    SubjectSlots,
    newest_hash,
    newest_reply,
)
from schemas.policy import load_policy
from schemas.settings import Secret, SubjectKeys
from schemas.views import ConsentState, PurposeDecision

POLICY = load_policy()
OLD = SubjectKeys.single(Secret("old-subject-key-0123456789"), "k1")
NEW = SubjectKeys("k2", Secret("new-subject-key-9876543210"), {"k1": OLD.current})
SUBJECT = "buyer-4711@example.com"


def state(version: int, research: bool, closed_at: int | None = None) -> ConsentState:
    return ConsentState(
        subject_id=SUBJECT,
        version=version,
        updated_at=1_700_000_000_000 + version,
        account_closed_at=closed_at,
        purposes=(PurposeDecision("research_sharing", research, 1_700_000_000_000, "n1"),),
    )


def slots() -> tuple[str, str]:
    old = SubjectSlots(OLD, "cs").current(SUBJECT)
    new = SubjectSlots(NEW, "cs").current(SUBJECT)
    assert SubjectSlots(NEW, "cs")(SUBJECT) == [new, old] and old != new
    return old, new


def test_without_rotation_a_check_is_one_hmget_and_a_write_one_key() -> None:
    client = MemoryRedis()
    store = ConsentStore(client, POLICY, OLD)  # type: ignore[arg-type]
    assert store.apply_state(state(1, True))
    client.log.clear()
    client.round_trips = 0
    assert store.is_allowed(SUBJECT, "research_sharing") is True
    assert client.round_trips == 1
    assert client.log == [("HMGET", store.key(SUBJECT), "p:research_sharing", "closed")]
    client.log.clear()
    assert store.apply_states([state(2, False)]) == [ApplyOutcome.APPLIED]
    evalsha = ("EVALSHA", 1, store.key(SUBJECT))
    assert client.log == [("EVALSHA", "NOSCRIPT"), ("SCRIPT LOAD",), evalsha]
    client.log.clear()
    client.round_trips = 0
    assert store.apply_states([state(3, True)]) == [ApplyOutcome.APPLIED]
    assert client.log == [evalsha]  # the script is loaded once, not sent with every write
    assert client.round_trips == 1


def test_a_subject_written_under_the_old_key_is_found_in_one_round_trip() -> None:
    client = MemoryRedis()
    ConsentStore(client, POLICY, OLD).apply_state(state(3, True))  # type: ignore[arg-type]
    old, new = slots()
    store = ConsentStore(client, POLICY, NEW)  # type: ignore[arg-type]
    assert store.key(SUBJECT) == new and list(client.hashes) == [old]
    client.round_trips = 0
    assert store.is_allowed(SUBJECT, "research_sharing") is True
    assert store.is_permission_revoked(SUBJECT, "camera", "d1") is False
    view = store.consent_view(SUBJECT)
    assert view["seen"] and view["version"] == 3
    assert view["purposes"]["research_sharing"]["source"] == "explicit"
    assert client.round_trips == 3  # one pipeline each
    # an unknown subject still gets the policy defaults
    assert store.is_allowed("nobody", "research_sharing") is False
    assert store.consent_view("nobody")["seen"] is False


def test_a_write_under_the_new_key_moves_the_subject_and_leaves_no_old_slot() -> None:
    client = MemoryRedis()
    ConsentStore(client, POLICY, OLD).apply_state(state(3, True))  # type: ignore[arg-type]
    old, new = slots()
    store = ConsentStore(client, POLICY, NEW)  # type: ignore[arg-type]
    assert store.apply_states([state(4, False)]) == [ApplyOutcome.APPLIED]
    assert old not in client.hashes and client.hashes[new]["v"] == "4"
    assert client.log[-1] == ("EVALSHA", 2, new, old)
    assert store.is_allowed(SUBJECT, "research_sharing") is False
    # an older state (a replay) does not move the subject back, old slot or not
    assert store.apply_state(state(2, True)) is False
    assert store.is_allowed(SUBJECT, "research_sharing") is False


def test_a_rebuild_moves_a_subject_whose_state_is_not_newer() -> None:
    client = MemoryRedis()
    ConsentStore(client, POLICY, OLD).apply_state(state(3, True))  # type: ignore[arg-type]
    old, new = slots()
    store = ConsentStore(client, POLICY, NEW)  # type: ignore[arg-type]
    assert list(client.hashes) == [old]
    assert store.apply_states([state(3, True)]) == [ApplyOutcome.NOT_NEWER]
    assert list(client.hashes) == [new] and client.hashes[new]["p:research_sharing"] == "1"
    assert store.apply_state(state(1, False)) is False  # older than the moved hash
    assert client.hashes[new]["v"] == "3"


def test_a_closed_subject_under_the_old_key_is_never_reopened() -> None:
    client = MemoryRedis()
    ConsentStore(client, POLICY, OLD).apply_state(state(5, False, closed_at=9))  # type: ignore[arg-type]
    store = ConsentStore(client, POLICY, NEW)  # type: ignore[arg-type]
    assert store.is_allowed(SUBJECT, "order_fulfilment") is False  # closed: nothing allowed
    assert store.apply_states([state(6, True)]) == [ApplyOutcome.REFUSED_CLOSED]
    assert store.is_allowed(SUBJECT, "research_sharing") is False
    assert store.consent_view(SUBJECT)["closed"] is True


def test_the_newest_slot_wins_when_both_exist() -> None:
    """A worker that did not know the new key yet wrote to the old slot after a worker
    with the new key had written to the new one (a rolling restart)."""
    client = MemoryRedis()
    store = ConsentStore(client, POLICY, NEW)  # type: ignore[arg-type]
    store.apply_state(state(5, False))
    ConsentStore(client, POLICY, OLD).apply_state(state(6, True))  # type: ignore[arg-type]
    old, new = slots()
    assert {old, new} <= set(client.hashes)
    assert store.is_allowed(SUBJECT, "research_sharing") is True  # v6, in the old slot
    assert store.consent_view(SUBJECT)["version"] == 6
    assert store.apply_state(state(6, True)) is False  # same version: moved, not applied
    assert list(client.hashes) == [new] and client.hashes[new]["v"] == "6"


def test_newest_picks_the_highest_version_and_the_current_slot_on_a_tie() -> None:
    assert newest_reply([[b"1", None, b"3"], [b"0", None, b"7"]]) == [b"0", None]
    assert newest_reply([[b"1", None, b"7"], [b"0", None, b"7"]]) == [b"1", None]
    assert newest_reply([[None, None, None], [b"0", b"5", b"2"]]) == [b"0", b"5"]
    assert newest_reply([[None, None, None], [None, None, None]]) == [None, None]
    assert newest_hash([{}, {b"v": b"2"}]) == {b"v": b"2"}
    assert newest_hash([{"v": "2", "p:x": "1"}, {"v": "2"}]) == {"v": "2", "p:x": "1"}


@pytest.mark.parametrize("script", [APPLY_STATE_LUA, APPLY_STATES_LUA])
def test_the_script_only_looks_at_other_slots_when_there_are_some(script: str) -> None:
    head, _, rest = script.partition("if nk > 1 then")
    assert "redis.call" not in head and "RENAME" in rest and "DEL', unpack(KEYS, k + 2" in rest


def test_the_async_store_reads_and_moves_the_same_way() -> None:
    async def run() -> None:
        client = AsyncMemoryRedis()
        await AsyncConsentStore(client, POLICY, OLD).apply_state(state(3, True))  # type: ignore[arg-type]
        old, new = slots()
        store = AsyncConsentStore(client, POLICY, NEW)  # type: ignore[arg-type]
        assert list(client.sync.hashes) == [old]
        assert await store.is_allowed(SUBJECT, "research_sharing") is True
        assert await store.is_app_revoked(SUBJECT, "wx") is False
        assert (await store.consent_view(SUBJECT))["version"] == 3
        assert await store.apply_states([state(4, False)]) == [ApplyOutcome.APPLIED]
        assert list(client.sync.hashes) == [new]
        assert await store.is_allowed(SUBJECT, "research_sharing") is False

    asyncio.run(run())


@pytest.mark.parametrize("keys", [OLD, NEW])
def test_slots_never_repeat(keys: SubjectKeys) -> None:
    all_slots = SubjectSlots(keys, "cs")(SUBJECT)
    assert len(set(all_slots)) == len(all_slots) == len(keys.ids())
