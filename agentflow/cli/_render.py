"""How the subcommands show runs, with rich: a live view on a terminal, plain lines anywhere else.

On a terminal, following a run shows a progress bar, the status text, the latest steps and the streamed
output as the reducer has it (a retried attempt's text disappears as the browser's does). Written to a pipe
or a file, it prints one line per step event and status, the streamed output as it arrives (with a note
when an attempt's text is void), and, at the end, the run's output text, exactly once.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .. import client_state

STATUS_STYLES = {
    "queued": "dim",
    "running": "blue",
    "waiting": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "retrying": "yellow",
    "interrupted": "yellow",
    "lost": "yellow",
}


def console_for(out: Any) -> Console:
    """A console on the command's stdout (Django's OutputWrapper adds newlines of its own: bypass it)."""
    console = Console(file=getattr(out, "_out", out), highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 160  # a pipe or a file has no width: fold long step lines late, not at 80 columns
    return console


def status_text(status: str | None) -> Text:
    status = status or "unknown"
    return Text(status, style=STATUS_STYLES.get(status, ""))


def error_line(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error or "")
    kind, message = error.get("type") or error.get("code") or "", error.get("message") or ""
    return f"{kind}: {message}" if kind and message else str(kind or message)


def cost_line(usage: dict[str, Any]) -> str:
    if not usage.get("calls"):
        return "no LLM call"
    unpriced = f", {usage['unpriced_calls']} unpriced" if usage.get("unpriced_calls") else ""
    return (
        f"{usage['calls']} calls, {usage['total_tokens']:,} tokens "
        f"({usage['prompt_tokens']:,} prompt + {usage['completion_tokens']:,} completion), "
        f"${usage['cost_usd']:.6f}{unpriced}"
    )


def step_tree(state: dict[str, Any], title: str = "steps") -> Tree:
    """The reducer's step tree: each step's status and attempts, each failed attempt's error and retry delay."""
    tree = Tree(title)
    nodes: dict[str, Tree] = {}
    for _depth, step in client_state.step_tree(state):
        label = Text.assemble(
            (step["id"], "bold"), "  ", status_text(step["status"]), f"  attempt {step['attempt']}"
        )
        label.overflow = "fold"
        if step["cached"]:
            label.append("  (cached)", style="dim")
        if step["usage"]:
            label.append(f"  {step['usage']['total_tokens']} tokens ${step['usage']['cost_usd']:.6f}", "dim")
        parent = nodes.get(step["parent"]) if step["parent"] else None
        node = (parent or tree).add(label)
        nodes[step["id"]] = node
        for attempt in step["attempts"]:
            if attempt["status"] in ("failed", "lost"):
                why = error_line(attempt["error"]) if attempt["error"] else "its worker was lost"
                delay = attempt["delay_seconds"]
                retry = f", retried after {delay} s" if delay is not None else ""
                line = f"attempt {attempt['attempt']} (epoch {attempt['epoch']}) {attempt['status']}: {why}{retry}"
                node.add(Text(line, overflow="fold"))
    return tree


