"""List runs, newest first: agentflow runs [--status running,failed] [--workflow name] [--limit 20]."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import CommandError

from ._follow import EXIT_ERROR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", help="only runs in these statuses, separated by commas")
    parser.add_argument("--workflow", help="only runs of this workflow")
    parser.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")


def handle(options: dict[str, Any], out: Any) -> int:
    from django.db.models import Count

    from ..models import RunStatus, StepRun, WorkflowRun
    from ._render import console_for, runs_table

    runs = WorkflowRun.objects.defer("input", "output").order_by("-created_at", "-id")
    if options.get("status"):
        wanted = [s.strip() for s in options["status"].split(",") if s.strip()]
        unknown = [s for s in wanted if s not in RunStatus.values]
        if unknown or not wanted:
            raise CommandError(
                f"unknown status {', '.join(unknown)!r}: use {', '.join(RunStatus.values)}",
                returncode=EXIT_ERROR,
            )
        runs = runs.filter(status__in=wanted)
    if options.get("workflow"):
        runs = runs.filter(workflow=options["workflow"])
    if options["limit"] < 1:
        raise CommandError("--limit must be at least 1", returncode=EXIT_ERROR)
    listed = list(runs[: options["limit"]])
    # The checkpoints so far, as the admin's run list counts them (step_count is only written at the end).
    steps = dict(
        StepRun.objects.filter(run__in=[run.pk for run in listed])
        .values("run")
        .annotate(n=Count("*"))
        .values_list("run", "n")
    )
    console = console_for(out)
    if not listed:
        console.print("No runs.")
        return 0
    console.print(runs_table(listed, steps))
    return 0
