"""agentflow.testing: what users run in their own test suites."""

from __future__ import annotations

import uuid

import pytest

import agentflow
from agentflow import streams
from agentflow.testing import inline_executor, run_inline
from tests.testapp.workflows import counts


@agentflow.component
def shout(text: str) -> str:
    agentflow.stream_output(text.upper())
    return text.upper()


@agentflow.workflow(name="testing-shout")
def shout_twice(text: str) -> list[str]:
    agentflow.status("shouting")
    return [shout(text), shout.cache()(text), shout.cache()(text)]


def test_run_inline_needs_no_database_or_redis():
    result = run_inline("testing-shout", {"text": "hi"})
    assert result.output == ["HI", "HI", "HI"]
    assert [e["data"]["text"] for e in result.of_type("output.delta")] == ["HI", "HI"]  # third call cached
    assert sorted(result.steps) == ["shout#0", "shout#1", "shout#2"]
    assert result.steps["shout#2"].cached is True
    with pytest.raises(agentflow.InvalidInput):
        run_inline("testing-shout", {})


@pytest.mark.django_db(transaction=True)
def test_inline_executor_runs_start_synchronously_with_real_backends(redis_client):
    tag = uuid.uuid4().hex
    with inline_executor():
        run = agentflow.start("three-steps", {"tag": tag})
    run.refresh_from_db()
    assert run.status == "completed" and run.output["sections"] == 2
    assert counts(tag) == {"fetch": 1, "outline": 1, "write": 1}
    assert [e["type"] for e in streams.read_events(str(run.id))][-1] == "run.completed"


def test_run_inline_answers_input_and_runs_child_workflows():
    from agentflow.testing import run_inline

    result = run_inline(
        "asks-approval", {"tag": "inline"}, answers={"approve": {"approved": True, "notes": "ok"}}
    )
    assert result.output == {"published": True, "notes": "ok", "after": "after"}
    assert [e["type"] for e in result.of_type("input.received")] == ["input.received"]
    with pytest.raises(agentflow.RunSuspended):
        run_inline("asks-approval", {"tag": "inline-2"})
    assert run_inline("fan-out-children", {"tag": "inline-3", "children": 2}).output == [0, 0]
