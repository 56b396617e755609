"""`Secret`: a configured secret (a token, a password, a key) that never shows itself."""

from __future__ import annotations

from rules.config import redaction

# The shortest secret the service accepts where the admin makes one up ([web] tokens, a webhook's
# signing secret, the [ingest] bearer secret): shorter ones can be guessed from outside.
MIN_SECRET_CHARS = 16


class Secret:
    """A secret string. str() and repr() never reveal it; use .reveal().

    Making one registers the value with rules.config.redaction, so it is masked in every log line,
    error message and notice from then on, in any encoding.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        redaction.register(value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__
