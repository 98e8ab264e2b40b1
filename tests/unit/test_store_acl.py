"""The consent store's Redis ACL rules: the reader can run nothing that writes."""

from __future__ import annotations

from consumers.store.acl import ROLE_RULES, setuser_args
from schemas.secrets import Secret


def test_the_reader_reads_and_the_writer_also_writes_and_runs_the_store_scripts() -> None:
    assert ROLE_RULES["reader"] == ("-@all", "+@read", "+@connection", "-@dangerous")
    assert set(ROLE_RULES["writer"]) - set(ROLE_RULES["reader"]) == {"+@write", "+@scripting"}
    for rules in ROLE_RULES.values():
        assert rules[0] == "-@all" and rules[-1] == "-@dangerous"  # the order matters


def test_setuser_confines_a_user_to_its_prefix_with_one_password() -> None:
    args = setuser_args("consent-reader", Secret("pw-123"), "cs", "reader")
    assert args[:6] == ["consent-reader", "reset", "on", ">pw-123", "~cs:*", "resetchannels"]
    assert args[6:] == list(ROLE_RULES["reader"])
