"""A Faust transport whose producer is idempotent (``enable_idempotence``, ``acks=all``).

Faust's aiokafka producer turns idempotence on only inside transactions; the worker's
sends (instructions, state, ledger) get it here, under the broker scheme
``kafka-idempotent://``, registered by ``register()`` before the app is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from faust.transport import drivers
from faust.transport.drivers import aiokafka as aiokafka_driver

__all__ = ["SCHEME", "IdempotentProducer", "Transport", "register"]

SCHEME: Final = "kafka-idempotent"


class IdempotentProducer(aiokafka_driver.Producer):
    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class Transport(aiokafka_driver.Transport):
    Producer = IdempotentProducer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
