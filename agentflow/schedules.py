"""Schedules: runs that start by themselves, exactly one per tick, driven by Celery beat.

Celery beat is the clock, not the scheduler: it sends the ``agentflow.schedules`` task every
``SCHEDULER_INTERVAL_SECONDS`` (``agentflow.tasks.beat_schedule()``), and each pass of :func:`dispatch`
starts the runs of every tick that has come due since the last pass. So any number of beat processes may
run (for availability), and a beat restarted, late or down for a while loses nothing:

- **ticks are computed, not observed**: a cron expression's times, or whole multiples of ``every_seconds``
  since the Unix epoch, identical in every process whenever it looks;
- **one run per tick**: a tick's run has the idempotency key ``schedule:<name>:<tick>`` (the unique index
  on runs makes a second start return the first run), and passes lock the schedule's row while they start
  its ticks, so two beats' passes never even try twice;
- **missed ticks** (due longer ago than ``SCHEDULE_GRACE_SECONDS``: no pass ran for that long) follow the
  schedule's ``catch_up`` policy: ``latest`` starts one run, for the most recent of them, unless a tick
  within the grace runs anyway; ``all`` starts one for each (at most 1,000 per pass); ``skip`` starts none.
  Ticks within the grace always get their run.

django-celery-beat was considered first: it stores periodic tasks in the database and edits them in the
admin, but its ``DatabaseScheduler`` is a single-process clock (two beat processes send every task twice),
interval schedules are measured from each process's last send (so two processes never agree on a tick),
and it would add a required app with its own tables. Its ``crontab_parser`` lineage lives on here: cron
fields are parsed by Celery's own ``celery.schedules.crontab_parser``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .conf import agentflow_settings
from .core.schedules import Schedule as Declared
from .core.workflow import registry
from .models import Schedule, ScheduleSource

logger = logging.getLogger("agentflow.schedules")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TICKS_PER_PASS = 1000
_SEARCH_DAYS = 366 * 5  # a cron expression that matches no day in five years (Feb 30) never ticks


class Timetable:
    """The ticks of a cron expression or an interval: ``next_after(t)`` and ``latest_at(t)``."""

    def __init__(self, *, cron: str = "", every_seconds: float | None = None, tz: str = "") -> None:
        if bool(cron) == (every_seconds is not None):
            raise ValueError("a schedule needs exactly one of cron and every_seconds")
        self.every: timedelta | None = None
        if every_seconds is not None:
            if not every_seconds > 0:
                raise ValueError("every_seconds must be greater than 0")
            self.every = timedelta(microseconds=round(every_seconds * 1_000_000))
            return
        from celery.schedules import crontab_parser

        fields = cron.split()
        if len(fields) != 5:
            raise ValueError(
                f"a cron expression has five fields (minute hour day month weekday), not {cron!r}"
            )
        minute, hour, dom, month, dow = fields
        self.minutes = sorted(crontab_parser(60).parse(minute))
        self.hours = sorted(crontab_parser(24).parse(hour))
        self.days = set(crontab_parser(31, 1).parse(dom))
        self.months = set(crontab_parser(12, 1).parse(month))
        self.weekdays = set(crontab_parser(7).parse(dow))
        # As cron does: with both day fields restricted, a day matching either one is a day to run.
        self.either_day = dom != "*" and dow != "*"
        try:
            self.tz = ZoneInfo(tz or settings.TIME_ZONE or "UTC")
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {tz!r}") from exc

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month, in_week = day.day in self.days, (day.weekday() + 1) % 7 in self.weekdays
        return (in_month or in_week) if self.either_day else (in_month and in_week)

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t``."""
        if self.every is not None:
            return EPOCH + ((t - EPOCH) // self.every + 1) * self.every
        local = t.astimezone(self.tz).replace(second=0, microsecond=0, tzinfo=None) + timedelta(minutes=1)
        for offset in range(_SEARCH_DAYS):
            day = local.date() + timedelta(days=offset)
            if not self._day_matches(day):
                continue
            for hour in self.hours:
                for minute in self.minutes:
                    candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz)
                    if candidate.replace(tzinfo=None) >= local and candidate > t:
                        return candidate.astimezone(UTC)
        raise ValueError("the cron expression matches no time in the next five years")

    def latest_at(self, t: datetime) -> datetime | None:
        """The last tick at or before ``t`` (None if there is none within five years)."""
        if self.every is not None:
            return EPOCH + ((t - EPOCH) // self.every) * self.every
        local = t.astimezone(self.tz).replace(second=0, microsecond=0, tzinfo=None)
        for offset in range(_SEARCH_DAYS):
            day = local.date() - timedelta(days=offset)
            if not self._day_matches(day):
                continue
            for hour in reversed(self.hours):
                for minute in reversed(self.minutes):
                    candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz)
                    if candidate.replace(tzinfo=None) <= local and candidate <= t:
                        return candidate.astimezone(UTC)
        return None


