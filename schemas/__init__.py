"""Contracts of Consent Stream: Avro schemas, domain objects, serde, policy, settings.

The leaf package: it depends on no other package of the project.
"""
