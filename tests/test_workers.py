"""Workers are visible: the registry (agentflow.workers), and what the health endpoint, `manage.py agentflow
doctor`, the admin, wait() and the synchronous API say with no worker, a killed one and two live ones.

Real workers in their own processes on a queue of this module, so workers of other tests never count.
"""

from __future__ import annotations

import html
import io
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse
from rest_framework.test import APIClient

import agentflow
from agentflow import workers
from agentflow.conf import agentflow_settings
from agentflow.models import RunStatus, WorkflowRun
from tests.conftest import Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-health"
MONITOR_QUEUE = "agentflow-health-monitor"
NO_WORKER = f"no live worker consumes queue {QUEUE!r}"


@pytest.fixture(autouse=True)
def health_queues(redis_client: redis.Redis) -> Iterator[None]:
    overrides = {**agentflow_settings.user_settings, "TASK_QUEUE": QUEUE, "MONITOR_QUEUE": MONITOR_QUEUE}
    with override_settings(AGENTFLOW=overrides):
        yield
    redis_client.delete(QUEUE)  # messages of runs no worker took


@pytest.fixture
def staff() -> Any:
    return get_user_model().objects.create_user("root", is_staff=True, is_superuser=True)


def health_response(user: Any = None) -> Any:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client.get(reverse("agentflow:health"))


def doctor() -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("agentflow", "doctor", stdout=out)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue()
    return 0, out.getvalue()


def admin_pages(user: Any, run: WorkflowRun) -> tuple[str, str]:
    client = Client()
    client.force_login(user)
    changelist = client.get(reverse("admin:agentflow_workflowrun_changelist"))
    page = client.get(reverse("admin:agentflow_workflowrun_change", args=[run.pk]))
    assert changelist.status_code == page.status_code == 200
    return html.unescape(changelist.content.decode()), html.unescape(page.content.decode())


def live_on_queue() -> list[workers.WorkerInfo]:
    return workers.consuming(QUEUE, workers.live())


def sync_run(user: Any, workflow: str, body: dict[str, Any]) -> Any:
    client = APIClient()
    client.force_authenticate(user)
    return client.post(
        reverse("agentflow:workflow-run", args=[workflow]) + "?timeout=0.3", body, format="json"
    )


def assert_no_worker_is_reported(staff: Any, run: WorkflowRun) -> None:
    """What every surface says while no live worker consumes the run queue."""
    response = health_response(staff)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["workers"]["status"] == "error"
    assert NO_WORKER in body["checks"]["workers"]["summary"]
    for name in ("database", "redis", "broker", "cache"):
        assert body["checks"][name]["status"] == "ok", body["checks"][name]

    status, out = doctor()
    assert status == 1
    assert "agentflow doctor: ERROR" in out
    assert f"ERROR    workers   {NO_WORKER}" in out
    assert f"TASK_QUEUE = {QUEUE!r}" in out

    changelist, page = admin_pages(staff, run)
    assert f"Runs wait: {NO_WORKER}" in changelist
    assert f"This run is queued, waiting for a worker: {NO_WORKER}" in page

    with pytest.raises(agentflow.RunTimeout) as waited:
        agentflow.wait(run, timeout_seconds=0.3)
    assert "it is queued, waiting for a worker; " + NO_WORKER in str(waited.value)
    assert waited.value.details == {"status": "queued", "reason": "no_live_worker", "queue": QUEUE}

    response = sync_run(staff, "api-echo", {"text": "hi"})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.json()["notice"]["code"] == "no_live_worker"
    assert NO_WORKER in response.json()["notice"]["message"]


def test_with_no_worker_every_surface_says_runs_wait_for_one(staff: Any) -> None:
    assert live_on_queue() == []
    run = agentflow.start("api-echo", {"text": "hi"})

    # Anyone gets the liveness answer, without details.
    assert health_response().json() == {"status": "ok"}
    alice = get_user_model().objects.create_user("alice")
    assert health_response(alice).status_code == 200 and health_response(alice).json() == {"status": "ok"}

    assert_no_worker_is_reported(staff, run)


