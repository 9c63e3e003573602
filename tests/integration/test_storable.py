"""JSON that PostgreSQL cannot store (U+0000, lone surrogates, NaN), wherever a workflow puts it: each run
ends with a clear error naming the JSON path, or records its error escaped; none is stuck, and every run's
events are archived. Real worker, PostgreSQL and Redis (docs/topics/workflows.md#what-agentflow-stores)."""

from __future__ import annotations

import json

import pytest

import agentflow
from agentflow import archive, streams
from agentflow.models import RunEvent, StepRun, WorkflowRun
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

KINDS = ("nul", "surrogate", "nan")
PROBLEM = {"nul": "null_character", "surrogate": "lone_surrogate", "nan": "non_finite_number"}
ESCAPED = {"nul": "a\\u0000b", "surrogate": "a\\ud800b"}


@pytest.fixture(autouse=True)
def _worker(shared_worker):
    return shared_worker


def finish(*cases: tuple[str, str]) -> dict[tuple[str, str], WorkflowRun]:
    """Start each case's run, all at once, and wait for them to end: {(where, kind): run}."""
    runs = {case: agentflow.start("unstorable", {"where": case[0], "kind": case[1]}) for case in cases}
    for run in runs.values():
        agentflow.wait(run, timeout_seconds=60, raise_on_failure=False)
        run.refresh_from_db()
    return runs


def _archived_whole(run: WorkflowRun) -> None:
    # After the terminal event, the worker archives the stream and records its last id.
    wait_for(lambda: WorkflowRun.objects.get(pk=run.pk).last_event_id, 10, "the archive")
    run.refresh_from_db()
    events = streams.read_events(str(run.id))
    assert events[-1]["type"] in ("run.completed", "run.failed")
    assert run.last_event_id == events[-1]["id"]  # archived, and the stream left to expire
    assert [e.stream_id for e in RunEvent.objects.filter(run=run)] == [e["id"] for e in events]


def test_a_step_result_that_cannot_be_stored_fails_the_step_naming_the_path():
    for run in finish(*[("step_output", kind) for kind in KINDS]).values():
        _failed_step(run)


def _failed_step(run: WorkflowRun) -> None:
    assert run.status == "failed"
    cause = run.error["cause"]
    assert cause["type"] == "SerializationError"
    assert cause["message"].startswith("the result of step 'produce#0' cannot be stored: ")
    assert cause["message"].endswith("(at 'value')")
    step = StepRun.objects.get(run=run, step_id="produce#0")
    assert (step.status, step.attempts, step.output) == ("failed", 1, None)  # not retried
    failed = [e for e in streams.read_events(str(run.id)) if e["type"] == "step.failed"]
    assert failed[0]["data"]["error"] == cause
    _archived_whole(run)


@pytest.mark.parametrize(
    ("where", "path", "message"),
    [
        ("step_input", "args.0", "input of take#0 cannot be stored"),
        ("publish", "v", "published data cannot be stored"),
        ("output", "v", "the output of workflow 'unstorable' cannot be stored"),
    ],
)
def test_values_handed_to_agentflow_are_refused_where_they_are_handed(where, path, message):
    for (_, kind), run in finish(*[(where, kind) for kind in KINDS]).items():
        _refused(run, where, path, message, kind)


def _refused(run: WorkflowRun, where: str, path: str, message: str, kind: str) -> None:
    assert run.status == "failed"
    assert run.error["code"] == "not_serializable"
    assert run.error["message"].startswith(message)
    assert run.error["details"] == {"path": path, "code": PROBLEM[kind]}
    if where == "step_input":
        assert not StepRun.objects.filter(run=run).exists()  # refused before any attempt
    _archived_whole(run)


def test_texts_streamed_are_refused_when_emitted():
    # Before: a status with U+0000 broke the run's archive; a chunk with a lone surrogate stopped its
    # events for good (Redis cannot take it), leaving the run running and its worker slot taken.
    runs = finish(("status", "nul"), ("stream_output", "surrogate"))
    for (where, _), run in runs.items():
        what = "status text" if where == "status" else "streamed chunk"
        assert run.status == "failed"
        assert run.error["message"].startswith(f"the {what} cannot be stored")
        types = [e["type"] for e in streams.read_events(str(run.id))]
        assert types == ["run.queued", "run.started", "status", "run.failed"]
        _archived_whole(run)


@pytest.mark.parametrize("kind", ("nul", "surrogate"))
def test_error_messages_are_recorded_escaped(kind):
    runs = finish(("step_error", kind), ("raise", kind))
    caught = runs[("step_error", kind)]
    assert caught.status == "completed"  # the workflow caught the step's failure and went on
    step = StepRun.objects.get(run=caught, step_id="raise_bad#0")
    assert step.error == {"type": "ValueError", "message": f"bad {ESCAPED[kind]}"}
    data = [e["data"] for e in streams.read_events(str(caught.id)) if e["type"] == "data"]
    assert data == [{"label": "caught", "value": f"bad {ESCAPED[kind]}"}]  # as replay would raise it
    _archived_whole(caught)

    raised = runs[("raise", kind)]
    assert (raised.status, raised.error["message"]) == ("failed", f"bad {ESCAPED[kind]}")
    assert "\\u" in raised.error["traceback"]
    failed = streams.read_events(str(raised.id))[-1]
    assert failed["data"]["error"] == {"type": "ValueError", "message": f"bad {ESCAPED[kind]}"}
    _archived_whole(raised)


def test_an_event_postgresql_refuses_does_not_cost_the_run_its_other_events(redis_client):
    # A stream appended before agentflow refused such events: the archive takes the others, and the refused
    # ones escaped (before: the whole batch failed, every time, and the run's history was never archived).
    run = WorkflowRun.objects.create(workflow="unstorable", input={})
    key = streams.stream_key(str(run.id))

    def append(data: str) -> str:
        text = '{"type":"data","run":"%s","step":null,"attempt":null,"epoch":1,"ts":"t","data":%s}'
        return redis_client.xadd(key, {"d": text % (run.id, data)})

    ids = [
        append('{"label":"ok","value":1}'),
        append('{"label":"nul","value":"a\\u0000b"}'),
        append('{"label":"nan","value":NaN}'),
        append('{"label":"ok","value":2}'),
    ]
    assert archive.archive_events(str(run.id)) == 4
    rows = {row.stream_id: row.data for row in RunEvent.objects.filter(run=run)}
    assert rows == {
        ids[0]: {"label": "ok", "value": 1},
        ids[1]: {"label": "nul", "value": "a\\u0000b"},
        ids[2]: {"label": "nan", "value": "NaN"},
        ids[3]: {"label": "ok", "value": 2},
    }
    assert json.loads(json.dumps(rows))  # plain JSON now
