"""Kafka ACLs: derived from the policy (``rules``), applied to the broker by
``consent-stream acl sync`` (``sync``)."""