def timetable_of(schedule: Schedule) -> Timetable:
    return Timetable(cron=schedule.cron, every_seconds=schedule.every_seconds, tz=schedule.timezone)


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of a tick's run: the same in every process that computes the tick."""
    return f"schedule:{name}:{tick.astimezone(UTC).isoformat(timespec='microseconds').replace('+00:00', 'Z')}"


def due_ticks(schedule: Schedule, timetable: Timetable, now: datetime) -> list[datetime]:
    """The ticks to start now: from ``next_run_at`` (the first tick not started) to ``now``, as the
    schedule's ``catch_up`` policy says for those older than ``SCHEDULE_GRACE_SECONDS``."""
    first = schedule.next_run_at
    if first is None or first > now:
        return []
    ticks: list[datetime] = []
    if schedule.catch_up == "all":
        tick = first
        while tick <= now and len(ticks) < MAX_TICKS_PER_PASS:
            ticks.append(tick)
            tick = timetable.next_after(tick)
        return ticks
    grace_start = now - timedelta(seconds=agentflow_settings.schedule_grace_seconds)
    tick = first if first >= grace_start else timetable.next_after(grace_start - timedelta(microseconds=1))
    while tick <= now and len(ticks) < MAX_TICKS_PER_PASS:
        ticks.append(tick)
        tick = timetable.next_after(tick)
    if not ticks and first < grace_start and schedule.catch_up == "latest":
        latest = timetable.latest_at(grace_start - timedelta(microseconds=1))
        ticks = [latest] if latest is not None and latest >= first else []
    return ticks


# -- declared schedules ----------------------------------------------------------------------------------------


