"""Show a run: its status, usage and cost, output or error, and its step tree: agentflow show <run>."""

from __future__ import annotations

import argparse
from typing import Any

from ._follow import exit_status, get_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run's id")


def handle(options: dict[str, Any], out: Any) -> int:
    from rich.text import Text

    from .. import archive, client_state
    from ._render import console_for, status_text, step_tree, summary

    run = get_run(options["run"])
    # The tree comes from the events (running and retrying steps, every attempt's error), as a page shows it.
    state = client_state.reduce(archive.history(str(run.pk)))
    console = console_for(out)
    console.print(Text.assemble("workflow ", (run.workflow, "bold"), "  status ", status_text(run.status)))
    if state["status_text"] and not state["done"]:
        progress = f" ({state['progress']:.0%})" if isinstance(state["progress"], int | float) else ""
        console.print(f"progress: {state['status_text']}{progress}")
    console.print(
        f"created {run.created_at:%Y-%m-%d %H:%M:%S} · epoch {run.epoch} · recoveries {run.recoveries}"
    )
    console.print(step_tree(state, title=f"steps ({len(state['steps'])})"))
    summary(console, state, run)
    return exit_status(run.status)
