"""The HTTP ingestion gateway (``consent-stream gateway``): JSON events in, the same
validated, idempotently produced records as the SDK out. See ``docs/gateway.md``."""

from streams.gateway.app import build_app, run_gateway
from streams.gateway.settings import GatewayCaller, GatewaySettings, parse_gateway_tokens

__all__ = [
    "GatewayCaller",
    "GatewaySettings",
    "build_app",
    "parse_gateway_tokens",
    "run_gateway",
]
