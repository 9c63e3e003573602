"""Twenty runs on two workers (one prefork with two pool processes, one solo) whose process groups, or one
prefork pool process, are SIGKILLed at seeded random moments (``AGENTFLOW_CHAOS_SEED`` picks other ones);
each run has concurrent streaming steps, some of which fail their first attempt half-way and are retried.

Every run completes once with the right output; no checkpointed step runs again (executions are counted per
epoch and attempt in Redis and compared with the checkpoints and the stream); the stream's epochs never go
back; and a subscriber applying the two voiding rules rebuilds from each stream exactly what a run that
never failed streams, with exactly one terminal event."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter

import pytest

import agentflow
from agentflow.models import FINISHED_STATUSES, StepRun, WorkflowRun
from agentflow.monitor import check_runs
from tests.chaos.conftest import QUEUE, TERMINAL, drive_monitor, events_of, step_texts
from tests.conftest import apply_voiding
from tests.testapp.workflows import counts
from tests.testapp.workflows_chaos import expected_chaos_stream, is_flaky

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SEED = int(os.environ.get("AGENTFLOW_CHAOS_SEED", "20261124"))  # another seed explores other timings
RUNS = 20
KILLS = 7
SHAPE = {"rounds": 3, "width": 2, "chunks": 5}
FLAKY_EVERY = 3  # pieces 0 and 3 fail their first attempt half-way: step.retrying voids its partial output
DELAY_SECONDS = 0.06  # per chunk: a step streams for ~0.3 s, a run takes ~1 s


def pool_processes(pid: int) -> list[int]:
    """The child processes of ``pid`` (a prefork worker's pool)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def executions(tag: str, index: int) -> dict[tuple[int, int], int]:
    """How often piece ``index`` of the run tagged ``tag`` started executing, by (epoch, attempt)."""
    prefix = f"piece-{index}@"
    found = {}
    for key, n in counts(tag).items():
        if key.startswith(prefix):
            epoch, attempt = key[len(prefix) :].split(".")
            found[int(epoch), int(attempt)] = n
    return found


def test_runs_survive_sigkills_at_random_moments(worker_factory, chaos_settings):
    rng = random.Random(SEED)
    pools = ["prefork", "solo"]  # prefork runs two runs at once: three runs in flight in all
    workers = [worker_factory(queue=QUEUE, pool=pool, name=f"chaos-{pool}-0") for pool in pools]
    base = uuid.uuid4().hex[:12]
    tags = [f"{base}-{i}" for i in range(RUNS)]
    run_ids = [
        str(
            agentflow.start(
                "chaos-stream",
                {"tag": tag, **SHAPE, "delay_seconds": DELAY_SECONDS, "flaky_every": FLAKY_EVERY},
            ).pk
        )
        for tag in tags
    ]

    kills = []
    started = time.monotonic()
    for k in range(KILLS):
        drive_monitor(rng.uniform(0.3, 1.0))
        victim = rng.randrange(len(workers))
        in_flight = WorkflowRun.objects.filter(pk__in=run_ids, status="running").count()
        children = pool_processes(workers[victim].process.pid)
        if children and rng.random() < 0.4:
            # Only one pool process of the prefork worker: its parent lives on, rejects the lost message
            # (reject_on_worker_lost) and forks a new child; the redelivered message's epoch is stale.
            os.kill(rng.choice(children), signal.SIGKILL)
            kills.append((round(time.monotonic() - started, 2), "prefork child", in_flight))
            continue
        workers[victim].kill()
        kills.append((round(time.monotonic() - started, 2), pools[victim], in_flight))
        workers[victim] = worker_factory(
            queue=QUEUE, pool=pools[victim], name=f"chaos-{pools[victim]}-{k + 1}"
        )

    deadline = time.monotonic() + 60
    while WorkflowRun.objects.filter(pk__in=run_ids).exclude(status__in=FINISHED_STATUSES).exists():
        assert time.monotonic() < deadline, f"runs still unfinished 60 s after the last kill; kills: {kills}"
        check_runs()
        time.sleep(0.2)

    reruns, recoveries = 0, 0
    for tag, run_id in zip(tags, run_ids, strict=True):
        expected = expected_chaos_stream(tag, **SHAPE)
        run = WorkflowRun.objects.get(pk=run_id)
        where = f"run {run_id} (epoch {run.epoch}, kills {kills})"
        assert run.status == "completed", f"{where}: {run.status} {run.error}"
        assert run.output == expected["output"], where
        events = events_of(run_id)
        types = Counter(e["type"] for e in events)

        # One terminal event, last; the output event before it; the run started at most once.
        assert sum(types[t] for t in TERMINAL) == 1 and events[-1]["type"] == "run.completed", where
        assert types["output"] == 1 and events[-2] == {
            **events[-2],
            "type": "output",
            "data": {"value": expected["output"]},
        }, where
        assert types["run.started"] <= 1, where
        # Fencing: an incarnation appends nothing once a newer one claimed the run, so epochs never go back.
        epochs = [e["epoch"] for e in events]
        assert epochs == sorted(epochs), f"{where}: an older incarnation appended after a newer one"
        recovered = [e for e in events if e["type"] == "run.recovered"]
        assert len({e["epoch"] for e in recovered}) == len(recovered), where
        recoveries += len(recovered)

        # Every step checkpointed once, completed once in the stream, and never executed after its checkpoint.
        checkpoints = {s.step_id: s for s in StepRun.objects.filter(run_id=run_id)}
        assert sorted(checkpoints) == sorted(expected["texts"]), where
        for index, step in enumerate(sorted(expected["texts"], key=lambda s: int(s.split("#")[1]))):
            checkpoint = checkpoints[step]
            attempts = 2 if is_flaky(index, FLAKY_EVERY) else 1  # a flaky piece's first attempt fails
            assert checkpoint.status == "completed" and checkpoint.attempts == attempts, f"{where} {step}"
            completed = [e for e in events if e["type"] == "step.completed" and e["step"] == step]
            assert len(completed) == 1, f"{where}: {step} completed {len(completed)} times in the stream"
            if completed[0]["data"].get("recovered"):  # appended by a recovery: the checkpoint is older
                assert completed[0]["epoch"] > checkpoint.epoch, f"{where} {step}"
            else:
                assert completed[0]["epoch"] == checkpoint.epoch, f"{where} {step}"
            ran = executions(tag, index)
            final = checkpoint.epoch
            assert sorted(a for e, a in ran if e == final) == list(range(1, attempts + 1)), (
                f"{where}: {step} ran {ran} (checkpoint epoch {final})"
            )
            assert max(e for e, _ in ran) == final, f"{where}: {step} ran again after its checkpoint: {ran}"
            assert set(ran.values()) == {1}, f"{where}: {step} ran an attempt twice in one incarnation: {ran}"
            for epoch in {e for e, _ in ran if e != final}:
                reruns += 1  # an interrupted execution: announced, and its content voided, by a recovery
                if any(
                    e["type"] == "step.started" and e["step"] == step and e["epoch"] == epoch for e in events
                ):
                    assert any(
                        epoch < e["epoch"] <= final and step in e["data"]["void_steps"] for e in recovered
                    ), f"{where}: {step} interrupted in epoch {epoch} but never voided: {recovered}"
            if attempts == 2 and not completed[0]["data"].get("recovered"):
                retrying = [e for e in events if e["type"] == "step.retrying" and e["step"] == step]
                assert [(e["attempt"], e["epoch"]) for e in retrying if e["epoch"] == final] == [
                    (1, final)
                ], where

        # The subscriber: the voiding rules leave exactly what a run that never failed streams.
        kept = apply_voiding(events)
        texts = step_texts(kept)
        assert texts == expected["texts"], f"{where}: rebuilt {texts}"
        statuses = [e["data"]["text"] for e in kept if e["type"] == "status"]
        assert statuses == expected["statuses"], where
        assert [e["data"]["text"] for e in events if e["type"] == "status"] == expected["statuses"], where
        # Rounds run one after the other: a later round's content never precedes an earlier round's.
        rounds = [int(e["step"].split("#")[1]) // SHAPE["width"] for e in kept if e["type"] == "output.delta"]
        assert rounds == sorted(rounds), where

    print(
        f"chaos: seed {SEED}, kills (s, pool, runs running) {kills}, {recoveries} recoveries, {reruns} reruns"
    )
    assert recoveries >= 2 and reruns >= 1, (
        f"the kills hit too little: {recoveries} recoveries, {reruns} reruns, {kills}"
    )
