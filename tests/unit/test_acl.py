"""The ACLs derived from the policy: each principal gets exactly its share."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from importlib import resources

import pytest

from schemas.policy import Policy, load_policy, parse_policy, webhook_partners
from schemas.settings import Settings
from schemas.topics import TopicNames
from streams.acl.rules import (
    GATEWAY,
    PUBLISHER,
    WORKER,
    Acl,
    partner_principal,
    wanted_acls,
)
from streams.acl.sync import acl_diff, namespace_acls

PARTNERS = sorted(load_policy().partners)
NAMES = TopicNames()


def webhook_policy(*webhook: str) -> Policy:
    """The packaged policy with ``webhook`` partners delivered by webhook."""
    raw = tomllib.loads((resources.files("schemas") / "policy" / "policy.v1.toml").read_text())
    for partner in webhook:
        raw["partners"][partner].update(delivery="webhook", webhook_url="https://p.example/h")
    return parse_policy(raw)


def _of(principal: str, acls: list[Acl]) -> list[Acl]:
    return [a for a in acls if a.principal == principal]


def _may(acls: list[Acl], principal: str, operation: str, resource: str, name: str) -> bool:
    """What the broker would decide for one request (ALLOW rules only; default deny)."""
    return any(
        a.principal == principal
        and a.resource == resource
        and a.operation in (operation, "all")
        and (name.startswith(a.name) if a.prefixed else name == a.name)
        for a in acls
    )


def test_a_partner_reads_only_its_instructions_and_writes_only_its_acks() -> None:
    acls = wanted_acls(PARTNERS, NAMES, "consent-stream")
    for partner in PARTNERS:
        who = partner_principal(partner)
        for other in PARTNERS:
            mine = other == partner
            assert _may(acls, who, "read", "topic", NAMES.instructions(other)) is mine
            assert _may(acls, who, "write", "topic", NAMES.acks(other)) is mine
            assert not _may(acls, who, "write", "topic", NAMES.instructions(other))
            assert not _may(acls, who, "read", "topic", NAMES.acks(other))
        assert _may(acls, who, "read", "group", NAMES.partner_group(partner))
        assert not _may(acls, who, "write", "topic", NAMES.events)
        for topic in (NAMES.state, NAMES.requests, NAMES.deadletter, NAMES.ledger):
            assert not _may(acls, who, "read", "topic", topic)


def test_a_partner_name_that_prefixes_another_gets_none_of_its_groups() -> None:
    acls = wanted_acls(["pay", "payment"], NAMES, "consent-stream")
    assert not _may(acls, "partner-pay", "read", "group", NAMES.partner_group("payment"))
    assert _may(acls, "partner-pay", "read", "group", NAMES.partner_group("pay") + ".replay")


def test_publishers_only_write_the_inbound_topic() -> None:
    acls = wanted_acls(PARTNERS, NAMES, "consent-stream")
    assert {(a.operation, a.name) for a in _of(PUBLISHER, acls)} == {
        ("write", NAMES.events),
        ("describe", NAMES.events),
    }
    for partner in PARTNERS:
        assert not _may(acls, PUBLISHER, "read", "topic", NAMES.instructions(partner))


def test_the_gateway_writes_events_and_only_the_acks_of_webhook_partners() -> None:
    policy = webhook_policy("logistics")
    webhook = webhook_partners(policy)
    assert webhook == ["logistics"]
    assert webhook_partners(load_policy()) == []  # the packaged policy: kafka delivery only
    acls = wanted_acls(PARTNERS, NAMES, "consent-stream", webhook=webhook)
    assert {(a.operation, a.name) for a in _of(GATEWAY, acls)} == {
        ("write", NAMES.events),
        ("describe", NAMES.events),
        ("write", NAMES.acks("logistics")),
        ("describe", NAMES.acks("logistics")),
    }
    for partner in PARTNERS:
        # a kafka-delivery partner's acks are its own (and the worker's) alone
        assert _may(acls, GATEWAY, "write", "topic", NAMES.acks(partner)) is (
            partner == "logistics"
        )
        assert not _may(acls, GATEWAY, "read", "topic", NAMES.acks(partner))
        assert not _may(acls, GATEWAY, "read", "topic", NAMES.instructions(partner))
        assert not _may(acls, GATEWAY, "write", "topic", NAMES.instructions(partner))
    assert not _may(acls, GATEWAY, "read", "topic", NAMES.events)
    assert not any(a.resource == "group" for a in _of(GATEWAY, acls))
    # no webhook partner: the gateway writes the events topic only
    plain = wanted_acls(PARTNERS, NAMES, "consent-stream")
    assert {a.name for a in _of(GATEWAY, plain)} == {NAMES.events}


def test_webhook_partners_are_those_of_the_partners_asked_for() -> None:
    policy = webhook_policy("logistics", "ads")
    assert webhook_partners(policy) == ["ads", "logistics"]
    assert webhook_partners(policy, ["logistics", "payment", "gone"]) == ["logistics"]
    with pytest.raises(ValueError, match="not in partners"):
        wanted_acls(["ads"], NAMES, "consent-stream", webhook=["logistics"])


def test_a_partner_moved_to_kafka_delivery_loses_the_gateways_write_on_its_acks() -> None:
    before = wanted_acls(PARTNERS, NAMES, "consent-stream", webhook=["logistics"])
    after = wanted_acls(PARTNERS, NAMES, "consent-stream")
    diff = acl_diff(after, before)
    assert diff.missing == []
    assert diff.extra == [  # the gateway is a managed principal: --prune deletes them
        Acl(GATEWAY, "topic", NAMES.acks("logistics"), False, "describe"),
        Acl(GATEWAY, "topic", NAMES.acks("logistics"), False, "write"),
    ]


def test_the_worker_owns_the_service_topics_and_its_faust_topics_and_groups() -> None:
    acls = wanted_acls(PARTNERS, NAMES, "consent-stream")
    every = [*NAMES.names(PARTNERS), "consent-stream-consent-subjects-changelog"]
    for topic in every:
        for operation in ("read", "write", "describe"):
            assert _may(acls, WORKER, operation, "topic", topic), (operation, topic)
    assert _may(acls, WORKER, "read", "group", "consent-stream")
    assert not _may(acls, WORKER, "read", "topic", "another-app-changelog")


def test_a_namespace_scopes_every_name() -> None:
    names = TopicNames("ns1")
    acls = wanted_acls(["ads"], names, "consent-stream-ns1")
    assert _may(acls, "partner-ads", "read", "topic", "ns1.partner.ads.instructions.v1")
    assert not _may(acls, "partner-ads", "read", "topic", "partner.ads.instructions.v1")
    assert not _may(acls, WORKER, "write", "topic", "consent.events.v1")


def test_adding_a_partner_adds_only_that_partners_acls() -> None:
    before = set(wanted_acls(["ads"], NAMES, "consent-stream"))
    after = set(wanted_acls(["ads", "carrier"], NAMES, "consent-stream"))
    assert before < after
    assert {a.principal for a in after - before} == {"partner-carrier"}


def test_sync_creates_what_is_missing_and_reports_what_the_policy_does_not_give() -> None:
    wanted = wanted_acls(["ads"], NAMES, "consent-stream")
    stale = Acl("partner-gone", "topic", "partner.gone.acks.v1", False, "write")
    someone_else = Acl("analytics", "topic", "clicks", False, "read")
    diff = acl_diff(wanted, [wanted[0], stale, someone_else])
    assert diff.missing == sorted(set(wanted) - {wanted[0]})
    assert diff.extra == [stale]  # another team's principal is never touched
    assert diff.kept == 1
    assert acl_diff(wanted, wanted).missing == []


def test_the_sync_report_lists_other_acls_only_when_asked() -> None:
    import io

    from streams.acl.sync import AclDiff, _report

    stale = Acl("partner-gone", "topic", "partner.gone.acks.v1", False, "write")
    diff = AclDiff(missing=[], extra=[stale], kept=38)
    quiet, listed = io.StringIO(), io.StringIO()
    _report(diff, dry_run=False, prune=False, out=quiet)
    _report(diff, dry_run=True, prune=False, out=listed)
    assert quiet.getvalue().splitlines() == [
        "acl sync: create 0, delete 0, 38 already in place; 1 other ACLs of the service's "
        "principals (--dry-run lists them, --prune deletes them)"
    ]
    assert f"? {stale} (not in the policy; --prune deletes it)" in listed.getvalue()


def test_a_namespace_removes_its_app_ids_acls_only_when_the_app_id_is_its_own() -> None:
    partners = ("ads", "payment")
    shared = Settings(topic_namespace="t1234abcd")  # the default app id, consent-stream
    own = replace(shared, app_id="consent-stream-t1234abcd")
    assert shared.app_id == Settings().app_id
    kept = {str(a) for a in wanted_acls(partners, shared.topics, shared.app_id, partners)}
    kept -= {str(a) for a in namespace_acls(shared, partners)}
    assert kept == {
        "User:worker all group prefix consent-stream",
        "User:worker all topic prefix consent-stream-",
    }  # the production worker's: another namespace's removal must not take them
    removed = {str(a) for a in namespace_acls(own, partners)}
    assert "User:worker all group prefix consent-stream-t1234abcd" in removed
    assert all("t1234abcd" in name for name in removed), removed
