"""The workflow the browser, CLI and client-state tests watch: an outline streamed to the run's output, then
sections streamed in parallel to ``data`` labels, each an LLM call (retried when the fake server cuts its
stream), with status and progress along the way.

Its output holds exactly the text it streamed (``outline`` and each ``section <n>``), so a client's rendering
can be compared with the output character for character.
"""

from __future__ import annotations

from typing import Any

import agentflow
from agentflow import component, workflow
from agentflow.llm import DEFAULT_RETRY, AsyncOpenAI
from agentflow.llm.providers import configured_providers

llm = AsyncOpenAI()


def _client(
    retry_delay_seconds: float, providers: list[str] | None, name: str | None = None, **step: Any
) -> Any:
    """The LLM client: every configured provider in order, or the ones named (a fallback needs two)."""
    retry = DEFAULT_RETRY.updated(initial_delay_seconds=retry_delay_seconds, max_delay_seconds=5.0)
    client = llm
    if providers:
        by_name = {provider.name: provider for provider in configured_providers()}
        client = AsyncOpenAI(providers=[by_name[name] for name in providers])
    return client.with_step(retry=retry, **({"name": name} if name else {}), **step)


@component
async def write_section(job: dict[str, Any]) -> str:
    writer = _client(
        job["retry_delay_seconds"], job["providers"], stream_to="data", label=f"section {job['number']}"
    )
    stream = await writer.chat.completions.create(
        model=job["model"],
        messages=[{"role": "user", "content": f"Section {job['number']} of a story about {job['topic']}."}],
        stream=True,
    )
    return str(stream.text)


@workflow(name="story")
async def story(
    topic: str,
    sections: int = 3,
    model: str = "fake-model",
    section_model: str = "",
    retry_delay_seconds: float = 0.3,
    providers: list[str] | None = None,
) -> dict[str, Any]:
    """An outline, then ``sections`` sections written at once (by ``section_model``, default ``model``);
    every LLM call streams as it is written, by the ``providers`` named (default: all, in order)."""
    agentflow.status("Outlining", progress=0.0)
    outline = await _client(retry_delay_seconds, providers, name="outline").chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Outline a story about {topic}."}],
        stream=True,
    )
    agentflow.status(f"Writing {sections} sections", progress=0.3)
    jobs = [
        {
            "number": n,
            "topic": topic,
            "model": section_model or model,
            "retry_delay_seconds": retry_delay_seconds,
            "providers": providers,
        }
        for n in range(1, sections + 1)
    ]
    texts = await agentflow.map(write_section, jobs, concurrency=8)
    agentflow.status("Done", progress=1.0)
    return {
        "outline": str(outline.text),
        "sections": {f"section {n}": text for n, text in enumerate(texts, start=1)},
    }
