"""The subject state held in the worker's table: JSON codec and the published view."""

from __future__ import annotations

import json

import pytest

from schemas.views import PermissionRevocation, PurposeDecision
from streams.subject import (
    RECENT_EVENT_IDS,
    Share,
    SubjectState,
    permission_key,
    state_from_json,
    state_to_json,
    to_consent_state,
)

T = 1_700_000_000_000

STATES = {
    "empty": SubjectState("s-1"),
    "purposes-and-permissions": SubjectState(
        "buyer-4711@example.com",
        version=7,
        purposes=(
            PurposeDecision("personalized_ads", False, T, "2023-09-01"),
            PurposeDecision("research_sharing", True, T + 1, "2023-09-01"),
        ),
        permissions=(
            PermissionRevocation(T + 2, permission="camera", device_id="dev:A"),
            PermissionRevocation(T + 3, app_id="ads-insights"),
        ),
        recent_event_ids=("e1", "e2"),
    ),
    "closed": SubjectState(
        "s-2",
        version=3,
        closed_at=T,
        closed_by_request="9b0d1c52-2a8e-4d5f-9a0b-0c1d2e3f4a5b",
        recent_event_ids=("e3",),
    ),
    "shares": SubjectState(
        "s-3",
        version=2,
        shares=(
            Share(
                "e4",
                "logistics",
                ("delivery_details", "order_records"),
                (("order_no", "O-1,O-2"), ("waybill_no", "W-1")),
                T,
                T - 5,
            ),
            Share("e5", "ads", ("behaviour",), (), T + 9),
            Share("e7", "payment", ("payment_records",), (), T + 10, T + 11, refs_dropped=4),
        ),
    ),
    "unicode-and-odd-values": SubjectState(
        '买家-张三 "quoted" \\ 🙂',
        version=2**40,
        purposes=(PurposeDecision("marketing_sms", True, 0, "v\u00e9"),),
        shares=(Share("e6", "payment", ("bank_account",), (("ref", "a,b=c"),), 1, None),),
    ),
    "full-event-memory": SubjectState(
        "s-4", version=500, recent_event_ids=tuple(f"id-{n}" for n in range(RECENT_EVENT_IDS))
    ),
}


@pytest.mark.parametrize("state", list(STATES.values()), ids=list(STATES))
def test_state_json_round_trip(state: SubjectState) -> None:
    data = state_to_json(state)

    assert state_from_json(data) == state
    assert state_to_json(state_from_json(data)) == data  # stable encoding
    json.loads(data)  # plain JSON, nothing else


def test_a_share_without_dropped_references_is_encoded_as_before_counts_existed() -> None:
    """States written before ``refs_dropped`` read as none dropped, and a share without
    any keeps those bytes (six fields), so the states of every other subject stay as they
    were."""
    before = (
        b'{"s":"s-5","v":1,"p":[],"r":[],"c":null,"cr":null,'
        b'"sh":[["e8","ads",["behaviour"],[["ad_id","A"]],5,null]],"e":["e8"]}'
    )
    state = state_from_json(before)
    assert state.shares == (Share("e8", "ads", ("behaviour",), (("ad_id", "A"),), 5),)
    assert state_to_json(state) == before
    counted = Share("e8", "ads", ("behaviour",), (), 5, refs_dropped=2)
    merged = counted.merged(Share("e9", "ads", ("behaviour",), (), 6, refs_dropped=1))
    assert merged.refs_dropped == 3


def test_event_memory_is_bounded_and_keeps_the_newest() -> None:
    state = SubjectState("s")
    for n in range(RECENT_EVENT_IDS + 5):
        state = state.remember(f"id-{n}")

    assert len(state.recent_event_ids) == RECENT_EVENT_IDS
    assert state.seen(f"id-{RECENT_EVENT_IDS + 4}") and not state.seen("id-4")
    assert state.seen("id-5")


@pytest.mark.parametrize(
    ("revocation", "key"),
    [
        pytest.param(PermissionRevocation(T, "camera", "dev:A"), "perm:dev:A:camera", id="system"),
        pytest.param(PermissionRevocation(T, app_id="ads-insights"), "app:ads-insights", id="app"),
    ],
)
def test_permission_key(revocation: PermissionRevocation, key: str) -> None:
    assert permission_key(revocation) == key


def test_consent_view_is_sorted_and_carries_closure() -> None:
    state = STATES["purposes-and-permissions"]
    state = SubjectState(
        state.subject_id,
        version=state.version,
        purposes=tuple(reversed(state.purposes)),
        permissions=tuple(reversed(state.permissions)),
        closed_at=T + 10,
    )
    view = to_consent_state(state, updated_at=T + 20)

    assert view.subject_id == state.subject_id and view.version == 7
    assert view.updated_at == T + 20 and view.account_closed_at == T + 10
    assert [d.purpose for d in view.purposes] == ["personalized_ads", "research_sharing"]
    assert [permission_key(p) for p in view.permissions] == [
        "app:ads-insights",
        "perm:dev:A:camera",
    ]


@pytest.mark.parametrize(
    ("completed", "start"),
    [
        pytest.param(T - 100, T - 100, id="transaction-completed"),
        pytest.param(None, T, id="shared-time"),
    ],
)
def test_share_retention_start(completed: int | None, start: int) -> None:
    assert Share("e", "payment", ("payment_records",), (), T, completed).retention_start == start
