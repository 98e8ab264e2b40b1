"""``Secret``: a value that never shows itself in logs, reprs or tracebacks."""

from __future__ import annotations

__all__ = ["Secret"]


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
