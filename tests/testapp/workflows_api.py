"""Workflows of the REST API tests (tests/api). Imported by tests.testapp.workflows, so the workers have them."""

from __future__ import annotations

import agentflow
from agentflow import component, workflow

from .workflows import count, effects


def gate_key(tag: str) -> str:
    return f"agentflow-tests:gate:{tag}"


@workflow(name="api-echo", description="Repeat a text: one step.")
def api_echo(text: str, times: int = 1, labels: list[str] | None = None) -> dict:
    return {"text": repeat(text, times), "labels": labels or []}


@component
def repeat(text: str, times: int) -> str:
    return text * times


@component
def prepare(tag: str) -> str:
    count(tag, "prepare")
    return "prepared"


@component
def gate(tag: str) -> str:
    count(tag, "gate")
    if not effects().exists(gate_key(tag)):
        raise RuntimeError("the gate is closed")
    return "passed"


@workflow(name="api-gated")
def api_gated(tag: str) -> dict:
    """Prepare, then pass a gate that fails until a test opens it (for resume)."""
    agentflow.status("preparing")
    prepared = prepare(tag)
    agentflow.status("at the gate")
    return {"prepared": prepared, "gate": gate(tag)}
