"""OpenAI-compatible providers, tried in order: the first that answers serves the call."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..conf import agentflow_settings
from ..ratelimit import limit_key

_FIELDS = {"name", "base_url", "api_key", "organization", "models", "default_headers", "timeout_seconds"}


@dataclass(frozen=True, slots=True)
class Provider:
    """One OpenAI-compatible endpoint.

    ``models`` maps the model a call asks for to this provider's name for it (``{"gpt-4o-mini":
    "gpt-4o-mini-2024-07-18"}``); a provider with ``models`` serves only those, one without serves any
    model under its requested name. ``api_key`` is never logged, stored or put in an event: rate limits tell
    keys apart by a hash of it.
    """

    name: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    organization: str | None = None
    models: Mapping[str, str] | None = None
    default_headers: Mapping[str, str] | None = field(default=None, repr=False)
    # Seconds each request may take (the SDK's `timeout`; its default is 600): a provider that hangs is then
    # left for the next one after this long.
    timeout_seconds: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or ":" in self.name:
            raise TypeError(f"a provider's name must be a non-empty str without ':', not {self.name!r}")
        for option in ("base_url", "api_key", "organization"):
            value = getattr(self, option)
            if value is not None and not isinstance(value, str):
                # The value itself is not shown: it may be an API key.
                raise TypeError(
                    f"provider {self.name!r}: {option} must be a str or None, not {type(value).__name__}"
                )
        if self.base_url is not None and urlsplit(self.base_url).scheme not in ("http", "https"):
            raise TypeError(f"provider {self.name!r}: base_url must be an http(s) URL, not {self.base_url!r}")
        if self.models is not None:
            if not isinstance(self.models, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in self.models.items()
            ):
                raise TypeError(
                    f"provider {self.name!r}: models must map requested model names to the provider's, "
                    f"not {self.models!r}"
                )
            object.__setattr__(self, "models", dict(self.models))
        if self.default_headers is not None:
            object.__setattr__(self, "default_headers", dict(self.default_headers))
        timeout = self.timeout_seconds
        if timeout is not None and (
            not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0
        ):
            raise TypeError(
                f"provider {self.name!r}: timeout_seconds must be a number > 0 or None, not {timeout!r}"
            )

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.base_url,
                self.api_key,
                self.organization,
                None if self.models is None else tuple(sorted(self.models.items())),
                None if self.default_headers is None else tuple(sorted(self.default_headers.items())),
                self.timeout_seconds,
            )
        )

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    def model_for(self, model: str) -> str:
        return model if self.models is None else self.models[model]

    def limit_key(self, model: str) -> str:
        """Its rate-limit key: ``"<name>:<model>:<hash of the key>"`` (see ``AGENTFLOW["RATE_LIMITS"]``)."""
        return limit_key(self.name, model, self.api_key)

    @classmethod
    def parse(cls, value: Any) -> Provider:
        if isinstance(value, Provider):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"a provider is a Provider or a dict, not {type(value).__name__}")
        unknown = set(value) - _FIELDS
        if unknown:
            raise TypeError(f"unknown provider options {sorted(unknown)}; known: {sorted(_FIELDS)}")
        if "name" not in value:
            raise TypeError(f"a provider needs a 'name': {sorted(value)}")
        return cls(**value)


def parse_providers(value: Iterable[Any]) -> tuple[Provider, ...]:
    """A tuple of providers from Providers or dicts; a TypeError names the first mistake."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"providers must be a list of Provider or dict, not {type(value).__name__}")
    providers = tuple(Provider.parse(item) for item in value)
    if not providers:
        raise TypeError("providers must not be empty")
    names = [provider.name for provider in providers]
    if len(set(names)) != len(names):
        raise TypeError(f"provider names must be unique, got {names}")
    return providers


def from_environment() -> Provider:
    """The provider the openai SDK would use: ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``."""
    return Provider(
        name="openai",
        base_url=os.environ.get("OPENAI_BASE_URL") or None,
        api_key=os.environ.get("OPENAI_API_KEY") or None,
        organization=os.environ.get("OPENAI_ORG_ID") or None,
    )


def configured_providers() -> tuple[Provider, ...]:
    """``AGENTFLOW["LLM_PROVIDERS"]``, or the environment's provider when that setting is None (or when
    Django is not configured: a plain script using the client outside any workflow)."""
    from django.conf import settings

    if not settings.configured:
        return (from_environment(),)
    value = agentflow_settings.llm_providers
    if value is None:
        return (from_environment(),)
    return parse_providers(value)
