"""The policy file: the packaged default says what SPEC section 2 says, and a malformed
file fails at start-up with a ``PolicyError`` naming the offending key."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest

from schemas.errors import ConfigurationError, PolicyError
from schemas.partner import InstructionAction
from schemas.policy import DEFAULT_POLICY, Policy, load_policy, parse_duration_ms

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
DEFAULT_TEXT = (resources.files("schemas") / "policy" / DEFAULT_POLICY).read_text("utf-8")

OPT_OUT = ["personalized_recommendation", "personalized_ads", "marketing_sms", "marketing_push"]
OPT_IN = [
    "third_party_login",
    "joint_activity_sharing",
    "research_sharing",
    "cross_border_transfer",
    "biometric_verification",
]
BASIC = ["order_fulfilment", "payment", "account_security", "legal_obligation"]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


# ---- the packaged default -------------------------------------------------------------


def test_default_policy_loads_with_its_versions(policy: Policy) -> None:
    assert policy.version == "2023-09-01.1"
    assert policy.notice_version == "2023-09-01"


def test_the_packaged_file_and_an_explicit_path_agree(policy: Policy, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_TEXT, encoding="utf-8")
    assert load_policy(path) == policy
    assert load_policy(str(path)) == policy


@pytest.mark.parametrize("name", OPT_OUT)
def test_opt_out_purposes_are_allowed_until_withdrawn(policy: Policy, name: str) -> None:
    purpose = policy.purposes[name]
    assert purpose.opt_in is False
    assert purpose.default_allowed is True
    assert purpose.withdrawable is True


@pytest.mark.parametrize("name", OPT_IN)
def test_opt_in_purposes_are_denied_until_granted(policy: Policy, name: str) -> None:
    purpose = policy.purposes[name]
    assert purpose.opt_in is True
    assert purpose.default_allowed is False
    assert purpose.withdrawable is True


@pytest.mark.parametrize("name", BASIC)
def test_basic_purposes_cannot_be_withdrawn(policy: Policy, name: str) -> None:
    purpose = policy.purposes[name]
    assert purpose.withdrawable is False
    assert purpose.default_allowed is True


def test_only_biometrics_is_sensitive(policy: Policy) -> None:
    assert {p.name for p in policy.purposes.values() if p.sensitive} == {"biometric_verification"}


def test_every_purpose_cites_its_policy_section(policy: Policy) -> None:
    assert all(p.section != "-" for p in policy.purposes.values())
    assert policy.purposes["research_sharing"].section == "三.(一)5.3.C"


def test_system_permissions(policy: Policy) -> None:
    assert policy.system_permissions == {
        "camera",
        "microphone",
        "photos",
        "location",
        "notifications",
        "clipboard",
    }


@pytest.mark.parametrize(
    ("partner", "receives", "purposes", "holds_identity", "retention", "apps"),
    [
        (
            "payment",
            {"account_profile", "bank_account", "payment_records", "risk_data"},
            set(),
            True,
            "transaction_records",
            set(),
        ),
        (
            "logistics",
            {"delivery_details", "order_records"},
            set(),
            True,
            None,
            {"carrier-tracking"},
        ),
        (
            "ads",
            {"pseudonymous_ids", "behaviour"},
            {"personalized_ads", "ads_analytics"},
            False,
            None,
            {"ads-insights"},
        ),
        ("research", {"deidentified_data"}, {"research_sharing"}, False, None, set()),
    ],
)
def test_partners(
    policy: Policy,
    partner: str,
    receives: set[str],
    purposes: set[str],
    holds_identity: bool,
    retention: str | None,
    apps: set[str],
) -> None:
    p = policy.partners[partner]
    assert p.receives == receives
    assert p.purposes == purposes
    assert p.holds_identity is holds_identity
    assert p.retention == retention
    assert p.apps == apps


def test_exactly_the_four_partners(policy: Policy) -> None:
    assert set(policy.partners) == {"payment", "logistics", "ads", "research"}


def test_transaction_records_are_kept_three_years(policy: Policy) -> None:
    rule = policy.retention["transaction_records"]
    assert rule.duration_ms == 1095 * DAY_MS
    assert rule.categories == {"payment_records", "order_records"}
    assert rule.starts == "transaction_completed"
    assert "电子商务法" in rule.basis


def test_requests_are_answered_within_15_days(policy: Policy) -> None:
    assert policy.request_answer_ms == 15 * DAY_MS


@pytest.mark.parametrize(
    ("partner", "action", "deadline_ms"),
    [
        ("payment", InstructionAction.RESTRICT, 7 * DAY_MS),
        ("payment", InstructionAction.ERASE, 7 * DAY_MS),
        ("logistics", InstructionAction.REVOKE_ACCESS, 24 * HOUR_MS),
        ("ads", InstructionAction.STOP_PROCESSING, 1 * HOUR_MS),  # the ads override
        ("ads", InstructionAction.RESUME_PROCESSING, 24 * HOUR_MS),
        ("ads", InstructionAction.ERASE, 7 * DAY_MS),
        ("research", InstructionAction.STOP_PROCESSING, 24 * HOUR_MS),
    ],
)
def test_deadlines(
    policy: Policy, partner: str, action: InstructionAction, deadline_ms: int
) -> None:
    assert policy.deadline_ms(partner, action) == deadline_ms


def test_every_partner_has_a_deadline_for_every_action(policy: Policy) -> None:
    for partner in policy.partners.values():
        assert set(partner.deadlines_ms) == set(InstructionAction)


def test_lookups(policy: Policy) -> None:
    assert policy.partner_of_app("ads-insights") == "ads"
    assert policy.partner_of_app("carrier-tracking") == "logistics"
    assert policy.partner_of_app("unknown-app") is None
    assert policy.partners_processing("personalized_ads") == ("ads",)
    assert policy.partners_processing("research_sharing") == ("research",)
    assert policy.partners_processing("marketing_sms") == ()


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("15d", 15 * DAY_MS),
        ("24h", 24 * HOUR_MS),
        (" 90 m ", 90 * 60_000),
        ("5s", 5000),
        ("250ms", 250),
        ("0d", 0),
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration_ms(text, "k") == ms


@pytest.mark.parametrize("text", ["15", "d", "1.5d", "3y", "-1d", "", "fifteen days"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(PolicyError, match=r"policy: some\.key: not a duration") as info:
        parse_duration_ms(text, "some.key")
    assert info.value.key == "some.key"


# ---- malformed policies fail fast, naming the key -------------------------------------

# (text in the default policy, its replacement everywhere, the key the error must name)
MUTATIONS: dict[str, tuple[str, str, str]] = {
    "unknown category received": (
        'receives = ["pseudonymous_ids", "behaviour"]',
        'receives = ["pseudonymous_ids", "faces"]',
        "partners.ads.receives[1]",
    ),
    "category not a string": (
        'receives = ["deidentified_data"]',
        "receives = [42]",
        "partners.research.receives[0]",
    ),
    "receives not a list": (
        'receives = ["deidentified_data"]',
        'receives = "deidentified_data"',
        "partners.research.receives",
    ),
    "unknown purpose processed": (
        'purposes = ["research_sharing"]',
        'purposes = ["research_sharing", "mind_reading"]',
        "partners.research.purposes[1]",
    ),
    "bad default deadline": ('ERASE = "7d"', 'ERASE = "a week"', "deadlines.actions.ERASE"),
    "bad partner deadline": (
        'STOP_PROCESSING = "1h"',
        'STOP_PROCESSING = "soon"',
        "partners.ads.deadlines.STOP_PROCESSING",
    ),
    "bad retention duration": (
        'duration = "1095d"',
        'duration = "3y"',
        "retention.transaction_records.duration",
    ),
    "bad answer deadline": (
        'request_answer = "15d"',
        "request_answer = 15",
        "deadlines.request_answer",
    ),
    "bad purpose default": (
        '[purposes.personalized_ads]\ndefault = "opt_out"',
        '[purposes.personalized_ads]\ndefault = "maybe"',
        "purposes.personalized_ads.default",
    ),
    "withdrawable not a bool": (
        'default = "opt_out"\nwithdrawable = false\nsection = "三.(五)2"',
        'default = "opt_out"\nwithdrawable = "no"\nsection = "三.(五)2"',
        "purposes.legal_obligation.withdrawable",
    ),
    "unknown retention rule": (
        'retention = "transaction_records"',
        'retention = "forever"',
        "partners.payment.retention",
    ),
    "unknown retention start": (
        'starts = "transaction_completed"',
        'starts = "account_created"',
        "retention.transaction_records.starts",
    ),
    "unknown category retained": (
        'categories = ["payment_records", "order_records"]',
        'categories = ["payment_records", "invoices"]',
        "retention.transaction_records.categories[1]",
    ),
    "unknown action in partner deadlines": (
        'STOP_PROCESSING = "1h"',
        'SHRED = "1h"',
        "partners.ads.deadlines.SHRED",
    ),
    "unknown action in default deadlines": (
        'RESTRICT = "7d"',
        'RESTRICT = "7d"\nSHRED = "1d"',
        "deadlines.actions.SHRED",
    ),
    "an action without a deadline": ('RESTRICT = "7d"\n', "", "deadlines.actions"),
    "missing permissions table": (
        "[permissions]\nsystem = [",
        "[unrelated]\nsystem = [",
        "permissions",
    ),
    "missing partners table": ("[partners.", "[associates.", "partners"),
    "missing purposes table": ("[purposes.", "[intents.", "purposes"),
    "missing version": ('version = "2023-09-01.1"\n', "", "version"),
    "bad partner id": ("[partners.research]", "[partners.Research]", "partners.Research"),
    "TOML syntax error": ('version = "2023-09-01.1"', "version = 2023-09-01.1.", "(syntax)"),
}


@pytest.mark.parametrize(("old", "new", "key"), MUTATIONS.values(), ids=MUTATIONS.keys())
def test_malformed_policy_names_the_offending_key(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    assert old in DEFAULT_TEXT, f"the default policy no longer contains {old!r}"
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_TEXT.replace(old, new), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.key == key
    assert str(info.value).startswith(f"policy: {key}: ")
    assert info.value.reason == "policy"
    assert isinstance(info.value, ConfigurationError)
    assert info.value.retriable is False


def test_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('version = "1"\n[purposes\n', encoding="utf-8")
    with pytest.raises(PolicyError, match=r"policy: \(syntax\): .*broken.toml.*line 2"):
        load_policy(path)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_file(tmp_path: Path, make: str) -> None:
    path = tmp_path / "policy.toml"
    if make == "directory":
        path.mkdir()
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.key == "(file)"
    assert str(path) in str(info.value)


def test_a_partner_added_by_configuration_only(tmp_path: Path) -> None:
    extra = (
        '\n[partners.crm]\ndescription = "CRM vendor"\nreceives = ["account_profile"]\n'
        'purposes = ["marketing_sms"]\n[partners.crm.deadlines]\nERASE = "3d"\n'
    )
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_TEXT + extra, encoding="utf-8")
    policy = load_policy(path)
    assert policy.partners["crm"].receives == {"account_profile"}
    assert policy.partners_processing("marketing_sms") == ("crm",)
    assert policy.deadline_ms("crm", InstructionAction.ERASE) == 3 * DAY_MS
    assert policy.deadline_ms("crm", InstructionAction.RESTRICT) == 7 * DAY_MS


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        (
            'withdrawable = false\nsection = "二.(三)"',
            'withdrawble = false\nsection = "二.(三)"',
            "purposes.order_fulfilment.withdrawble",
        ),
        ("holds_identity = true", "holds_identty = true", "partners.payment.holds_identty"),
        ('duration = "1095d"', 'duraton = "1095d"', "retention.transaction_records.duraton"),
        ('version = "2023-09-01.1"', 'version = "2023-09-01.1"\nversoin = "x"', "versoin"),
    ],
    ids=["purpose", "partner", "retention", "root"],
)
def test_a_misspelt_key_is_rejected_not_ignored(old: str, new: str, key: str) -> None:
    from schemas.errors import PolicyError
    from schemas.policy import parse_policy

    text = (resources.files("schemas") / "policy" / "policy.v1.toml").read_text("utf-8")
    assert old in text
    with pytest.raises(PolicyError) as err:
        parse_policy(tomllib.loads(text.replace(old, new, 1)))
    assert err.value.key == key
    assert "unknown key" in str(err.value)


# ---- delivery: kafka (default) or webhook ---------------------------------------------


def _with_logistics(extra: str) -> str:
    anchor = 'apps = ["carrier-tracking"]\n'
    assert anchor in DEFAULT_TEXT
    return DEFAULT_TEXT.replace(anchor, anchor + extra, 1)


def test_every_default_partner_is_delivered_over_kafka(policy: Policy) -> None:
    for partner in policy.partners.values():
        assert partner.delivery == "kafka"
        assert partner.webhook is False
        assert partner.webhook_url is None


@pytest.mark.parametrize(
    "url",
    [
        "https://carrier.example/consent/hook",
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://[::1]:9/hook",
    ],
)
def test_a_webhook_partner(url: str) -> None:
    from schemas.policy import parse_policy

    text = _with_logistics(f'delivery = "webhook"\nwebhook_url = "{url}"\n')
    partner = parse_policy(tomllib.loads(text)).partners["logistics"]
    assert partner.delivery == "webhook"
    assert partner.webhook is True
    assert partner.webhook_url == url


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ('delivery = "email"\n', "partners.logistics.delivery", "must be one of kafka, webhook"),
        ("delivery = 1\n", "partners.logistics.delivery", "non-empty string"),
        ('delivery = "webhook"\n', "partners.logistics.webhook_url", "needs a webhook_url"),
        (
            'webhook_url = "https://x.example/h"\n',
            "partners.logistics.webhook_url",
            'only for delivery = "webhook"',
        ),
        (
            'delivery = "webhook"\nwebhook_url = "ftp://x.example/h"\n',
            "partners.logistics.webhook_url",
            "not an http(s) URL",
        ),
        (
            'delivery = "webhook"\nwebhook_url = "https:///nohost"\n',
            "partners.logistics.webhook_url",
            "not an http(s) URL",
        ),
        (
            'delivery = "webhook"\nwebhook_url = "http://carrier.example/h"\n',
            "partners.logistics.webhook_url",
            "plain http only to a loopback host",
        ),
        (
            'delivery = "webhook"\nwebhook_url = "https://u:pw@carrier.example/h"\n',
            "partners.logistics.webhook_url",
            "credentials do not belong",
        ),
        (
            'delivery = "webhook"\nwebhook_url = ""\n',
            "partners.logistics.webhook_url",
            "non-empty string",
        ),
        (
            'delivery = "webhook"\nwebhook_secret = "0123456789abcdef0"\n',
            "partners.logistics.webhook_secret",
            "unknown key",
        ),
    ],
    ids=[
        "unknown delivery",
        "delivery not a string",
        "webhook without url",
        "url without webhook",
        "not http",
        "no host",
        "plain http to a remote host",
        "credentials in url",
        "empty url",
        "a secret in the policy",
    ],
)
def test_bad_delivery_names_the_key(extra: str, key: str, problem: str) -> None:
    from schemas.policy import parse_policy

    with pytest.raises(PolicyError) as err:
        parse_policy(tomllib.loads(_with_logistics(extra)))
    assert err.value.key == key
    assert problem in str(err.value)
