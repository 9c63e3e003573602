"""Follow a run: its events from the start, then live, until it ends: agentflow tail <run>."""

from __future__ import annotations

import argparse
from typing import Any

from ._follow import exit_status, follow, get_run
from ._render import Follower, console_for, summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run's id")
    parser.add_argument("--after", help="only events after this event id (default: from the start)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop following after this many seconds (exit status 4)"
    )


def handle(options: dict[str, Any], out: Any) -> int:
    return follow_and_report(
        options["run"], out, after=options.get("after"), timeout_seconds=options.get("timeout")
    )


def follow_and_report(
    run_id: str,
    out: Any,
    *,
    after: str | None = None,
    show_after: str | None = None,
    timeout_seconds: float | None = None,
) -> int:
    """Follow the run, show it as it goes (the events after ``show_after``) and what it ended with; return the
    exit status (0: completed)."""
    run = get_run(run_id)
    console = console_for(out)
    with Follower(console, str(run.pk), run.workflow) as show:
        state = follow(str(run.pk), show, after=after, show_after=show_after, timeout_seconds=timeout_seconds)
    run.refresh_from_db()
    summary(console, state, run)
    return exit_status(run.status)
