"""Schedules without beat: the timetables, one run per tick whoever dispatches, the missed-tick policies,
declared schedules and their checks. (Real beat processes: tests/integration/test_beat.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from agentflow.conf import agentflow_settings
from agentflow.models import Schedule, WorkflowRun
from agentflow.schedules import Timetable, dispatch, tick_key

T0 = datetime(2025, 3, 3, 8, 59, 30, tzinfo=UTC)  # a Monday


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_interval_ticks_are_whole_multiples_since_the_epoch():
    table = Timetable(every_seconds=60)
    assert table.next_after(T0) == at(2025, 3, 3, 9, 0)
    assert table.next_after(at(2025, 3, 3, 9, 0)) == at(2025, 3, 3, 9, 1)
    assert table.latest_at(T0) == at(2025, 3, 3, 8, 59)
    assert Timetable(every_seconds=0.25).next_after(at(2025, 1, 1, 0, 0)) == at(2025, 1, 1) + timedelta(
        seconds=0.25
    )


def test_cron_ticks_in_the_schedules_time_zone():
    table = Timetable(cron="0 9 * * mon-fri", tz="Europe/Paris")  # 08:00 UTC in winter
    assert table.next_after(T0) == at(2025, 3, 4, 8, 0)
    assert table.latest_at(T0) == at(2025, 3, 3, 8, 0)
    friday = at(2025, 3, 7, 9, 0)
    assert table.next_after(friday) == at(2025, 3, 10, 8, 0)  # the weekend skipped
    # Both day fields restricted: either matches, as in cron.
    either = Timetable(cron="0 0 1 * mon", tz="UTC")
    assert either.next_after(at(2025, 3, 1, 12, 0)) == at(2025, 3, 3, 0, 0)
    assert Timetable(cron="*/15 * * * *", tz="UTC").next_after(T0) == at(2025, 3, 3, 9, 0)
    with pytest.raises(ValueError):
        Timetable(cron="61 * * * *")
    with pytest.raises(ValueError):
        Timetable(cron="* * * *")
    with pytest.raises(ValueError):
        Timetable(cron="* * * * *", tz="Mars/Olympus")


@pytest.fixture
def every_minute(db):
    def make(**fields):
        fields.setdefault("next_run_at", at(2025, 3, 3, 9, 0))
        return Schedule.objects.create(
            name=fields.pop("name", "minutely"),
            workflow="api-echo",
            input={"text": "tick"},
            every_seconds=60,
            **fields,
        )

    return make


def runs_of(name: str) -> list[str]:
    return sorted(
        WorkflowRun.objects.filter(idempotency_key__startswith=f"schedule:{name}:").values_list(
            "idempotency_key", flat=True
        )
    )


def keys(name: str, *ticks: datetime) -> list[str]:
    return sorted(tick_key(name, tick) for tick in ticks)


def test_one_run_per_tick_however_many_dispatchers_and_passes(
    every_minute, django_capture_on_commit_callbacks
):
    schedule = every_minute()
    now = at(2025, 3, 3, 9, 0, 2)
    with django_capture_on_commit_callbacks():
        assert dispatch(now).started == 1
        assert dispatch(now).started == 0  # a second beat's pass, same moment
        # The row's state lost (a restored backup, say): the tick's idempotency key still holds.
        Schedule.objects.filter(pk=schedule.pk).update(next_run_at=at(2025, 3, 3, 9, 0))
        dispatch(now)
    assert runs_of("minutely") == keys("minutely", at(2025, 3, 3, 9, 0))
    schedule.refresh_from_db()
    assert schedule.next_run_at == at(2025, 3, 3, 9, 1) and schedule.last_tick == at(2025, 3, 3, 9, 0)
    run = WorkflowRun.objects.get()
    assert run.workflow == "api-echo" and run.input["text"] == "tick" and run.status == "queued"


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        # Down from 09:00 to 09:10:30 with a grace of 5 minutes: 09:06 to 09:10 are within it.
        ("latest", [(9, 6), (9, 7), (9, 8), (9, 9), (9, 10)]),
        ("skip", [(9, 6), (9, 7), (9, 8), (9, 9), (9, 10)]),
        ("all", [(9, m) for m in range(11)]),
    ],
)
def test_missed_ticks_follow_the_policy_and_ticks_within_the_grace_always_run(
    every_minute, catch_up, expected
):
    every_minute(catch_up=catch_up)
    dispatch(at(2025, 3, 3, 9, 10, 30))
    assert runs_of("minutely") == keys("minutely", *(at(2025, 3, 3, h, m) for h, m in expected))


@pytest.mark.parametrize(("catch_up", "expected"), [("latest", [(8, 54)]), ("skip", [])])
def test_ticks_all_older_than_the_grace_collapse_into_the_latest_or_are_skipped(
    every_minute, catch_up, expected
):
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "SCHEDULE_GRACE_SECONDS": 300.0}):
        # A daily schedule last due at 08:54, dispatched at 09:00: its tick is 6 minutes old.
        Schedule.objects.create(
            name="daily", workflow="api-echo", input={"text": "x"}, cron="54 8 * * *", timezone="UTC",
            catch_up=catch_up, next_run_at=at(2025, 3, 1, 8, 54),
        )  # fmt: skip
        dispatch(at(2025, 3, 3, 9, 0))
    assert runs_of("daily") == keys("daily", *(at(2025, 3, 3, h, m) for h, m in expected))
    assert Schedule.objects.get(name="daily").next_run_at == at(2025, 3, 4, 8, 54)


def test_a_schedule_that_cannot_start_its_run_says_why_and_moves_on(every_minute):
    schedule = every_minute(name="broken")
    Schedule.objects.filter(pk=schedule.pk).update(workflow="no-such-workflow")
    report = dispatch(at(2025, 3, 3, 9, 0, 1))
    assert report.failed == 1 and report.started == 0
    schedule.refresh_from_db()
    assert "WorkflowNotFound" in schedule.last_error and schedule.next_run_at == at(2025, 3, 3, 9, 1)


def test_declared_schedules_are_kept_in_step_with_code_and_settings(db):
    declared = {"nightly": {"workflow": "api-echo", "cron": "0 3 * * *", "input": {"text": "n"}}}
    now = at(2025, 3, 3, 9, 0)
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "SCHEDULES": declared}):
        dispatch(now)
        code = Schedule.objects.get(name="scheduled-hello")
        assert (code.source, code.every_seconds, code.input) == ("code", 3600, {"who": "world"})
        assert code.next_run_at == at(2025, 3, 3, 10, 0)
        nightly = Schedule.objects.get(name="nightly")
        assert (nightly.source, nightly.cron, nightly.enabled) == ("settings", "0 3 * * *", True)
    dispatch(now)  # the setting is gone: its row stays, disabled
    assert Schedule.objects.get(name="nightly").enabled is False


MINE = {"agentflow.E043", "agentflow.E044", "agentflow.E045", "agentflow.W010", "agentflow.W011"}


def test_schedule_checks(db):
    bad = {
        "ok": {"workflow": "api-echo", "every_seconds": 60, "input": {"text": "x"}},
        "Bad Name": {"workflow": "api-echo", "every_seconds": 60},
        "typo": {"workflow": "api-echo", "evry_seconds": 60},
        "ghost": {"workflow": "no-such-workflow", "every_seconds": 60},
        "bad-input": {"workflow": "api-echo", "every_seconds": 60, "input": {"nope": 1}},
        "bad-cron": {"workflow": "api-echo", "cron": "99 * * * *", "input": {"text": "x"}},
        "fast": {"workflow": "api-echo", "every_seconds": 1, "input": {"text": "x"}},
    }
    overrides = {"SCHEDULES": bad, "SCHEDULER_INTERVAL_SECONDS": 5.0, "SCHEDULE_GRACE_SECONDS": 6.0}
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **overrides}):
        found = [(m.id, m.msg) for m in run_checks() if m.id in MINE]
    ids = sorted(i for i, _ in found)
    assert ids == sorted(
        ["agentflow.E043"] * 2 + ["agentflow.E045"] * 3 + ["agentflow.W010", "agentflow.W011"]
    ), found
    with override_settings(
        AGENTFLOW={**agentflow_settings.user_settings, "SCHEDULES": [], "SCHEDULER_INTERVAL_SECONDS": 0}
    ):
        assert sorted(m.id for m in run_checks() if m.id in ("agentflow.E043", "agentflow.E044")) == [
            "agentflow.E043",
            "agentflow.E044",
        ]
