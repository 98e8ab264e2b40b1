"""Subject keys: settings (key ids, accepted keys, clear errors that never show a key) and
the refs and digests that carry a key id and still verify after a rotation."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from schemas.errors import ConfigurationError, ContractError, UnknownSubjectKeyError
from schemas.settings import ENV_PREFIX, Secret, Settings, SubjectKeys
from streams.pseudonyms import Pseudonyms

OLD = "old-subject-key-0123456789"
NEW = "new-subject-key-9876543210"
SUBJECT = "buyer-4711@example.com"
KEY = ENV_PREFIX + "SUBJECT_KEY"
KEY_ID = ENV_PREFIX + "SUBJECT_KEY_ID"
ACCEPTED = ENV_PREFIX + "SUBJECT_KEYS_ACCEPTED"
LEGACY = ENV_PREFIX + "SUBJECT_KEY_LEGACY_ID"


def keys(env: dict[str, str]) -> SubjectKeys:
    return Settings.from_env(env).subject_keys


BEFORE = Pseudonyms(SubjectKeys.single(Secret(OLD), "k1"))  # before the rotation
AFTER = Pseudonyms(keys({KEY: NEW, KEY_ID: "k2", ACCEPTED: f"k1={OLD}"}))  # during it
DONE = Pseudonyms(keys({KEY: NEW, KEY_ID: "k2"}))  # after: k1 no longer accepted


# ---- settings -------------------------------------------------------------------------


def test_one_key_gets_the_default_id_and_is_the_legacy_key() -> None:
    k = keys({KEY: OLD})
    assert (k.current_id, k.legacy_id, k.rotating) == ("k1", "k1", False)
    assert k.current.reveal() == OLD.encode() and k.ids() == ("k1",)


def test_the_development_key_has_the_id_dev() -> None:
    k = keys({ENV_PREFIX + "DEV_MODE": "1"})
    assert (k.current_id, k.legacy_id) == ("dev", "dev")
    assert k.current.reveal() == SubjectKeys.development().current.reveal()
    assert Settings().subject_keys.current_id == "dev"


def test_a_rotation_names_the_current_key_and_the_accepted_ones_in_order() -> None:
    k = keys({KEY: NEW, KEY_ID: "2025-q3", ACCEPTED: f"k1={OLD}\n k0 = {'z' * 16} ,", LEGACY: "k0"})
    assert k.current_id == "2025-q3" and k.rotating
    assert k.ids() == ("2025-q3", "k1", "k0") and k.legacy_id == "k0"
    assert k.key("k1").reveal() == OLD.encode()
    assert OLD not in repr(k) and NEW not in repr(k) and OLD not in repr(Settings(subject_keys=k))


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({KEY: NEW, ACCEPTED: OLD}, f"{ACCEPTED}: entry 1 is not id=key"),
        ({KEY: NEW, ACCEPTED: f"k0={OLD},={OLD}"}, "entry 2 is not id=key"),
        ({KEY: NEW, ACCEPTED: "k0=short"}, "the key of 'k0' is shorter than 16 characters"),
        ({KEY: NEW, ACCEPTED: f"k0={OLD},k0={'z' * 16}"}, "'k0' is given twice"),
        ({KEY: NEW, ACCEPTED: f"k1={OLD}"}, "'k1' is the id of the current key"),
        ({KEY: NEW, KEY_ID: "k9", ACCEPTED: f"k9={OLD}"}, "'k9' is the id of the current key"),
        ({KEY: NEW, ACCEPTED: f"K0={OLD}"}, "key id 'K0' is not 1 to 16 of a-z, 0-9 and '-'"),
        ({KEY: NEW, KEY_ID: "key:1"}, f"{KEY_ID}: key id 'key:1' is not"),
        ({KEY: NEW, KEY_ID: "x" * 17}, "is not 1 to 16"),
        ({KEY: NEW, LEGACY: "old key"}, f"{LEGACY}: key id 'old key' is not"),
        ({KEY: NEW, ACCEPTED: f"k0={NEW}"}, "'k1' and 'k0' are the same key under two ids"),
        ({KEY: "short"}, f"{KEY} is shorter than 16 characters"),
        ({ACCEPTED: f"k0={OLD}"}, f"{KEY} is not set"),
        ({ENV_PREFIX + "DEV_MODE": "1", KEY_ID: "k2"}, f"{KEY_ID} is set but {KEY} is not"),
    ],
)
def test_bad_subject_key_settings_are_refused_without_showing_a_key(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)) as refused:
        keys(env)
    assert OLD not in str(refused.value) and NEW not in str(refused.value)


# ---- refs and digests -----------------------------------------------------------------


def test_refs_and_digests_carry_the_current_key_id() -> None:
    assert re.fullmatch(r"k1:[0-9a-f]{64}", BEFORE.subject_ref("ads", SUBJECT))
    assert re.fullmatch(r"k1:[0-9a-f]{64}", BEFORE.evidence_digest(SUBJECT))
    assert re.fullmatch(r"k1:[0-9a-f]{32}", BEFORE.refs_digest([("order_no", "O-1")]))
    assert BEFORE.refs_digest([]) == ""
    assert SUBJECT not in BEFORE.subject_ref("ads", SUBJECT)


def test_a_new_ref_uses_the_new_key_and_id() -> None:
    old, new = BEFORE.subject_ref("ads", SUBJECT), AFTER.subject_ref("ads", SUBJECT)
    assert new.startswith("k2:") and new == DONE.subject_ref("ads", SUBJECT)
    assert new.partition(":")[2] != old.partition(":")[2]
    assert AFTER.key_id_of(new) == "k2" and AFTER.key_id_of(old) == "k1"
    assert AFTER.evidence_digest(SUBJECT).startswith("k2:")


def test_a_ref_made_with_the_old_key_still_matches_after_the_rotation() -> None:
    old = BEFORE.subject_ref("ads", SUBJECT)
    assert AFTER.matches("ads", SUBJECT, old)
    assert AFTER.matches("ads", SUBJECT, AFTER.subject_ref("ads", SUBJECT))
    assert not AFTER.matches("ads", SUBJECT + "x", old)  # another subject
    assert not AFTER.matches("payment", SUBJECT, old)  # refs are partner-scoped


def test_digests_made_with_the_old_key_still_verify_after_the_rotation() -> None:
    digest = BEFORE.evidence_digest(SUBJECT)
    assert AFTER.verify_evidence(SUBJECT, digest)
    assert not AFTER.verify_evidence("someone-else", digest)
    refs = [("order_no", "O-1"), ("waybill_no", "W-1")]
    assert AFTER.verify_refs_digest(refs, BEFORE.refs_digest(refs))
    assert AFTER.verify_refs_digest(list(reversed(refs)), AFTER.refs_digest(refs))
    assert not AFTER.verify_refs_digest(refs[:1], BEFORE.refs_digest(refs))
    assert AFTER.verify_refs_digest([], "") and not AFTER.verify_refs_digest(refs, "")


def test_an_unknown_key_id_is_a_clear_error_not_a_mismatch() -> None:
    old = BEFORE.subject_ref("ads", SUBJECT)
    with pytest.raises(UnknownSubjectKeyError, match=r"subject key 'k1' is not configured") as e:
        DONE.matches("ads", SUBJECT, old)
    assert isinstance(e.value, ContractError) and e.value.reason == "unknown_subject_key"
    assert "accepted: k2" in str(e.value) and OLD not in str(e.value)
    with pytest.raises(UnknownSubjectKeyError):
        DONE.verify_evidence(SUBJECT, BEFORE.evidence_digest(SUBJECT))


def test_a_value_not_of_the_form_does_not_match() -> None:
    ref = AFTER.subject_ref("ads", SUBJECT)
    for bad in ("", "K2:" + ref[3:], "k2:" + ref[3:].upper(), ref + "0", "k2::" + ref[3:]):
        assert not AFTER.matches("ads", SUBJECT, bad)
    assert AFTER.key_id_of("Not A Key:abc") is None


def _legacy_ref(key: str, partner: str, subject: str) -> str:
    """A ref as made before key ids existed: bare hex, same derivation."""
    k_partner = hmac.new(key.encode(), f"partner:{partner}".encode(), hashlib.sha256).digest()
    return hmac.new(k_partner, subject.encode(), hashlib.sha256).hexdigest()


def test_a_legacy_value_without_key_id_is_taken_as_made_with_the_legacy_key() -> None:
    legacy = _legacy_ref(OLD, "ads", SUBJECT)
    # the same key gives the same hex: only the key id prefix is new
    assert BEFORE.subject_ref("ads", SUBJECT) == "k1:" + legacy
    assert BEFORE.matches("ads", SUBJECT, legacy) and BEFORE.key_id_of(legacy) == "k1"
    assert AFTER.matches("ads", SUBJECT, legacy)  # legacy id k1 is still accepted
    legacy_digest = BEFORE.evidence_digest(SUBJECT).partition(":")[2]
    assert AFTER.verify_evidence(SUBJECT, legacy_digest)
    with pytest.raises(UnknownSubjectKeyError, match="'k1'"):
        DONE.matches("ads", SUBJECT, legacy)  # the legacy key was retired
    # a deployment whose first key had another id says so with the legacy id
    other = Pseudonyms(keys({KEY: NEW, KEY_ID: "k2", ACCEPTED: f"first={OLD}", LEGACY: "first"}))
    assert other.matches("ads", SUBJECT, legacy) and other.key_id_of(legacy) == "first"
    assert not Pseudonyms(keys({KEY: OLD, LEGACY: "k1"})).matches("ads", SUBJECT + "x", legacy)
