"""Simulated partners for the demo and the tests: the Kafka partner (``partner``) and the
webhook partner (``webhook``) with its callbacks to the gateway (``callback``)."""
