"""Cancel a run: agentflow cancel <run> [--wait]. A queued or waiting run stops at once, a running one at its
next step."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import CommandError

from ._follow import EXIT_ERROR, exit_status, follow, get_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run's id")
    parser.add_argument("--wait", action="store_true", help="wait until the run has stopped")


def handle(options: dict[str, Any], out: Any) -> int:
    from ..models import RunStatus
    from ..runs import cancel

    run = get_run(options["run"])
    if run.is_finished:
        raise CommandError(f"run {run.pk} is {run.status} already", returncode=EXIT_ERROR)
    run = cancel(run)
    if run.status == RunStatus.CANCELLED:
        out.write(f"Cancelled run {run.pk}.")
        return 0
    if run.is_finished:  # it ended before the request reached it
        raise CommandError(f"run {run.pk} is {run.status} already", returncode=EXIT_ERROR)
    out.write(f"Asked run {run.pk} to stop at its next step.")
    if not options["wait"]:
        return 0
    follow(str(run.pk), lambda event, state: None)
    run.refresh_from_db()
    out.write(f"Run {run.pk} is {run.status}.")
    return 0 if run.status == RunStatus.CANCELLED else exit_status(run.status)
