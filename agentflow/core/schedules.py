"""Schedules declared in code: ``@workflow(schedule=Schedule(cron="0 9 * * mon-fri"))``.

This is only the declaration (Django- and Celery-free, checked for its shape here); ``agentflow.schedules``
computes the ticks and starts the runs, and the system checks validate the cron expression and the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CATCH_UP_POLICIES = ("latest", "all", "skip")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Schedule:
    """When to start a run of a workflow, and with which input.

    Exactly one of ``cron`` (five fields: minute hour day-of-month month day-of-week, in ``timezone``,
    default ``TIME_ZONE``) and ``every_seconds`` (ticks at whole multiples of the interval since the Unix
    epoch, so every process computes the same ticks). ``catch_up`` is the policy for ticks missed while no
    scheduler ran (see docs/topics/schedules.md): ``"latest"`` (default), ``"all"`` or ``"skip"``. ``name``
    defaults to the workflow's name (with ``-2``, ``-3``... for its further schedules).
    """

    cron: str | None = None
    every_seconds: float | None = None
    input: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    catch_up: str = "latest"
    timezone: str | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_seconds is None):
            raise TypeError("a Schedule needs exactly one of cron and every_seconds")
        if self.cron is not None and (not isinstance(self.cron, str) or len(self.cron.split()) != 5):
            raise TypeError(f"cron must be a string of five fields, not {self.cron!r}")
        if self.every_seconds is not None and (
            not isinstance(self.every_seconds, int | float)
            or isinstance(self.every_seconds, bool)
            or self.every_seconds <= 0
        ):
            raise TypeError(f"every_seconds must be a positive number, not {self.every_seconds!r}")
        if not isinstance(self.input, dict):
            raise TypeError(f"a schedule's input must be a dict, not {type(self.input).__name__}")
        if self.name is not None and (not isinstance(self.name, str) or not _NAME_RE.match(self.name)):
            raise TypeError(f"a schedule's name must be 1-100 of a-z 0-9 _ . - , not {self.name!r}")
        if self.catch_up not in CATCH_UP_POLICIES:
            raise TypeError(f"catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, not {self.catch_up!r}")
        if self.timezone is not None and not isinstance(self.timezone, str):
            raise TypeError(f"timezone must be a zone name such as 'Europe/Paris', not {self.timezone!r}")

    def as_dict(self, workflow: str) -> dict[str, Any]:
        return {
            "workflow": workflow,
            "cron": self.cron,
            "every_seconds": self.every_seconds,
            "input": self.input,
            "catch_up": self.catch_up,
            "timezone": self.timezone,
        }


def parse_schedules(value: Any) -> tuple[Schedule, ...]:
    """``@workflow(schedule=...)``: None, a ``Schedule`` or a list of them."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    for item in items:
        if not isinstance(item, Schedule):
            raise TypeError(f"schedule must be an agentflow.Schedule or a list of them, not {item!r}")
    return tuple(items)
