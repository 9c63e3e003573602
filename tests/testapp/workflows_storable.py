"""Workflows that meet JSON PostgreSQL cannot store (tests/integration/test_storable.py): each puts one of
U+0000, a lone surrogate or NaN where agentflow stores or streams it."""

from __future__ import annotations

import agentflow
from agentflow import component, workflow

BAD = {"nul": "a\x00b", "surrogate": "a\ud800b", "nan": float("nan")}


@component
def produce(kind: str) -> dict:
    return {"value": BAD[kind]}


@component
def raise_bad(kind: str) -> str:
    raise ValueError(f"bad {BAD[kind]!s}")


@component
def take(value: object) -> str:
    return "took"


@workflow(name="unstorable")
def unstorable(where: str, kind: str) -> object:
    bad = BAD[kind]
    agentflow.status("before")
    if where == "step_output":
        produce(kind)
    elif where == "step_input":
        take(bad)
    elif where == "step_error":
        try:
            raise_bad(kind)
        except agentflow.StepFailed as exc:
            agentflow.publish("caught", exc.error_message)
    elif where == "publish":
        agentflow.publish("x", {"v": bad})
    elif where == "status":
        agentflow.status(str(bad))
    elif where == "stream_output":
        agentflow.stream_output(str(bad))
    elif where == "output":
        return {"v": bad}
    elif where == "raise":
        raise ValueError(f"bad {bad!s}")
    agentflow.status("after")
    return "done"