def test_a_killed_workers_registration_expires_and_it_is_reported_dead(
    staff: Any, worker_factory: Callable[..., Worker]
) -> None:
    worker = worker_factory(queue=QUEUE, name="doomed")
    wait_for(lambda: [w.pid for w in live_on_queue()] == [worker.process.pid], 10, "the worker to register")
    worker.kill()  # SIGKILL: no warm shutdown, nothing unregisters it
    wait_for(
        lambda: live_on_queue() == [], 4 * agentflow_settings.lease_seconds + 5, "the registration to expire"
    )

    (dead,) = [w for w in workers.recently_dead() if w.pid == worker.process.pid]
    assert dead.name.startswith(f"doomed-{QUEUE}@") and not dead.alive
    run = agentflow.start("api-echo", {"text": "hi"})
    assert_no_worker_is_reported(staff, run)
    _status, out = doctor()
    assert f"DEAD  {dead.name} (pid {dead.pid}): no heartbeat for" in out
    # Workers other tests killed may be listed too.
    assert re.search(r"\(\d+ worker\(s\) stopped beating in the last hour\)", out), out


def test_two_live_workers_are_listed_with_what_they_hold(
    staff: Any, worker_factory: Callable[..., Worker]
) -> None:
    solo = worker_factory(queue=QUEUE, name="solo")
    prefork = worker_factory(queue=QUEUE, name="prefork", pool="prefork")
    pids = {solo.process.pid, prefork.process.pid}
    wait_for(lambda: {w.pid for w in live_on_queue()} == pids, 10, "both workers to register")

    run = agentflow.start("slow", {"tag": "health", "steps": 60, "delay_seconds": 0.25})
    try:

        def holder() -> workers.WorkerInfo | None:
            held = [w for w in live_on_queue() if str(run.pk) in w.runs]
            return held[0] if held else None

        held_by = wait_for(holder, 30, "a worker to report the run it holds")
        assert isinstance(held_by, workers.WorkerInfo)
        assert held_by.runs_held == 1 and held_by.free_slots == held_by.concurrency - 1
        wait_for(
            lambda: WorkflowRun.objects.get(pk=run.pk).status == RunStatus.RUNNING, 10, "the run to start"
        )

        response = health_response(staff)
        assert response.status_code == 200  # a warning (no monitor worker here) is not an error
        body = response.json()
        assert body["status"] == "warning" and body["checks"]["monitor"]["status"] == "warning"
        checked = body["checks"]["workers"]
        assert checked["status"] == "ok" and checked["live"] >= 2  # other tests' workers may be alive too
        assert checked["summary"] == f"2 live worker(s) consume queue {QUEUE!r}, 2 free slot(s)"
        listed = {w["pid"]: w for w in body["workers"] if w["pid"] in pids}
        assert set(listed) == pids
        assert (
            listed[solo.process.pid]["concurrency"] == 1 and listed[prefork.process.pid]["concurrency"] == 2
        )
        for worker in listed.values():
            assert worker["queues"] == [QUEUE] and worker["version"] == agentflow.__version__
            assert worker["alive"] and worker["state"] == "running" and worker["host"] == os.uname().nodename
        assert listed[held_by.pid]["runs"] == [str(run.pk)]

        status, out = doctor()
        assert status == 0, out
        assert f"ok       workers   2 live worker(s) consume queue {QUEUE!r}" in out
        assert "WARNING  monitor" in out
        assert f"(pid {held_by.pid}, agentflow {agentflow.__version__}): queues {QUEUE}; 1 run(s) held" in out

        changelist, page = admin_pages(staff, run)
        assert "agentflow-worker-notice" not in changelist and "agentflow-worker-notice" not in page

        with pytest.raises(agentflow.RunTimeout) as waited:
            agentflow.wait(run, timeout_seconds=0.3)
        assert str(waited.value) == f"run {run.pk} did not finish within 0.3s (it is running)"
        assert waited.value.details == {"status": "running", "reason": "run_timeout"}
        response = sync_run(staff, "slow", {"tag": "health-sync", "steps": 60, "delay_seconds": 0.25})
        assert response.status_code == 202
        assert response.json()["notice"]["code"] == "run_timeout"
        agentflow.cancel(response.json()["id"])
    finally:
        agentflow.cancel(run)
