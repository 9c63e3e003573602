"""Waits in the engine core, against memory backends: input requests, answers, time-outs, child runs."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

import agentflow
from agentflow import InputTimeout, InvalidAnswer, NotInWorkflow, StepFailed, component, workflow
from agentflow.core.context import COMPLETED, FAILED, WAITING
from agentflow.core.memory import MemoryRun
from agentflow.core.waits import AnswerSchema, announcement, validate_answer


class Approval(BaseModel):
    approved: bool
    notes: str = ""


calls: list[str] = []


@component
def note(text: str) -> str:
    calls.append(text)
    return text


@pytest.fixture(autouse=True)
def _calls():
    calls.clear()


def test_a_run_waits_for_input_then_replays_with_the_answer():
    @workflow(name="asks")
    def asks(topic: str) -> dict:
        outline = note(f"outline of {topic}")
        answer = agentflow.wait_for_input("approve", schema=Approval, prompt=f"Approve {outline}?")
        assert isinstance(answer, Approval)
        return {"outline": outline, "approved": answer.approved, "after": note("after")}

    run = MemoryRun(asks, {"topic": "otters"})
    with pytest.raises(agentflow.RunSuspended) as suspended:
        run.run()
    assert suspended.value.reason == "input" and suspended.value.wake_at is None
    record = run.store.records["input:approve"]
    assert record.status == WAITING and record.component == "input"
    assert record.input["prompt"] == "Approve outline of otters?"
    assert record.input["schema"] == Approval.model_json_schema()
    [requested] = [e for e in run.sink.events if e["type"] == "input.requested"]
    assert requested["step"] == "input:approve"
    assert requested["data"] == {
        "key": "approve",
        "prompt": "Approve outline of otters?",
        "schema": Approval.model_json_schema(),
        "timeout_at": None,
    }

    run.waits.answers["approve"] = {"approved": True}
    assert run.run() == {"outline": "outline of otters", "approved": True, "after": "after"}
    assert calls == ["outline of otters", "after"]  # replay ran no completed step again
    assert run.store.records["input:approve"].status == COMPLETED
    types = [e["type"] for e in run.sink.events]
    assert types.count("input.requested") == 1 and types.count("input.received") == 1
    [received] = [e for e in run.sink.events if e["type"] == "input.received"]
    # Normalised by the model, as send_input() records it.
    assert (
        received["data"]["value"] == {"approved": True, "notes": ""} and received["data"]["key"] == "approve"
    )


def test_asking_the_same_key_again_returns_the_same_answer():
    @workflow(name="asks-twice")
    def asks_twice() -> list:
        return [agentflow.wait_for_input("pick"), agentflow.wait_for_input("pick")]

    assert MemoryRun(asks_twice, {}, answers={"pick": "b"}).run() == ["b", "b"]


def test_time_out_raises_input_timeout_which_the_workflow_may_catch_and_replay_keeps():
    @workflow(name="times-out")
    def times_out() -> str:
        try:
            return agentflow.wait_for_input("go", timeout_seconds=0.05)
        except InputTimeout as exc:
            assert exc.details == {"key": "go", "timeout_seconds": 0.05}
            return note("default")

    run = MemoryRun(times_out, {})
    with pytest.raises(agentflow.RunSuspended) as suspended:
        run.run()
    assert suspended.value.wake_at == pytest.approx(time.time() + 0.05, abs=0.05)
    time.sleep(0.06)
    assert run.run() == "default"
    assert run.store.records["input:go"].status == FAILED
    assert [e["type"] for e in run.sink.events].count("input.timed_out") == 1
    # Replayed: the time-out stands, and nothing runs twice.
    run.waits.answers["go"] = "late"
    assert run.run() == "default" and calls == ["default"]


def test_an_answer_recorded_before_the_time_out_wins_over_it():
    @workflow(name="answered-late")
    def answered_late() -> str:
        return agentflow.wait_for_input("go", timeout_seconds=0.05)

    run = MemoryRun(answered_late, {})
    with pytest.raises(agentflow.RunSuspended):
        run.run()
    time.sleep(0.06)
    run.waits.answers["go"] = "yes"
    run.waits.answer_pending()
    assert run.run() == "yes"


@pytest.mark.parametrize(
    ("schema", "value", "field"),
    [
        (Approval, {"approved": "maybe"}, "approved"),
        (Approval, {}, "approved"),
        ({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}, {"n": "x"}, "n"),
        ({"type": "string", "enum": ["a", "b"]}, "c", ""),
    ],
)
def test_answers_are_validated_with_field_details(schema, value, field):
    request = {
        "key": "k",
        "schema": AnswerSchema.of(schema).json_schema,
        "schema_ref": AnswerSchema.of(schema).ref,
    }
    with pytest.raises(InvalidAnswer) as caught:
        validate_answer(request, value)
    assert caught.value.code == "invalid_answer"
    assert caught.value.details[0]["field"] == field


def test_a_module_level_model_validates_answers_by_itself_and_normalises_them():
    schema = AnswerSchema.of(Approval)
    assert schema.ref == "tests.core.test_waits:Approval"
    request = {"key": "k", "schema": schema.json_schema, "schema_ref": schema.ref}
    assert validate_answer(request, {"approved": True}) == {"approved": True, "notes": ""}


def test_bad_arguments_are_type_errors():
    @workflow(name="bad-waits")
    def bad(case: str) -> None:
        if case == "key":
            agentflow.wait_for_input("no spaces")
        elif case == "schema":
            agentflow.wait_for_input("k", schema={"type": "nonsense"})
        elif case == "timeout":
            agentflow.wait_for_input("k", timeout_seconds=0)
        elif case == "in-step":
            in_step()

    @component
    def in_step() -> None:
        agentflow.wait_for_input("k")

    for case in ("key", "schema", "timeout"):
        with pytest.raises(TypeError):
            MemoryRun(bad, {"case": case}).run()
    with pytest.raises(StepFailed, match="workflow body"):
        MemoryRun(bad, {"case": "in-step"}).run()
    with pytest.raises(NotInWorkflow):
        agentflow.wait_for_input("k")


def test_child_workflows_run_as_steps_and_their_failure_is_catchable():
    @workflow(name="core-child-ok")
    def child_ok(n: int) -> int:
        return int(note(f"child {n}")[-1]) * 10

    @workflow(name="core-child-bad")
    def child_bad() -> None:
        raise ValueError("child broke")

    @workflow(name="core-parent")
    def parent() -> dict:
        one = agentflow.run_workflow("core-child-ok", {"n": 1})
        many = agentflow.run_workflows(child_ok, [{"n": 2}, {"n": 3}])
        try:
            agentflow.run_workflow(child_bad)
        except StepFailed as exc:
            failure = exc.error_type
        return {"one": one, "many": many, "failure": failure}

    run = MemoryRun(parent, {})
    assert run.run() == {"one": 10, "many": [20, 30], "failure": "ValueError"}
    steps = {k: r.status for k, r in run.store.records.items()}
    assert steps == {
        "workflow:core-child-ok#0": COMPLETED,
        "workflow:core-child-ok#1": COMPLETED,
        "workflow:core-child-ok#2": COMPLETED,
        "workflow:core-child-bad#0": FAILED,
    }
    types = [e["type"] for e in run.sink.events]
    assert types.count("child.started") == 4 and types.count("child.completed") == 3
    assert types.count("child.failed") == 1
    # Replay starts no child again.
    calls.clear()
    run.run()
    assert calls == []


def test_async_twins_wait_for_running_steps_before_handing_the_run_back():
    @component
    async def slow() -> str:
        await asyncio.sleep(0.2)
        calls.append("slow")
        return "slow"

    @workflow(name="async-asks")
    async def async_asks() -> list:
        return list(await asyncio.gather(slow(), agentflow.wait_for_input_async("k")))

    run = MemoryRun(async_asks, {})
    with pytest.raises(agentflow.RunSuspended):
        run.run()
    # The concurrent step finished and was checkpointed before the hand-off.
    assert run.store.records["slow#0"].status == COMPLETED
    run.waits.answers["k"] = 1
    assert run.run() == ["slow", 1]
    assert calls == ["slow"]


def test_announcements_are_rebuilt_from_checkpoints_alone():
    assert announcement(
        "input", WAITING, {"key": "k", "prompt": "p", "schema": {}}, {"timeout_at": None}, None
    ) == (
        "input.requested",
        {"key": "k", "prompt": "p", "schema": {}, "timeout_at": None},
    )
    assert announcement(
        "workflow:x", FAILED, {}, None, {"run": "r", "type": "T", "message": "m", "status": "cancelled"}
    ) == (
        "child.failed",
        {"run": "r", "workflow": "x", "status": "cancelled", "error": {"type": "T", "message": "m"}},
    )
    assert announcement("research", COMPLETED, {}, None, None) is None
