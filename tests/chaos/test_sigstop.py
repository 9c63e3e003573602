"""A worker frozen (SIGSTOP) past its lease: the monitor hands its run to another worker, and once thawed
(SIGCONT) the stale worker writes nothing: no checkpoint, no event."""

from __future__ import annotations

import signal
import uuid
from datetime import datetime

import pytest

import agentflow
from agentflow.models import StepRun, WorkflowRun
from tests.chaos.conftest import (
    QUEUE,
    TERMINAL,
    drive_monitor,
    events_of,
    signal_group,
    step_texts,
)
from tests.conftest import apply_voiding, wait_for
from tests.testapp.workflows import counts
from tests.testapp.workflows_chaos import expected_chaos_stream

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SHAPE = {"rounds": 5, "width": 1, "chunks": 10}  # five sequential steps of ~1 s, each streaming 10 chunks


def parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_a_frozen_worker_thawed_after_recovery_writes_nothing(worker_factory, chaos_settings):
    frozen = worker_factory(queue=QUEUE, name="chaos-frozen")
    tag = uuid.uuid4().hex
    run_id = str(agentflow.start("chaos-stream", {"tag": tag, **SHAPE, "delay_seconds": 0.1}).pk)

    def deltas_of(step: str) -> int:
        return sum(1 for e in events_of(run_id) if e["type"] == "output.delta" and e["step"] == step)

    # Freeze it in the middle of the second step (after three of its ten chunks).
    wait_for(lambda: deltas_of("chaos_piece#1") >= 3, 30, "the second step to stream")
    signal_group(frozen.process.pid, signal.SIGSTOP)
    try:
        rescuer = worker_factory(queue=QUEUE, name="chaos-rescuer")
        wait_for(lambda: drive_monitor(0.2), 15, "the monitor to recover the run", poll_seconds=0)
        # The run moves on elsewhere: a step completes in epoch 2.
        wait_for(
            lambda: any(e["type"] == "step.completed" and e["epoch"] == 2 for e in events_of(run_id)),
            30,
            "a step completed by the rescuer",
        )
    finally:
        signal_group(frozen.process.pid, signal.SIGCONT)

    output = agentflow.wait(run_id, timeout_seconds=30)
    expected = expected_chaos_stream(tag, **SHAPE)
    assert output == expected["output"]
    # The thawed worker finishes its step's code, then finds its checkpoint refused and stops.
    wait_for(
        lambda: any("lost epoch 1" in line or "epoch 1 is stale" in line for line in frozen.log),
        15,
        "the thawed worker to notice it lost the run",
    )
    ran = counts(tag)
    assert ran["piece-1@1.1"] == 1 and ran["piece-1@2.1"] == 1  # the frozen step ran on both
    assert sorted(key for key in ran if "@1." in key) == ["piece-0@1.1", "piece-1@1.1"]  # and no further

    run = WorkflowRun.objects.get(pk=run_id)
    assert run.status == "completed" and run.epoch == 2 and run.recoveries == 1
    assert run.worker.split(":")[-1] == str(rescuer.process.pid)  # solo pool: the worker's own process
    events = events_of(run_id)
    recovered = [i for i, e in enumerate(events) if e["type"] == "run.recovered"]
    assert len(recovered) == 1
    cut = events[recovered[0]]
    assert cut["data"]["void_steps"] == ["chaos_piece#1"]
    # Nothing of epoch 1 after the recovery: the stale worker's chunks and step events were refused.
    assert [e for e in events[recovered[0] :] if e["epoch"] < 2] == []
    # No checkpoint of epoch 1 written after the recovery; the step it was running is epoch 2's.
    recovered_at = parse_ts(cut["ts"])
    steps = {s.step_id: s for s in StepRun.objects.filter(run_id=run_id)}
    assert sorted(steps) == sorted(expected["texts"])
    assert steps["chaos_piece#0"].epoch == 1 and steps["chaos_piece#0"].finished_at < recovered_at
    assert all(s.epoch == 2 for step, s in steps.items() if step != "chaos_piece#0")
    assert [s.step_id for s in steps.values() if s.epoch == 1 and s.finished_at >= recovered_at] == []
    # Exactly one of each ending, and the subscriber's view is that of a run that never stalled.
    assert sum(e["type"] in TERMINAL for e in events) == 1 and events[-1]["type"] == "run.completed"
    assert step_texts(apply_voiding(events)) == expected["texts"]
