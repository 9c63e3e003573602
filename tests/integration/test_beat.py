"""Schedules under real Celery beat processes: two beats at once start exactly one run per tick, and a beat
killed and restarted across ticks loses none and doubles none. A one-second schedule keeps it to seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from agentflow.models import Schedule, WorkflowRun
from agentflow.schedules import Timetable
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MONITOR_QUEUE = "agentflow-beat-monitor"
OVERRIDES = {
    "MONITOR_QUEUE": MONITOR_QUEUE,
    "TASK_QUEUE": "agentflow-beat-runs",  # nothing consumes it: the runs only need to exist
    "SCHEDULER_INTERVAL_SECONDS": 0.2,
}


class Beat:
    """``celery beat`` in its own process group, sending the scheduler's task every 0.2 s."""

    def __init__(self, db_name: str, schedule_file: Path) -> None:
        self.log: list[str] = []
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PGDATABASE": db_name,
            "PYTHONUNBUFFERED": "1",
            "AGENTFLOW_TEST_BEAT": "1",
            "AGENTFLOW_TEST_OVERRIDES": json.dumps(OVERRIDES),
        }
        cmd = [sys.executable, "-m", "celery", "-A", "tests.celery_app", "beat", "-s", str(schedule_file),
               "--max-interval", "1", "-l", "info"]  # fmt: skip
        self.process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def sent(self) -> int:
        return sum("Sending due task agentflow-schedules" in line for line in self.log)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def beats(tmp_path):
    """``beats(name)`` starts a beat whose schedule file is ``name`` (the same name: a restart)."""
    from django.db import connection

    started: list[Beat] = []

    def start(name: str = "beat") -> Beat:
        beat = Beat(connection.settings_dict["NAME"], tmp_path / name)
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.kill()


@pytest.fixture(scope="module")
def scheduler_worker(django_db_setup, redis_client):
    """One worker for the module, executing the scheduler's passes."""
    from tests.conftest import running_workers

    with running_workers(MONITOR_QUEUE, OVERRIDES, name="scheduler") as (worker,):
        yield worker


@pytest.fixture
def every_second(transactional_db, scheduler_worker):
    return Schedule.objects.create(
        name="every-second",
        workflow="api-echo",
        input={"text": "tick"},
        every_seconds=1.0,
        next_run_at=Timetable(every_seconds=1.0).next_after(timezone.now()),
    )


def ticks() -> list[datetime]:
    keys = WorkflowRun.objects.filter(idempotency_key__startswith="schedule:every-second:").values_list(
        "idempotency_key", flat=True
    )
    return sorted(datetime.fromisoformat(key.split(":", 2)[2].replace("Z", "+00:00")) for key in keys)


def assert_one_run_per_tick(found: list[datetime]) -> None:
    assert found, "no run started"
    assert len(found) == len(set(found)), "a tick got two runs"
    expected = [found[0] + timedelta(seconds=i) for i in range(len(found))]
    assert found == expected, "a tick got no run"


def test_two_beats_for_ten_ticks_start_exactly_ten_runs(beats, every_second):
    one, two = beats("one"), beats("two")
    wait_for(lambda: len(ticks()) >= 11, 40, "eleven ticks' runs")
    first = ticks()[0]
    ten = [t for t in ticks() if first <= t < first + timedelta(seconds=10)]
    assert len(ten) == 10
    assert_one_run_per_tick(ticks())
    assert one.sent() > 10 and two.sent() > 10  # both beats drove the scheduler all along


def test_a_beat_killed_and_restarted_across_ticks_loses_and_doubles_none(beats, every_second):
    beat = beats("first")
    wait_for(lambda: len(ticks()) >= 2, 30, "the first runs")
    # SIGKILL: no clean shutdown. The beat stays down across at least two ticks.
    beat.kill()
    killed_at = datetime.now(UTC)
    first = ticks()
    time.sleep(2.5)  # the outage itself, not a synchronisation
    assert ticks()[-1] < killed_at + timedelta(seconds=1)  # nothing started while no beat ran
    beats("first")  # the same schedule file: a restart
    wait_for(lambda: ticks()[-1] >= killed_at + timedelta(seconds=4), 30, "ticks after the restart")
    found = ticks()
    assert found[: len(first)] == first
    assert_one_run_per_tick(found)
