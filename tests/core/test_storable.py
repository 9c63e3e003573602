"""What agentflow stores must be JSON PostgreSQL's jsonb can hold: the one boundary (core.serialization) and
the engine's use of it, against the memory backends, which refuse what the database and Redis refuse."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel

import agentflow
from agentflow import Retry, SerializationError, StepFailed, component, workflow
from agentflow.core import events as ev
from agentflow.core.errors import InvalidAnswer
from agentflow.core.memory import MemoryRun, MemorySink, run_in_memory
from agentflow.core.serialization import check_storable, encode, escaped, replaced, replaced_text
from agentflow.core.waits import AnswerSchema, validate_answer


@pytest.mark.parametrize(
    ("value", "path", "code"),
    [
        ({"a": ["x", "b\x00"]}, "a.1", "null_character"),
        ({"k\ud800": 1}, "k\\ud800", "lone_surrogate"),
        ([1.5, -math.inf], "1", "non_finite_number"),
        ("\udfff", "", "lone_surrogate"),
    ],
)
def test_encode_refuses_naming_the_path_and_the_problem(value, path, code):
    with pytest.raises(SerializationError) as caught:
        encode(value, what="the thing")
    assert caught.value.code == "not_serializable"
    assert caught.value.message.startswith("the thing cannot be stored: ")
    assert caught.value.details == {"path": path, "code": code}
    with pytest.raises(SerializationError):
        check_storable(value, what="the thing")


def test_encode_keeps_what_only_looks_like_a_problem_and_nests_as_deep_as_json_goes():
    # The six characters \u0000 are text, not U+0000; pairs of surrogates are one character.
    assert encode({"t": "\\u0000 and 😀", "n": 1e308}, what="x") == '{"t":"\\\\u0000 and 😀","n":1e+308}'
    deep: list = []
    for _ in range(300):  # input stops at 100 levels (too_deep); what a step returns need not
        deep = [deep]
    encode(deep, what="x")


def test_escaped_records_an_error_whatever_it_holds_and_replaced_mends_a_reply():
    error = {"type": "ValueError", "message": "bad a\x00b\ud800", "n": math.nan}
    assert escaped(error, what="an error") == {
        "type": "ValueError",
        "message": "bad a\\u0000b\\ud800",
        "n": "NaN",
    }
    assert escaped({"fine": 1}, what="x") == {"fine": 1}
    reply, found = replaced({"content": "a\x00b", "logprob": -math.inf, "ok": "😀"})
    assert reply == {"content": "a\ufffdb", "logprob": None, "ok": "😀"}
    assert found == [("content", "null_character"), ("logprob", "non_finite_number")]
    assert replaced_text("half \ud83d") == "half \ufffd" and replaced_text("fine") == "fine"


def test_the_memory_sink_refuses_an_event_when_it_is_emitted():
    sink = MemorySink()
    event = ev.envelope(ev.DATA, "r", step=None, attempt=None, epoch=1, data={"value": "\ud800"})
    with pytest.raises(SerializationError, match=r"the data event cannot be stored.*'data\.value'"):
        sink.emit(event)
    assert sink.events == []


@component
def returns(value: object) -> object:
    return value


def test_a_step_result_the_database_cannot_store_fails_the_step_for_good():
    attempts = []

    @component
    def produce() -> dict:
        attempts.append(1)
        return {"v": [1, "a\x00b"]}

    @workflow(name="stores-badly")
    def stores_badly() -> str:
        try:
            produce.retry(max_attempts=3, initial_delay_seconds=0)()
        except StepFailed as exc:
            return f"{exc.error_type}: {exc.error_message}"
        return "stored"

    output, _ = run_in_memory(stores_badly)
    assert output.startswith("SerializationError: the result of step 'produce#0' cannot be stored")
    assert output.endswith("(at 'v.1')") and attempts == [1]  # not retried


def test_values_handed_over_are_refused_where_they_are_handed():
    @workflow(name="hands-over")
    def hands_over(case: str) -> object:
        if case == "status":
            agentflow.status("a\x00")
        elif case == "publish":
            agentflow.publish("label", {"x": math.inf})
        elif case == "chunk":
            agentflow.stream_output("\ud800")
        elif case == "argument":
            returns("a\x00")
        elif case == "output":
            return {"x": math.nan}
        return None

    for case, message in [
        ("status", "the status text cannot be stored"),
        ("publish", "published data cannot be stored"),
        ("chunk", "the streamed chunk cannot be stored"),
        ("argument", "input of returns#0 cannot be stored"),
        ("output", "the output of workflow 'hands-over' cannot be stored"),
    ]:
        with pytest.raises(SerializationError, match=message):
            run_in_memory(hands_over, {"case": case})
    # Outside a workflow they check their arguments too.
    with pytest.raises(SerializationError):
        agentflow.status("\x00")


def test_an_error_message_is_recorded_escaped_and_replayed_so():
    @component
    def breaks() -> None:
        raise ValueError("quoting a\x00b")

    @workflow(name="breaks-quoting")
    def breaks_quoting() -> str:
        try:
            breaks()
        except StepFailed as exc:
            return exc.error_message
        return ""

    run = MemoryRun(breaks_quoting, {})
    assert run.run() == "quoting a\\u0000b"
    assert run.store.records["breaks#0"].error == {"type": "ValueError", "message": "quoting a\\u0000b"}


def test_non_finite_numbers_are_refused_where_they_would_be_stored():
    with pytest.raises(TypeError):
        agentflow.sleep(math.inf)
    with pytest.raises(ValueError):
        Retry(delay_seconds=math.nan)
    with pytest.raises(TypeError):
        agentflow.record_usage("m", prompt_tokens=1, cost_usd=math.inf)
    with pytest.raises(SerializationError):
        agentflow.record_usage("m\x00", prompt_tokens=1)

    @workflow(name="asks-badly")
    def asks_badly(case: str) -> None:
        if case == "prompt":
            agentflow.wait_for_input("k", prompt="a\x00")
        else:
            agentflow.wait_for_input("k", timeout_seconds=math.inf)

    with pytest.raises(SerializationError, match="the prompt"):
        MemoryRun(asks_badly, {"case": "prompt"}).run()
    with pytest.raises(TypeError, match="finite"):
        MemoryRun(asks_badly, {"case": "timeout"}).run()


class Form(BaseModel):
    count: int
    ok: bool
    when: str = ""


ANSWERS = [
    {"count": 1, "ok": True},
    {"count": "1", "ok": True},
    {"count": 1.0, "ok": True},
    {"count": 1, "ok": 1},
    {"count": 1, "ok": "true"},
    {"count": True, "ok": True},
    {"count": 1},
    {"count": 1, "ok": True, "when": 5},
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_the_model_and_its_json_schema_accept_the_same_answers(answer):
    # The API validates with the model when it can import it, with its JSON Schema otherwise: the two must
    # agree, strictly, as run input is validated.
    schema = AnswerSchema.of(Form)
    request = {"key": "k", "schema": schema.json_schema, "schema_ref": schema.ref}

    def accepted(resolve: bool) -> bool:
        try:
            validate_answer(request, answer, resolve=resolve)
        except InvalidAnswer:
            return False
        return True

    assert accepted(True) == accepted(False) == (answer is ANSWERS[0])
