"""The LLM layer: OpenAI-compatible clients whose calls are durable steps, providers tried in order,
shared rate limits, concurrency limits, usage and cost. See docs/topics/llm.md."""

from .calls import IncompleteStream, NoProvider, ProviderQuotaExceeded
from .client import DEFAULT_RETRY, AsyncOpenAI, OpenAI, RecordedStream
from .providers import Provider

__all__ = [
    "DEFAULT_RETRY",
    "AsyncOpenAI",
    "IncompleteStream",
    "NoProvider",
    "OpenAI",
    "Provider",
    "ProviderQuotaExceeded",
    "RecordedStream",
]