def declared() -> dict[str, tuple[str, dict[str, Any]]]:
    """Schedules of ``@workflow(schedule=...)`` and ``AGENTFLOW["SCHEDULES"]``: name -> (source, fields)."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for wf in registry.all():
        for index, item in enumerate(wf.schedules):
            name = item.name or (wf.name if index == 0 else f"{wf.name}-{index + 1}")
            found[name] = (ScheduleSource.CODE, item.as_dict(wf.name))
    for name, spec in (agentflow_settings.schedules or {}).items():
        found[name] = (ScheduleSource.SETTINGS, settings_schedule(spec).as_dict(spec.get("workflow", "")))
    return found


def settings_schedule(spec: dict[str, Any]) -> Declared:
    """One entry of ``AGENTFLOW["SCHEDULES"]`` as a ``Schedule`` (``TypeError`` for a malformed one)."""
    if not isinstance(spec, dict):
        raise TypeError(f"a schedule is a dict, not {type(spec).__name__}")
    unknown = set(spec) - {"workflow", "cron", "every_seconds", "input", "catch_up", "timezone"}
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}")
    if not isinstance(spec.get("workflow"), str) or not spec["workflow"]:
        raise TypeError("'workflow' (the workflow's name) is required")
    options = {k: v for k, v in spec.items() if k != "workflow"}
    options.setdefault("input", {})
    return Declared(**options)


def _fields(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "workflow": spec["workflow"],
        "input": spec["input"] or {},
        "cron": spec["cron"] or "",
        "every_seconds": spec["every_seconds"],
        "timezone": spec["timezone"] or "",
        "catch_up": spec["catch_up"],
    }


def sync_declared(now: datetime) -> None:
    """Keep the declared schedules' rows in step with the code and settings (one query when nothing changed).
    A row whose declaration is gone is disabled, not deleted: its history stays visible."""
    wanted = declared()
    rows = {row.name: row for row in Schedule.objects.all()}
    for name, (source, spec) in wanted.items():
        fields = _fields(spec)
        row = rows.get(name)
        if row is not None and row.source == ScheduleSource.ADMIN:
            continue  # the admin's schedule of that name wins (check agentflow.E045 reports the clash)
        current = None if row is None else {key: getattr(row, key) for key in fields}
        if row is not None and current == fields and row.enabled and row.source == source:
            continue
        try:
            timetable = Timetable(
                cron=fields["cron"], every_seconds=fields["every_seconds"], tz=fields["timezone"]
            )
        except ValueError as exc:
            logger.error("schedule %s is invalid: %s", name, exc)
            continue
        timing_changed = current is None or any(
            current[key] != fields[key] for key in ("cron", "every_seconds", "timezone")
        )
        try:
            with transaction.atomic():
                if row is None:
                    Schedule.objects.create(
                        name=name, source=source, next_run_at=timetable.next_after(now), **fields
                    )
                else:
                    updates = {**fields, "source": source, "enabled": True}
                    if timing_changed or not row.enabled:
                        updates["next_run_at"] = timetable.next_after(now)
                    Schedule.objects.filter(pk=row.pk).update(**updates, updated_at=now)
        except IntegrityError:
            pass  # another scheduler created it at the same moment
    gone = [row.pk for name, row in rows.items() if row.source != ScheduleSource.ADMIN and name not in wanted]
    if gone:
        Schedule.objects.filter(pk__in=gone, enabled=True).update(enabled=False, updated_at=now)


# -- dispatching -----------------------------------------------------------------------------------------------


@dataclass
class ScheduleReport:
    started: int = 0
    skipped: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def dispatch(now: datetime | None = None) -> ScheduleReport:
    """Start the runs of every tick that came due: what the ``agentflow.schedules`` task does each time beat
    sends it. Safe to run from any number of processes at once."""
    now = now or timezone.now()
    report = ScheduleReport()
    sync_declared(now)
    due = Schedule.objects.filter(enabled=True, next_run_at__lte=now).values_list("pk", flat=True)
    for pk in list(due[:500]):
        with transaction.atomic():
            # A second dispatcher waits here, then finds next_run_at moved past now and does nothing.
            row = (
                Schedule.objects.select_for_update().filter(pk=pk, enabled=True, next_run_at__lte=now).first()
            )
            if row is None:
                continue
            _start_ticks(row, now, report)
    return report


def _start_ticks(row: Schedule, now: datetime, report: ScheduleReport) -> None:
    from .runs import start

    try:
        timetable = timetable_of(row)
    except ValueError as exc:
        row.last_error, row.enabled = f"invalid schedule: {exc}", False
        row.save(update_fields=["last_error", "enabled", "updated_at"])
        report.failed += 1
        return
    ticks = due_ticks(row, timetable, now)
    report.skipped += _count_missed(row, timetable, ticks, now)
    error = ""
    for tick in ticks:
        try:
            with transaction.atomic():
                start(row.workflow, row.input, owner=row.owner_id, idempotency_key=tick_key(row.name, tick))
        except (
            Exception
        ) as exc:  # an unknown workflow, an input it rejects: recorded, and the schedule moves on
            logger.error("schedule %s: cannot start its run for %s: %s", row.name, tick.isoformat(), exc)
            error = f"{tick.isoformat()}: {type(exc).__name__}: {exc}"
            report.failed += 1
        else:
            report.started += 1
    if ticks:
        row.last_tick = ticks[-1]
    # "all" may have more missed ticks than one pass starts: the next pass goes on from there.
    last = ticks[-1] if ticks and row.catch_up == "all" and len(ticks) == MAX_TICKS_PER_PASS else now
    row.next_run_at = timetable.next_after(last)
    row.last_error = error
    row.save(update_fields=["last_tick", "next_run_at", "last_error", "updated_at"])


def _count_missed(row: Schedule, timetable: Timetable, ticks: list[datetime], now: datetime) -> int:
    """How many due ticks get no run (logged: a scheduler was down for a while)."""
    if row.catch_up == "all" or row.next_run_at is None:
        return 0
    missed, tick = 0, row.next_run_at
    while tick <= now and missed < MAX_TICKS_PER_PASS:
        missed += tick not in ticks
        tick = timetable.next_after(tick)
    if missed:
        logger.warning(
            "schedule %s: %d tick(s) since %s were missed (catch_up=%s)",
            row.name,
            missed,
            row.next_run_at.isoformat(),
            row.catch_up,
        )
    return missed
