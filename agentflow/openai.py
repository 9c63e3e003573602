"""``from agentflow.openai import AsyncOpenAI``: the wrapped clients of :mod:`agentflow.llm`, under the
name of the SDK they mirror."""

from .llm import AsyncOpenAI, OpenAI, Provider, RecordedStream

__all__ = ["AsyncOpenAI", "OpenAI", "Provider", "RecordedStream"]
