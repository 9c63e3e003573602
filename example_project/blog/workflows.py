"""The example workflow: an "agent" that researches a topic, has an LLM outline a post, asks a person to
approve the outline (or change its headings), then drafts every section at once, streaming each section's
tokens as they arrive.

The approval is ``agentflow.wait_for_input_async``: the run is suspended (its worker free) until someone
answers ``{"approved": true}`` over REST (``POST /api/runs/<id>/input/outline/``), in the admin's run page,
on the terminal of ``python -m example_project``, or in the browser. ``review=false`` skips it.

Every LLM call goes through agentflow's wrapped OpenAI client (:mod:`agentflow.llm`), so inside the run each
call is a durable step: retried on 429s and provider errors, checkpointed (a recovered or resumed run does not
pay for it twice), its tokens and cost recorded on the step and summed on the run, and the run stopped if it
reaches its budget. The provider is ``AGENTFLOW["LLM_PROVIDERS"]`` (example_project/settings.py): the real
OpenAI API with ``OPENAI_API_KEY``, or the fake OpenAI-compatible server ``python -m example_project`` starts
without one.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from django.conf import settings
from pydantic import BaseModel, Field, StringConstraints

import agentflow
from agentflow import component, workflow
from agentflow.llm import AsyncOpenAI

# One client for the whole app: providers, retries and limits come from the settings, read at each call.
llm = AsyncOpenAI()


class Section(BaseModel):
    heading: str
    text: str


class Post(BaseModel):
    title: str
    model: str
    sections: list[Section]
    words: int
    # False when the person reviewing the outline rejected it (or did not answer in time): nothing was drafted.
    approved: bool = True


# A person's answer to "approve this outline?". Module-level, so the API validates answers with this very
# model. Its docstring is the answer schema's description, which forms and the CLI show to the person.
class OutlineReview(BaseModel):
    """Approve the outline, as it is or with new headings, to have its sections drafted; else the post ends."""

    approved: bool
    headings: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]] | None = Field(
        default=None, min_length=1, max_length=12
    )
    notes: str = ""


def _title(topic: str) -> str:
    """Each word capitalised, the rest left as written: "durable AI agents" -> "Durable AI Agents"."""
    return " ".join(word[:1].upper() + word[1:] for word in topic.split())


@component
async def research(topic: str, angle: str) -> str:
    await asyncio.sleep(0.3)  # stands in for a search API call
    return f"{angle} of {topic}"


def headings_from(text: str, count: int) -> list[str]:
    """``count`` distinct headings from an outline: one per line as asked; a reply that ignored the format
    (the fake server answers with one line of words) is cut into ``count`` even parts instead."""
    lines = [re.sub(r"^\s*(?:[-*#]+|\d+[.)])\s*", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < count:
        words = text.split() or ["untitled"]
        size = max(1, len(words) // count)
        parts = [words[i * size : (i + 1) * size] or [words[i % len(words)]] for i in range(count)]
        lines = [" ".join(part).capitalize() for part in parts]
    headings: list[str] = []
    for line in lines[:count]:  # distinct, so no two sections get the same prompt
        headings.append(line if line not in headings else f"{line} ({len(headings) + 1})")
    return headings


@component
async def draft(job: dict[str, str | int]) -> str:
    """Write one section, streaming its tokens to the run's subscribers as ``data`` events labelled
    ``section <n>`` (several sections are drafted at once, so their text must not interleave in one stream)."""
    writer = llm.with_step(stream_to="data", label=f"section {job['number']}")
    stream = await writer.chat.completions.create(
        model=job["model"],
        messages=[
            {"role": "system", "content": "You write clear, concrete technical blog posts."},
            {
                "role": "user",
                "content": f"Write the section {job['heading']!r} of a blog post about {job['topic']}, "
                f"in about {job['words']} words of plain prose, without a heading.",
            },
        ],
        max_tokens=4 * int(job["words"]) + 64,
        stream=True,
    )
    return stream.text.strip()


@workflow(name="blog-post", budget={"usd": 0.05})
async def blog_post(
    topic: str,
    words_per_section: int = 20,
    sections: int = 5,
    model: str = "",
    review: bool = True,
    review_timeout_seconds: float = 24 * 3600,
) -> Post:
    """Research a topic, have an LLM outline a post, ask a person to approve the outline, then draft every
    section at once, streaming them."""
    model = model or getattr(settings, "EXAMPLE_LLM_MODEL", "gpt-4o-mini")
    agentflow.status("Researching", progress=0.0)
    angles = ["history", "state of the art", "open problems"]
    # Concurrent steps: ids are assigned at call time, so replay after a crash matches each to its checkpoint.
    notes = await asyncio.gather(*(research.retry(max_attempts=3)(topic, angle) for angle in angles))

    agentflow.status("Outlining", progress=0.2)
    # The outline's tokens stream to the run's output (output.delta events) as the model writes them.
    outline = await llm.with_step(name="outline").chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": f"Outline a blog post about {topic} in exactly {sections} section headings, one "
                f"per line, nothing else. Notes: {'; '.join(notes)}.",
            }
        ],
        max_tokens=16 * sections + 32,
        stream=True,
    )
    agentflow.stream_output("\n")
    headings = headings_from(outline.text, sections)
    agentflow.publish("outline", {"headings": headings})

    if review:
        # The run is handed back here: no worker waits for the person, for minutes or for days.
        agentflow.status("Waiting for approval of the outline", progress=0.3)
        try:
            decision = await agentflow.wait_for_input_async(
                "outline",
                schema=OutlineReview,
                prompt="Approve this outline? " + " / ".join(headings),
                timeout_seconds=review_timeout_seconds,
            )
        except agentflow.InputTimeout:
            decision = OutlineReview(approved=False, notes="no answer in time")
        if not decision.approved:
            agentflow.status("Outline rejected: nothing drafted", progress=1.0)
            return Post(title=_title(topic), model=model, sections=[], words=0, approved=False)
        if decision.headings and decision.headings != headings:
            headings = decision.headings
            agentflow.publish("outline", {"headings": headings})  # the pages head the sections with these

    agentflow.status(f"Drafting {len(headings)} sections at once", progress=0.4)
    jobs = [
        {"number": i + 1, "heading": h, "topic": topic, "words": words_per_section, "model": model}
        for i, h in enumerate(headings)
    ]
    texts = await agentflow.map(draft, jobs, concurrency=8)
    agentflow.status("Done", progress=1.0)
    parts = [Section(heading=h, text=t) for h, t in zip(headings, texts, strict=True)]
    return Post(title=_title(topic), model=model, sections=parts, words=sum(len(t.split()) for t in texts))
