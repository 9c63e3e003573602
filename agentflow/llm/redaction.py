"""Secrets out of provider errors, where they enter agentflow.

A provider's error message is the least trusted text agentflow keeps: some echo the API key they were sent
("Incorrect API key provided: ...", a proxy quoting the request's ``Authorization`` header). Such a message
would travel from the exception to the step's checkpoint, the ``step.retrying`` and ``run.failed`` events,
the run's error in the REST API and the admin, the logs and Redis. So the LLM layer scrubs every exception
a provider call raises, in place, before anything reads it (:func:`redact_error`, called once per failed
request by :mod:`agentflow.llm.calls`): what comes after sees only the redacted text.

What is replaced by ``[redacted]``: the configured API keys (and the values of secret-looking headers
configured for the providers) wherever they appear, and anything shaped like a credential: ``Bearer <...>``
or ``Basic <...>``, ``sk-<...>`` keys, ``api_key=<...>``/``"api-key": "<...>"`` pairs. Configured values
shorter than :data:`MIN_SECRET_LENGTH` characters are left alone: replacing them would mangle ordinary words
and they protect nothing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Any

from .providers import Provider

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 8

_SECRET_HEADER = re.compile(r"(?i)auth|key|token|secret|password")
_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{4,}"), rf"\1\2{REDACTED}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), REDACTED),
    (
        re.compile(
            r"(?i)\b((?:api[-_]?key|access[-_]?token|secret[-_]?key|password)[\"']?\s*[:=]\s*[\"']?)"
            r"[^\s\"',;&}]{6,}"
        ),
        rf"\1{REDACTED}",
    ),
)


def secrets_of(providers: Iterable[Provider]) -> tuple[str, ...]:
    """The configured secrets of ``providers``: API keys, and values of headers named like credentials."""
    found: set[str] = set()
    for provider in providers:
        if provider.api_key:
            found.add(provider.api_key)
        for name, value in (provider.default_headers or {}).items():
            if _SECRET_HEADER.search(name) and isinstance(value, str):
                found.add(value)
    # Longest first: a key that contains another is replaced whole.
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secrets and anything shaped like a credential replaced by ``[redacted]``."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redacted(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {key: _redacted(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redacted(item, secrets) for item in value)
    return value


def redact_error(exc: BaseException, secrets: Iterable[str] = ()) -> BaseException:
    """Scrub ``exc`` in place, and the exceptions it was raised from: its message (``args``), and the
    ``message`` and ``body`` (the provider's parsed error body) of the SDK's errors. Returns ``exc``."""
    known = tuple(secrets)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(_redacted(arg, known) for arg in current.args)
        for attribute in ("message", "body"):
            value = getattr(current, attribute, None)
            if value is not None:
                # A read-only property's value comes from args, redacted above.
                with contextlib.suppress(AttributeError):
                    setattr(current, attribute, _redacted(value, known))
        current = current.__cause__ or current.__context__
    return exc