class Follower:
    """Shows a followed run's events: a rich ``Live`` view on a terminal, lines elsewhere."""

    def __init__(self, console: Console, run_id: str, workflow: str) -> None:
        self.console, self.run_id, self.workflow = console, run_id, workflow
        self.live: Live | None = None
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=console
        )
        self.task = self.progress.add_task(workflow, total=1.0)
        self.shown = 0  # characters of the output text printed so far (line mode)
        self.voided = 0
        self.mid_line = False

    def __enter__(self) -> Follower:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def __call__(self, event: dict[str, Any], state: dict[str, Any]) -> None:
        if self.live is not None:
            self.live.update(self.view(state))
        else:
            self.line(event, state)

    # -- a terminal: everything from the state ------------------------------------------------------------

    def view(self, state: dict[str, Any]) -> Group:
        progress = state["progress"]
        self.progress.update(
            self.task,
            completed=1.0 if state["status"] == "completed" else (progress or 0.0),
            description=f"{self.workflow}: {state['status_text'] or state['status'] or ''}",
        )
        lines = state["output_text"].splitlines()[-12:]
        parts: list[Any] = [self.progress, Text.assemble("run ", status_text(state["status"]))]
        active = [s for s in state["steps"].values() if s["status"] not in ("completed",)][-6:]
        for step in active:
            parts.append(Text.assemble("  ", (step["id"], "bold"), " ", status_text(step["status"])))
        if lines:
            parts.append(Text("\n".join(lines)))
        for label, text in state["texts"].items():
            parts.append(Text.assemble((f"[{label}] ", "bold"), text[-200:]))
        return Group(*parts)

    # -- a pipe: one line per event, the streamed text as it comes -----------------------------------------

    def line(self, event: dict[str, Any], state: dict[str, Any]) -> None:
        kind = event["type"]
        if state["voided"] > self.voided:
            dropped = state["voided"] - self.voided
            self.voided = state["voided"]
            self.shown = len(state["output_text"])
            source = event["step"] or (
                "the steps run again" if kind == "run.resumed" else "a lost incarnation"
            )
            self.say(f"(void: {dropped} content events of {source} were dropped)")
        if kind == "output.delta":
            text = state["output_text"][self.shown :]
            self.shown = len(state["output_text"])
            if text:
                self.console.out(text, end="", highlight=False)
                self.mid_line = not text.endswith("\n")
            return
        if kind == "status":
            progress = event["data"].get("progress")
            share = f" ({progress:.0%})" if isinstance(progress, int | float) else ""
            self.say(f"» {event['data'].get('text')}{share}")
        elif kind == "step.started":
            self.say(f"  ▸ {event['step']} started (attempt {event['attempt']})")
        elif kind == "step.retrying":
            data = event["data"]
            delay = data.get("delay_seconds")
            after = f", next attempt in {delay} s" if delay is not None else ""
            self.say(
                f"  ↻ {event['step']} attempt {event['attempt']} failed: {error_line(data.get('error'))}{after}"
            )
        elif kind == "step.completed":
            self.say(f"  ✓ {event['step']} completed" + (" (cached)" if event["data"].get("cached") else ""))
        elif kind == "step.failed":
            self.say(f"  ✗ {event['step']} failed: {error_line(event['data'].get('error'))}")
        elif kind in ("run.recovered", "run.resumed"):
            again = len(event["data"].get("void_steps") or [])
            self.say(
                f"run {kind.split('.')[1]} (epoch {event['epoch']}): "
                f"{again} step{'' if again == 1 else 's'} run again"
            )
        elif kind == "run.waiting":
            wake_at = event["data"].get("wake_at")
            until = f" until {wake_at}" if wake_at else ""  # no time-out: until whatever it waits for comes
            self.say(f"run waiting ({event['data'].get('reason')}){until}")
        elif kind == "input.requested":
            data = event["data"]
            self.say(
                f"? waiting for input {data.get('key')!r}: {data.get('prompt') or ''} "
                f"(manage.py agentflow answer {self.run_id} {data.get('key')} '<JSON>')"
            )
        elif kind in (
            "input.received",
            "input.timed_out",
            "child.started",
            "child.completed",
            "child.failed",
        ):
            self.say(f"  {kind} {event['step']}")
        elif kind in (
            "run.queued",
            "run.started",
            "run.continued",
            "run.completed",
            "run.failed",
            "run.cancelled",
        ):
            self.say(f"{kind}")

    def say(self, text: str) -> None:
        if self.mid_line:
            self.console.out("")
            self.mid_line = False
        self.console.out(text, highlight=False)


def summary(console: Console, state: dict[str, Any], run: Any) -> None:
    """What a run ended with: its output text, its data texts, usage and cost, status and error."""
    if state["output_text"]:
        console.rule("output text")
        console.out(state["output_text"], highlight=False)
    for label, text in state["texts"].items():
        console.rule(escape(label))
        console.out(text, highlight=False)
    console.rule()
    line = Text.assemble("run ", (str(run.pk), "bold"), " ", status_text(run.status))
    if run.duration_seconds is not None:
        line.append(f" in {run.duration_seconds:.1f} s")
    console.print(line)
    console.print(f"usage: {cost_line(state['usage'])}")
    if run.error:
        console.print(Text(f"error: {error_line(run.error)}", style="red"))
    elif run.output is not None:
        console.print(
            "output: " + json.dumps(run.output, ensure_ascii=False)[:2000], highlight=False, markup=False
        )


def runs_table(runs: list[Any], steps: dict[Any, int]) -> Table:
    table = Table("run", "workflow", "status", "steps", "created", "duration", "cost", box=None)
    for run in runs:
        usage = run.usage or {}
        duration = run.duration_seconds
        table.add_row(
            str(run.pk),
            run.workflow,
            status_text(run.status),
            str(steps.get(run.pk, 0)),
            run.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            "" if duration is None else f"{duration:.1f} s",
            f"${float(usage.get('cost_usd') or 0):.6f}" if usage.get("calls") else "",
        )
    return table
