"""Recordings of real runs for the two reducers (agentflow.client_state and agentflow.js), and the proof that
the Python one rebuilds each run as the database has it.

Each test runs a workflow on a real worker (retries, a SIGKILL and recovery, a fan-out of LLM calls whose
streams the fake server cuts, a failure, runs resumed after a failure and a cancellation), reads its events back the way a client that lost its connection
twice would (``after`` the last id it had), checks the reducer's state against the run and its checkpoints,
and writes ``{"events", "cuts", "expected"}`` to ``$AGENTFLOW_CLIENT_FIXTURES`` (default
``artifacts/client-state/``), where ``node --test tests/js/`` reads them next to the committed copies in
``tests/js/fixtures/`` (record those with ``AGENTFLOW_CLIENT_FIXTURES=tests/js/fixtures``).
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import override_settings

import agentflow
from agentflow import archive, client_state
from agentflow.conf import agentflow_settings
from agentflow.models import StepRun, WorkflowRun
from agentflow.monitor import check_runs
from agentflow.resuming import resume
from agentflow.testing.fake_openai import FakeOpenAI, FakeOpenAIProcess
from tests.conftest import ROOT, Worker, running_workers, wait_for
from tests.testapp.workflows import effects
from tests.testapp.workflows_chaos import piece_text, resume_gate_key

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-fixtures"
OUT = Path(os.environ.get("AGENTFLOW_CLIENT_FIXTURES") or ROOT / "artifacts" / "client-state")


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeOpenAIProcess]:
    with FakeOpenAI.spawn(completion_tokens=12, tokens_per_second=200) as server:
        yield server


@pytest.fixture(scope="module")
def backup_llm() -> Iterator[FakeOpenAIProcess]:
    """A second provider, for a fallback."""
    with FakeOpenAI.spawn(completion_tokens=12, tokens_per_second=200) as server:
        yield server


@pytest.fixture(scope="module")
def recording_settings(fake_llm: FakeOpenAIProcess, backup_llm: FakeOpenAIProcess) -> dict[str, Any]:
    return {
        "TASK_QUEUE": QUEUE,
        "LLM_PROVIDERS": [
            {"name": "fake", "base_url": fake_llm.base_url, "api_key": "k"},
            {"name": "backup", "base_url": backup_llm.base_url, "api_key": "k2"},
        ],
        "LLM_PRICES": {"fake-*": {"input": 0.15, "output": 0.60}},
        "QUEUED_TIMEOUT_SECONDS": 6.0,
        "LLM_PROVIDER_FAILURE_THRESHOLD": 1000,
    }


@pytest.fixture(scope="module")
def recording_worker(
    django_db_setup: None, redis_client: redis.Redis, recording_settings: dict[str, Any]
) -> Iterator[Worker]:
    with running_workers(QUEUE, recording_settings, name="rec") as (worker,):
        yield worker


@pytest.fixture(autouse=True)
def _recording(recording_settings: dict[str, Any], fake_llm: FakeOpenAIProcess) -> Iterator[None]:
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **recording_settings}):
        fake_llm.reset()
        yield


def read_with_cuts(run_id: str, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The run's events as a client that lost its connection twice gets them: pages read ``after`` the last
    id it had. Returns the events and where the connection was cut (indexes into them)."""
    every = archive.history(run_id)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(every)), 2))
    events: list[dict[str, Any]] = []
    for end in [*cuts, None]:
        after = events[-1]["id"] if events else None
        page = archive.history(run_id, after=after, limit=None if end is None else end - len(events))
        events.extend(page)
    assert events == every  # the resumed reads lost nothing and repeated nothing
    return events, cuts


