"""The exceptions of Consent Stream: one root, the tree below it.

::

    ConsentStreamError                  every error this project raises
    ├── ConfigurationError              bad settings; raised at start-up, never retried
    │   ├── PolicyError                 the policy file is malformed (names the key)
    │   ├── UnknownTopicError           a topic of the contract does not exist
    │   └── AccessDeniedError           the broker refused the credentials or the operation
    ├── ContractError                   a record or event breaks the contract (bad input)
    │   ├── DecodeError                 bytes that cannot be decoded
    │   │   ├── TruncatedRecordError    shorter than its framing says
    │   │   ├── UnknownSchemaError      unknown fingerprint, schema id or magic bytes
    │   │   └── SchemaMismatchError     bytes or a record that do not match the schema
    │   ├── ValidationError             a decodable event that is invalid
    │   │   ├── UnknownPurposeError     purpose not in the policy
    │   │   └── NonWithdrawableError    withdrawal of a purpose needed for basic functions
    │   ├── OversizedRecordError        larger than the configured maximum
    │   ├── StateTooLargeError          would grow its subject's state past what one
    │   │   │                           changelog record holds
    │   │   └── ReferencesDroppedError  a data.shared kept without its references (they
    │   │                               would not fit): the record is dead-lettered too
    │   └── UnknownSubjectKeyError      a ref or digest under a key id not configured here
    ├── FetchError                      the worker's record fetching failed (it stops; its
    │                                   restart resumes from the committed offsets)
    ├── MembershipError                 the worker's part in its consumer group ended
    │                                   (it stops: without it, it processes nothing)
    └── TransientError                  retriable: the operation may succeed later
        ├── PublishError                the broker did not acknowledge a record
        ├── QueueFullError              the producer's local queue is full (try again soon)
        ├── BrokerUnavailableError      the Kafka broker did not answer
        └── StoreUnavailableError       the consent store (Redis) did not answer
            └── StoreReplicasMissingError
                                        it answered, but fewer replicas than required
                                        had the writes in time

Every error carries a short machine-readable ``reason`` (used in dead-letter headers and
metric labels) and ``retriable`` says whether trying again can help.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "ConsentStreamError",
    "ContractError",
    "DecodeError",
    "FetchError",
    "MembershipError",
    "NonWithdrawableError",
    "OversizedRecordError",
    "PolicyError",
    "PublishError",
    "QueueFullError",
    "ReferencesDroppedError",
    "SchemaMismatchError",
    "StateTooLargeError",
    "StoreReplicasMissingError",
    "StoreUnavailableError",
    "TransientError",
    "TruncatedRecordError",
    "UnknownPurposeError",
    "UnknownSchemaError",
    "UnknownSubjectKeyError",
    "UnknownTopicError",
    "ValidationError",
]


class ConsentStreamError(Exception):
    """Root of every error raised by Consent Stream."""

    reason = "error"
    retriable = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigurationError(ConsentStreamError):
    """Settings are missing or invalid; fix the configuration and restart."""

    reason = "configuration"


class PolicyError(ConfigurationError):
    """The policy file is malformed; ``key`` names the offending entry."""

    reason = "policy"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"policy: {key}: {problem}")
        self.key = key


class UnknownTopicError(ConfigurationError):
    """A topic the command needs does not exist (created by ``make stack`` or the worker)."""

    reason = "unknown_topic"


class AccessDeniedError(ConfigurationError):
    """The broker refused the client's credentials or one of its operations (ACLs)."""

    reason = "access_denied"


class ContractError(ConsentStreamError):
    """Input breaks a published contract; it will never succeed as it is."""

    reason = "contract"


class DecodeError(ContractError):
    """Bytes that cannot be decoded into a record."""

    reason = "undecodable"


class TruncatedRecordError(DecodeError):
    """The bytes end before their framing says they should."""

    reason = "truncated"


class UnknownSchemaError(DecodeError):
    """Unknown magic bytes, fingerprint or registry schema id."""

    reason = "unknown_schema"


class SchemaMismatchError(DecodeError):
    """Bytes or a record that do not match the writer's schema."""

    reason = "schema_mismatch"


class ValidationError(ContractError):
    """A decodable event that is invalid (missing or malformed field, wrong kind)."""

    reason = "invalid_field"

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None):
        super().__init__(message, reason=reason)
        self.field = field


class UnknownPurposeError(ValidationError):
    """The purpose is not defined in the policy."""

    reason = "unknown_purpose"


class NonWithdrawableError(ValidationError):
    """Withdrawal of a purpose needed for basic functions (order fulfilment, payment...)."""

    reason = "not_withdrawable"


class OversizedRecordError(ContractError):
    """The record is larger than the configured maximum size."""

    reason = "oversized"


class StateTooLargeError(ContractError):
    """The event would grow its subject's state (held in the worker, written whole to the
    table's changelog on every change) past the size it may have: it is refused, and the
    state stays as it was (``streams.events.state_limit``)."""

    reason = "state_too_large"


class ReferencesDroppedError(StateTooLargeError):
    """A data.shared whose references would grow its subject's state past the lineage's
    share of it: the share is applied without them (its partner, categories and times are
    kept, so a later deletion still reaches that partner) and the record goes to the
    dead-letter topic as it came, so the references are not lost."""

    reason = "references_dropped"


class UnknownSubjectKeyError(ContractError):
    """A pseudonymous ref or digest names a subject key id that is not configured here."""

    reason = "unknown_subject_key"


class FetchError(ConsentStreamError):
    """The librdkafka consumer behind the worker's fetches failed (a fatal error, an
    assignment refused); not retriable in place."""

    reason = "fetch_failed"


class MembershipError(ConsentStreamError):
    """aiokafka's group coordination ended with an error: the worker is in no group and
    is assigned nothing, so it stops rather than run idle (a second worker with the same
    ``CONSENT_STREAM_GROUP_INSTANCE_ID`` was one cause seen); not retriable in place."""

    reason = "group_membership_ended"


class TransientError(ConsentStreamError):
    """Retriable: a dependency did not answer; the same call may succeed later."""

    reason = "transient"
    retriable = True


class PublishError(TransientError):
    """The broker did not acknowledge a record."""

    reason = "publish_failed"


class QueueFullError(TransientError):
    """The producer's local queue is full: nothing was sent; try again in a moment."""

    reason = "queue_full"


class BrokerUnavailableError(TransientError):
    """The Kafka broker did not answer (down, unreachable, or not started yet)."""

    reason = "broker_unavailable"


class StoreUnavailableError(TransientError):
    """The consent store (Redis) did not answer."""

    reason = "store_unavailable"


class StoreReplicasMissingError(StoreUnavailableError):
    """The primary took the writes, but fewer replicas than
    ``CONSENT_STREAM_REDIS_MIN_REPLICAS`` had them in time: they do not count yet."""

    reason = "store_replicas_missing"
