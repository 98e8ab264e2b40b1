"""Consumers of Consent Stream: the partner SDK and the consent store readers."""