def record(name: str, description: str, run_id: str, seed: int = 0) -> dict[str, Any]:
    """Check the reducer's state of the run against the run and its checkpoints; write the fixture."""
    events, cuts = read_with_cuts(run_id, seed)
    state = client_state.new_state()
    fixture_cuts = []
    done = 0
    for cut in cuts:
        client_state.reduce(events[done:cut], state)
        done = cut
        fixture_cuts.append({"at": cut, "state": client_state.snapshot(state)})
    client_state.reduce(events[done:], state)
    whole = client_state.reduce(events)
    assert client_state.snapshot(whole) == client_state.snapshot(state)

    run = WorkflowRun.objects.get(pk=run_id)
    assert state["status"] == run.status and state["done"]
    assert state["output"] == run.output
    if run.error:
        assert {k: v for k, v in state["error"].items() if k != "traceback"} == {
            k: v for k, v in run.error.items() if k != "traceback"
        }
    # The step tree matches the checkpoints: every finished step, its parent, status and last attempt.
    finished = {
        step_id: step for step_id, step in state["steps"].items() if step["status"] in ("completed", "failed")
    }
    # (Waits are checkpointed too; the state has them under "waits", from their own events.)
    checkpoints = {
        s.step_id: s for s in StepRun.objects.filter(run_id=run_id) if s.step_id not in state["waits"]
    }
    assert set(finished) == set(checkpoints)
    for step_id, checkpoint in checkpoints.items():
        step = finished[step_id]
        assert (step["status"], step["attempt"], step["parent"], step["component"]) == (
            checkpoint.status,
            checkpoint.attempts,
            checkpoint.parent_id,
            checkpoint.component,
        ), step_id
    usage = run.usage or {}
    for key in client_state.USAGE_KEYS:
        assert state["usage"][key] == (usage.get(key) or 0), key

    fixture = {
        "name": name,
        "description": description,
        "events": events,
        "cuts": fixture_cuts,
        "expected": client_state.snapshot(state),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    return state


def texts_by_step(state: dict[str, Any]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for piece in state["content"]:
        if piece["type"] == "output.delta":
            texts[piece["step"]] = texts.get(piece["step"], "") + piece["data"]["text"]
    return texts


def test_fanout_with_retried_steps(recording_worker: Worker) -> None:
    shape = {"rounds": 2, "width": 3, "chunks": 4, "delay_seconds": 0.02, "flaky_every": 2}
    run = agentflow.start("chaos-stream", {"tag": uuid.uuid4().hex, **shape})
    agentflow.wait(run, timeout_seconds=60)
    state = record(
        "fanout-retries", "two rounds of three concurrent steps; every second one retried", str(run.pk)
    )
    assert state["voided"] > 0  # the retried attempts' partial output was dropped
    assert texts_by_step(state) == {f"chaos_piece#{i}": piece_text(i, 4) for i in range(6)}
    assert state["status_text"] == "round 1"


def test_llm_fanout_with_cut_streams(recording_worker: Worker, fake_llm: FakeOpenAIProcess) -> None:
    # The outline's first stream and one section's first stream are cut part-way.
    fake_llm.fail({"drop_after_chunks": 4}, model="fake-model")
    fake_llm.fail({"drop_after_chunks": 7}, model="fake-section")
    story = {
        "topic": "otters",
        "sections": 3,
        "section_model": "fake-section",
        "retry_delay_seconds": 0.05,
        "providers": ["fake"],  # no fallback: a cut stream is a failed attempt, retried
    }
    run = agentflow.start("story", story)
    output = agentflow.wait(run, timeout_seconds=60)
    state = record(
        "llm-cut-streams", "an outline and three sections in parallel; two streams cut", str(run.pk), 1
    )
    assert state["voided"] > 0
    retried = [s for s in state["steps"].values() if any(a["status"] == "failed" for a in s["attempts"])]
    assert len(retried) == 2
    # The text the client shows is what the run returned, exactly once.
    assert state["output_text"] == output["outline"]
    assert state["texts"] == output["sections"]
    assert state["usage"]["calls"] == 4 and state["usage"]["cost_usd"] > 0


def test_llm_fallback_mid_stream(
    recording_worker: Worker, fake_llm: FakeOpenAIProcess, backup_llm: FakeOpenAIProcess
) -> None:
    # The first provider cuts a section's stream after some text: the call moves on to the second one.
    backup_llm.reset()
    fake_llm.fail({"drop_after_chunks": 6}, model="fake-section")
    story = {
        "topic": "voles",
        "sections": 2,
        "section_model": "fake-section",
        "providers": ["fake", "backup"],
    }
    run = agentflow.start("story", story)
    output = agentflow.wait(run, timeout_seconds=60)
    state = record(
        "llm-fallback", "a section's provider fails mid-stream; the next provider answers", str(run.pk), 5
    )
    retrying = [a for s in state["steps"].values() for a in s["attempts"] if a["status"] == "failed"]
    assert len(retrying) == 1 and state["voided"] > 0
    fell_back = [s for s in state["steps"].values() if s["usage"] and s["usage"].get("provider") == "backup"]
    assert len(fell_back) == 1 and fell_back[0]["attempt"] == 2
    assert state["texts"] == output["sections"] and state["output_text"] == output["outline"]


def test_failed_run(recording_worker: Worker) -> None:
    run = agentflow.start("fails", {"tag": uuid.uuid4().hex})
    with pytest.raises(agentflow.RunFailed):
        agentflow.wait(run, timeout_seconds=60)
    state = record("failed", "a step that fails for good fails the run", str(run.pk), 2)
    assert state["status"] == "failed" and state["error"]["step"] == "doomed#0"


def test_run_waiting_for_input(recording_worker: Worker) -> None:
    run = agentflow.start("asks-approval", {"tag": uuid.uuid4().hex})
    wait_for_event = lambda kind: any(e["type"] == kind for e in archive.history(str(run.pk)))  # noqa: E731
    wait_for(lambda: wait_for_event("input.requested") and wait_for_event("run.waiting"), 30, "the question")
    agentflow.send_input(run, "approve", {"approved": True, "notes": "ship it"})
    agentflow.wait(run, timeout_seconds=60)
    state = record("input-wait", "a run that waits for a person's answer, then goes on", str(run.pk), 4)
    wait = state["waits"]["input:approve"]
    assert wait["kind"] == "input" and wait["status"] == "received"
    assert wait["value"] == {"approved": True, "notes": "ship it"} and wait["prompt"].startswith("Publish ")


def test_run_recovered_after_its_worker_was_killed(
    recording_worker: Worker, worker_factory: Any, recording_settings: dict[str, Any]
) -> None:
    kill_queue = f"{QUEUE}-kill"
    settings = {**recording_settings, "TASK_QUEUE": kill_queue}
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **settings}):
        doomed = worker_factory(queue=kill_queue, name="doomed")
        shape = {"rounds": 4, "width": 2, "chunks": 6, "delay_seconds": 0.05, "flaky_every": 3}
        run = agentflow.start("chaos-stream", {"tag": uuid.uuid4().hex, **shape})
        run_id = str(run.pk)

        def streaming_mid_round() -> bool:
            # Killed while a round's steps are streaming: their content becomes void.
            events = archive.history(run_id)
            done = sum(e["type"] == "step.completed" for e in events)
            return done >= 2 and events[-1]["type"] == "output.delta"

        wait_for(streaming_mid_round, 30, "a round streaming")
        doomed.kill()
        worker_factory(queue=kill_queue, name="rescuer")
        wait_for(lambda: check_runs().recovered, 20, "the monitor to recover the run", poll_seconds=0.2)
        agentflow.wait(run, timeout_seconds=60)
    state = record("recovered", "a worker SIGKILLed mid-round; the monitor recovers the run", run_id, 3)
    assert state["recoveries"] == 1 and state["voided"] > 0
    assert any(a["status"] == "lost" for s in state["steps"].values() for a in s["attempts"])
    assert texts_by_step(state) == {f"chaos_piece#{i}": piece_text(i, 6) for i in range(8)}


