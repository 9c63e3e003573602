"""The example workflow: an "agent" that researches a topic, outlines a post and writes it section by
section, streaming the text as it goes. There is no LLM in this example: `draft` stands in for one (a later
version calls an OpenAI-compatible server through agentflow's wrapped client)."""

from __future__ import annotations

import asyncio
import hashlib

from pydantic import BaseModel

import agentflow
from agentflow import component, workflow


class Post(BaseModel):
    title: str
    sections: list[str]
    words: int


@component
async def research(topic: str, angle: str) -> str:
    await asyncio.sleep(0.3)  # a search API call
    return f"{angle} of {topic}"


@component
def outline(topic: str, notes: list[str]) -> list[str]:
    return [f"Why {topic} matters", *(note.capitalize() for note in notes), "What to do next"]


@component
async def draft(heading: str, words: int) -> str:
    # Deterministic pseudo-text, streamed word by word like an LLM's tokens.
    seed = hashlib.sha256(heading.encode()).hexdigest()
    vocabulary = ["agents", "durable", "streams", "retry", "workers", "checkpoints", "users", "latency"]
    text = []
    for index in range(words):
        word = vocabulary[int(seed[index % len(seed)], 16) % len(vocabulary)]
        text.append(word)
        agentflow.stream_output(word + " ")
        await asyncio.sleep(0.01)
    agentflow.stream_output("\n\n")
    return " ".join(text)


@workflow
async def blog_post(topic: str, words_per_section: int = 20) -> Post:
    """Research a topic, outline a post and write it, streaming every section."""
    agentflow.status("Researching", progress=0.0)
    angles = ["history", "state of the art", "open problems"]
    # Concurrent steps: ids are assigned at call time, so replay after a crash matches each to its checkpoint.
    notes = await asyncio.gather(*(research.retry(max_attempts=3)(topic, angle) for angle in angles))
    agentflow.status("Outlining", progress=0.3)
    headings = outline(topic, notes)
    agentflow.publish("outline", {"headings": headings})
    sections: list[str] = []
    for index, heading in enumerate(headings):
        agentflow.status(f"Writing: {heading}", progress=0.3 + 0.7 * index / len(headings))
        agentflow.stream_output(f"## {heading}\n\n")
        sections.append(await draft.timeout(60)(heading, words_per_section))
    agentflow.status("Done", progress=1.0)
    return Post(title=topic.title(), sections=sections, words=sum(len(s.split()) for s in sections))
