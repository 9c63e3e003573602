"""Workflows of the wait tests: human input (tests/integration/test_inputs.py, tests/api/test_inputs.py) and
child workflows (tests/integration/test_children.py). Side effects are counted in Redis (``count``)."""

from __future__ import annotations

import time

from pydantic import BaseModel

import agentflow
from agentflow import InputTimeout, StepFailed, component, workflow

from .workflows import count


class Decision(BaseModel):
    approved: bool
    notes: str = ""


@component
def once(tag: str, name: str) -> str:
    count(tag, name)
    return name


@component
def costly(tag: str, name: str, tokens: int) -> str:
    count(tag, name)
    agentflow.record_usage(
        "test-model", prompt_tokens=tokens, completion_tokens=tokens, cost_usd=tokens / 1e6
    )
    return name


@workflow(name="asks-approval")
def asks_approval(tag: str, timeout_seconds: float | None = None) -> dict:
    """Draft, ask a person to approve it, then publish; a time-out publishes nothing."""
    draft = once(tag, "draft")
    try:
        decision = agentflow.wait_for_input(
            "approve", schema=Decision, prompt=f"Publish {draft}?", timeout_seconds=timeout_seconds
        )
    except InputTimeout:
        return {"published": False, "reason": "timed out", "after": once(tag, "after-timeout")}
    return {"published": decision.approved, "notes": decision.notes, "after": once(tag, "after")}


@workflow(name="asks-async")
async def asks_async(tag: str) -> list:
    """Two questions at once from an async workflow; the run goes on once both are answered."""
    import asyncio

    return list(
        await asyncio.gather(
            agentflow.wait_for_input_async("colour", schema={"type": "string", "enum": ["red", "blue"]}),
            agentflow.wait_for_input_async("size", schema={"type": "integer", "minimum": 1}),
        )
    )


@component
def slow_step(tag: str, index: int, delay_seconds: float) -> int:
    time.sleep(delay_seconds)
    count(tag, f"child-{index}")
    return index


@workflow(name="slow-child")
def slow_child(tag: str, steps: int = 5, delay_seconds: float = 0.3, tokens: int = 0) -> int:
    total = sum(slow_step(tag, i, delay_seconds) for i in range(steps))
    if tokens:
        costly(tag, "child-cost", tokens)
    return total


@workflow(name="failing-child")
def failing_child(tag: str) -> None:
    once(tag, "failing-child")
    raise ValueError("the child broke")


@workflow(name="parent")
def parent(
    tag: str, child: str = "slow-child", steps: int = 5, delay_seconds: float = 0.3, tokens: int = 0
) -> dict:
    """A step, a child run, a step: the child's failure is caught."""
    before = once(tag, "parent-before")
    child_input: dict = {"tag": tag}
    if child == "slow-child":
        child_input.update(steps=steps, delay_seconds=delay_seconds, tokens=tokens)
    if tokens:
        costly(tag, "parent-cost", tokens)
    try:
        result = agentflow.run_workflow(child, child_input)
    except StepFailed as exc:
        result = f"caught {exc.error_type}"
    return {"before": before, "child": result, "after": once(tag, "parent-after")}


@workflow(name="fan-out-children")
def fan_out_children(tag: str, children: int = 3) -> list:
    return agentflow.run_workflows(
        "slow-child", [{"tag": f"{tag}-{i}", "steps": 1, "delay_seconds": 0.05} for i in range(children)]
    )


@workflow(name="scheduled-hello", schedule=agentflow.Schedule(every_seconds=3600, input={"who": "world"}))
def scheduled_hello(who: str) -> str:
    """Declares a schedule in code (tests/test_schedules.py)."""
    return f"hello {who}"