def test_run_failed_mid_stream_then_resumed(recording_worker: Worker) -> None:
    # Piece 1 fails for good half-way (both attempts) while its siblings complete; resumed with the gate
    # open, it runs again from its first chunk: what it streamed before the failure is void.
    tag = uuid.uuid4().hex
    shape = {"width": 3, "chunks": 6, "delay_seconds": 0.02, "gated": [1]}
    run = agentflow.start("resumable-stream", {"tag": tag, **shape})
    with pytest.raises(agentflow.RunFailed):
        agentflow.wait(run, timeout_seconds=60)
    failed = client_state.reduce(archive.history(str(run.pk)))
    assert texts_by_step(failed)["gated_piece#1"] == piece_text(1, 3)  # the failed attempt's half stands
    effects().set(resume_gate_key(tag), 1)
    resume(run.pk)
    output = agentflow.wait(run, timeout_seconds=60)
    state = record(
        "resumed-after-failure", "a step fails for good mid-stream; the run is resumed", str(run.pk), 6
    )
    assert output == {"tag": tag, "total": 0 + 1 + 4}
    # Each piece's text exactly once: the resumed run streamed piece 1 again, its siblings were replayed.
    assert texts_by_step(state) == {f"gated_piece#{i}": piece_text(i, 6) for i in range(3)}
    assert state["status"] == "completed" and state["steps"]["gated_piece#1"]["status"] == "completed"
    resumed = [e for e in archive.history(str(run.pk)) if e["type"] == "run.resumed"]
    assert [e["data"]["void_steps"] for e in resumed] == [["gated_piece#1"]]


def test_run_cancelled_mid_fan_out_then_resumed(recording_worker: Worker) -> None:
    # Cancelled while its three pieces stream: they stop at their next sub-step without an end event, and
    # the resumed run runs all three again.
    tag = uuid.uuid4().hex
    run = agentflow.start("resumable-stream", {"tag": tag, "width": 3, "chunks": 8, "delay_seconds": 0.1})
    run_id = str(run.pk)

    def streaming() -> bool:
        return sum(e["type"] == "output.delta" for e in archive.history(run_id)) >= 4

    wait_for(streaming, 30, "the pieces to stream")
    agentflow.cancel(run)
    with pytest.raises(agentflow.RunFailed, match="ended cancelled"):
        agentflow.wait(run, timeout_seconds=60)
    cancelled = client_state.reduce(archive.history(run_id))
    assert cancelled["status"] == "cancelled" and cancelled["output_text"]
    resume(run.pk)
    agentflow.wait(run, timeout_seconds=60)
    state = record("resumed-after-cancel", "a run cancelled mid-fan-out, resumed", run_id, 7)
    assert texts_by_step(state) == {f"gated_piece#{i}": piece_text(i, 8) for i in range(3)}
    resumed = next(e for e in archive.history(run_id) if e["type"] == "run.resumed")
    assert set(resumed["data"]["void_steps"]) == {f"gated_piece#{i}" for i in range(3)}
