"""System checks of schedules: ``AGENTFLOW["SCHEDULES"]``, the scheduler's durations, and every declared
schedule (settings and ``@workflow(schedule=...)``) against the registered workflows. Ids E043-E045 and
W010-W011; docs/reference/checks.md lists them."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import DEFAULTS

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@register(Tags.compatibility)
def check_schedules(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from .core.errors import InvalidInput, WorkflowNotFound
    from .core.workflow import registry
    from .schedules import Timetable, settings_schedule

    user = getattr(settings, "AGENTFLOW", {})
    if not isinstance(user, dict):
        return []  # agentflow.E001
    merged = {**DEFAULTS, **user}
    errors: list[CheckMessage] = []
    for key in ("SCHEDULER_INTERVAL_SECONDS", "SCHEDULE_GRACE_SECONDS"):
        if not _positive(merged[key]):
            errors.append(
                Error(f"AGENTFLOW[{key!r}] must be a positive number of seconds.", id="agentflow.E044")
            )

    declared: dict[str, list[tuple[str, Any]]] = {}
    raw = merged["SCHEDULES"]
    if not isinstance(raw, dict):
        errors.append(
            Error("AGENTFLOW['SCHEDULES'] must be a dict of schedules by name.", id="agentflow.E043")
        )
        raw = {}
    for name, spec in raw.items():
        where = f"AGENTFLOW['SCHEDULES'][{name!r}]"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            errors.append(Error(f"{where}: a schedule's name is 1-100 of a-z 0-9 _ . -", id="agentflow.E043"))
            continue
        try:
            schedule = settings_schedule(spec)
        except TypeError as exc:
            errors.append(Error(f"{where} is invalid: {exc}.", id="agentflow.E043"))
            continue
        declared.setdefault(name, []).append((spec["workflow"], schedule))
    for wf in registry.all():
        for index, schedule in enumerate(wf.schedules):
            name = schedule.name or (wf.name if index == 0 else f"{wf.name}-{index + 1}")
            declared.setdefault(name, []).append((wf.name, schedule))

    interval = merged["SCHEDULER_INTERVAL_SECONDS"]
    for name, entries in declared.items():
        if len(entries) > 1:
            errors.append(
                Error(
                    f"Schedule {name!r} is declared {len(entries)} times.",
                    hint="Give each its own name.",
                    id="agentflow.E045",
                )
            )
        for workflow_name, schedule in entries:
            problem = None
            try:
                Timetable(
                    cron=schedule.cron or "", every_seconds=schedule.every_seconds, tz=schedule.timezone or ""
                )
                registry.get(workflow_name).validate_input(schedule.input)
            except ValueError as exc:
                problem = str(exc)
            except WorkflowNotFound:
                problem = f"no workflow is named {workflow_name!r}"
            except InvalidInput as exc:
                problem = f"its input is invalid for {workflow_name!r}: {exc.details}"
            if problem:
                errors.append(
                    Error(f"Schedule {name!r} cannot run: {problem.rstrip('.')}.", id="agentflow.E045")
                )
            elif (
                _positive(interval)
                and schedule.every_seconds is not None
                and schedule.every_seconds < interval
            ):
                errors.append(
                    Warning(
                        f"Schedule {name!r} ticks every {schedule.every_seconds}s, more often than the scheduler "
                        f"runs (SCHEDULER_INTERVAL_SECONDS = {interval}): its runs start late, several at once.",
                        id="agentflow.W010",
                    )
                )
    grace = merged["SCHEDULE_GRACE_SECONDS"]
    if _positive(grace) and _positive(interval) and grace < 2 * interval:
        errors.append(
            Warning(
                "AGENTFLOW['SCHEDULE_GRACE_SECONDS'] is less than twice SCHEDULER_INTERVAL_SECONDS: a scheduler pass "
                "a little late would count ticks as missed.",
                id="agentflow.W011",
            )
        )
    return errors
