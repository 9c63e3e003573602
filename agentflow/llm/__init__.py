"""The LLM layer: OpenAI-compatible clients whose calls are durable steps, providers tried in order,
shared rate limits, concurrency limits, usage and cost. See docs/topics/llm.md.

The clients are imported lazily: the runner prices usage with :mod:`agentflow.llm.pricing` in every worker,
and a project that never calls an LLM should not pay for importing the ``openai`` SDK (about 0.3 s).
"""

from typing import TYPE_CHECKING, Any

from .providers import Provider

if TYPE_CHECKING:
    from .calls import IncompleteStream, NoProvider, ProviderFallback, ProviderQuotaExceeded
    from .client import DEFAULT_RETRY, AsyncOpenAI, OpenAI, RecordedStream

__all__ = [
    "DEFAULT_RETRY",
    "AsyncOpenAI",
    "IncompleteStream",
    "NoProvider",
    "OpenAI",
    "Provider",
    "ProviderFallback",
    "ProviderQuotaExceeded",
    "RecordedStream",
]

_LAZY = {
    name: "calls" for name in ("IncompleteStream", "NoProvider", "ProviderFallback", "ProviderQuotaExceeded")
} | {name: "client" for name in ("DEFAULT_RETRY", "AsyncOpenAI", "OpenAI", "RecordedStream")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
