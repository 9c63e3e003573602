"""Resume a failed or cancelled run from its last checkpoint: agentflow resume <run> [--follow]."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import CommandError

from ._follow import EXIT_ERROR, get_run, last_event_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run's id")
    parser.add_argument("--follow", action="store_true", help="follow the resumed run until it ends")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-usd", type=float, help="replace the run's budget (USD)")
    budget.add_argument("--no-budget", action="store_true", help="remove the run's budget")


def handle(options: dict[str, Any], out: Any) -> int:
    from ..core.errors import RunNotResumable
    from ..resuming import resume
    from . import tail

    run = get_run(options["run"])
    last = last_event_id(run)  # its terminal event: show what comes after it
    kwargs: dict[str, Any] = {}
    if options.get("no_budget"):
        kwargs["budget"] = None
    elif options.get("budget_usd") is not None:
        kwargs["budget"] = {"usd": options["budget_usd"]}
    try:
        run = resume(run, **kwargs)
    except (RunNotResumable, TypeError) as exc:
        raise CommandError(str(exc), returncode=EXIT_ERROR) from None
    out.write(f"Resumed run {run.pk} (epoch {run.epoch}).")
    if not options["follow"]:
        return 0
    # The whole history is reduced (the steps of earlier incarnations count), only the new part is shown.
    return tail.follow_and_report(str(run.pk), out, show_after=last)
