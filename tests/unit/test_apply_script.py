"""``APPLY_STATE_LUA`` and ``APPLY_STATES_LUA`` themselves, run by a Lua 5.1 interpreter
(Redis' Lua) over in-memory hashes, against ``apply_state_model`` and ``apply_states_model``
that the store's unit tests use. Needs ``lupa``
(skipped without it; tests/integration/test_consent_store.py runs the script on Redis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_redis import Hashes, apply_state_model, apply_states_model

from consumers.store.layout import APPLY_STATE_LUA, APPLY_STATES_LUA, apply_states_call

lupa = pytest.importorskip("lupa.lua51")

SLOTS = ["cs:s:cur", "cs:s:old1", "cs:s:old2"]


def run_lua(hashes: Hashes, keys: list[str], argv: list[str], script: str = APPLY_STATE_LUA) -> Any:
    lua = lupa.LuaRuntime()

    def call(command: str, *args: Any) -> Any:
        command = command.upper()
        if command == "HGET":
            return hashes.get(args[0], {}).get(args[1], False)
        if command == "HMGET":
            stored = hashes.get(args[0], {})
            return lua.table_from([stored.get(f, False) for f in args[1:]])
        if command == "RENAME":
            hashes[args[1]] = hashes.pop(args[0])
            return "OK"
        if command == "DEL":
            return sum(hashes.pop(k, None) is not None for k in args)
        if command == "HSET":
            pairs = dict(zip(args[1::2], args[2::2], strict=True))
            hashes.setdefault(args[0], {}).update(pairs)
            return len(pairs)
        raise AssertionError(f"unexpected command {command}")

    g = lua.globals()
    g.KEYS, g.ARGV = lua.table_from(keys), lua.table_from(argv)
    g.redis = lua.table_from({"call": call})
    reply = lua.execute(script)
    return int(reply) if script == APPLY_STATE_LUA else [int(r) for r in reply.values()]


def slot_hash(version: int | None, closed: bool) -> dict[str, str] | None:
    if version is None:
        return None
    return {"v": str(version), "closed": "9"} if closed else {"v": str(version), "p:a": "1"}


def state_call(
    subject: int, slots: list[tuple[int | None, bool]], version: int, closing: bool
) -> tuple[Hashes, list[str], list[str]]:
    """A subject's stored slots (``SLOTS``, numbered by subject), and its slots and
    arguments in a call."""
    keys = [f"{key}-{subject}" for key in SLOTS[: len(slots)]]
    start: Hashes = {}
    for key, (v, closed) in zip(keys, slots, strict=True):
        h = slot_hash(v, closed)
        if h is not None:
            start[key] = h
    argv = [str(version), "1" if closing else "0", "v", str(version)]
    argv += ["closed", "5"] if closing else ["p:b", "0"]
    return start, keys, argv


slot = st.tuples(st.none() | st.integers(1, 6), st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    slots=st.lists(slot, min_size=1, max_size=3),
    version=st.integers(1, 7),
    closing=st.booleans(),
)
def test_the_script_does_what_the_model_says(
    slots: list[tuple[int | None, bool]], version: int, closing: bool
) -> None:
    start, keys, argv = state_call(0, slots, version, closing)
    by_lua, by_model = (
        {k: dict(v) for k, v in start.items()},
        {k: dict(v) for k, v in start.items()},
    )
    assert run_lua(by_lua, keys, argv) == apply_state_model(by_model, keys, argv)
    assert by_lua == by_model
    if len(keys) > 1:
        assert not set(by_lua) & set(keys[1:])  # no slot but the current one is left


@settings(max_examples=200, deadline=None)
@given(
    states=st.lists(
        st.tuples(st.lists(slot, min_size=1, max_size=3), st.integers(1, 7), st.booleans()),
        min_size=1,
        max_size=4,
    )
)
def test_the_batch_script_applies_each_state_as_the_model_says(
    states: list[tuple[list[tuple[int | None, bool]], int, bool]],
) -> None:
    start: Hashes = {}
    calls = []
    for subject, (slots, version, closing) in enumerate(states):
        stored, keys, argv = state_call(subject, slots, version, closing)
        start.update(stored)
        calls.append((keys, argv))
    numkeys, args = apply_states_call(calls)
    keys, argv = args[:numkeys], args[numkeys:]
    by_lua, by_model = (
        {k: dict(v) for k, v in start.items()},
        {k: dict(v) for k, v in start.items()},
    )
    one_by_one = {k: dict(v) for k, v in start.items()}
    expected = [apply_state_model(one_by_one, k, a) for k, a in calls]

    assert run_lua(by_lua, keys, argv, APPLY_STATES_LUA) == expected
    assert apply_states_model(by_model, keys, argv) == expected
    assert by_lua == by_model == one_by_one
