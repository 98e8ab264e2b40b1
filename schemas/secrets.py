"""Secret values and the ``name=secret,...`` lists they are configured as.

``Secret`` never shows its value in ``str()``/``repr()``; errors about a list name the entry,
never the secret.
"""

from __future__ import annotations

from typing import Final

from schemas.errors import ConfigurationError

__all__ = ["MIN_TOKEN_CHARS", "Secret", "parse_named_secrets"]

MIN_TOKEN_CHARS: Final = 16


class Secret:
    """A secret value: ``str()``/``repr()`` never show it; ``reveal()`` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value.encode("utf-8")

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def parse_named_secrets(
    text: str, what: str, *, name: str = "name", value: str = "token"
) -> dict[str, Secret]:
    """``name=secret,name=secret`` (commas or newlines) -> {name: secret}, in order; a clear
    error for a missing name, a short secret or a name given twice (never showing a
    secret). ``name`` and ``value`` are the words the errors use."""
    secrets: dict[str, Secret] = {}
    for n, item in enumerate(text.replace("\n", ",").split(","), start=1):
        item = item.strip()
        if not item:
            continue
        label, sep, raw = item.partition("=")
        label, raw = label.strip(), raw.strip()
        if not sep or not label:
            raise ConfigurationError(f"{what}: entry {n} is not {name}={value}")
        if len(raw) < MIN_TOKEN_CHARS:
            raise ConfigurationError(
                f"{what}: the {value} of {label!r} is shorter than {MIN_TOKEN_CHARS} characters"
            )
        if label in secrets:
            raise ConfigurationError(f"{what}: {label!r} is given twice")
        secrets[label] = Secret(raw)
    return secrets
