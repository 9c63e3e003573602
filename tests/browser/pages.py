"""What the browser tests read from the pages (as rendered) and compare with the database and the stream."""

from __future__ import annotations

import re
import time
from typing import Any

from agentflow import archive
from agentflow.models import StepRun, WorkflowRun
from tests.conftest import apply_voiding, wait_for

# The example run page as rendered: innerText, as a reader sees it.
EXAMPLE_PAGE = """() => {
  const text = (selector) => document.querySelector(selector).innerText;
  return {
    status: text('#status'),
    output: text('#output'),
    sections: Object.fromEntries([...document.querySelectorAll('#sections .section')]
      .map((s) => [s.dataset.label, s.querySelector('.text').innerText])),
    headings: [...document.querySelectorAll('#sections .section h3')].map((h) => h.innerText),
    steps: Object.fromEntries([...document.querySelectorAll('#step-tree li')]
      .map((li) => [li.dataset.step, [li.dataset.status, Number(li.dataset.attempt)]])),
    cost: text('#cost'),
    progress: document.querySelector('#progress-bar').style.width,
    connections: Number(document.querySelector('#run').dataset.connections || 0),
  };
}"""

ADMIN_PAGE = """() => {
  const text = (selector) => document.querySelector(selector)?.innerText ?? null;
  return {
    status: text('.field-status_display .readonly'),
    live_status: text('#agentflow-live-status'),
    steps_field: text('.field-steps_display .readonly'),
    last_event: text('.field-last_event .readonly'),
    output: document.querySelector('#agentflow-output').innerText,
    texts: Object.fromEntries([...document.querySelectorAll('#agentflow-texts .agentflow-text')]
      .map((block) => [block.dataset.label, block.querySelector('pre').innerText])),
    steps: Object.fromEntries([...document.querySelectorAll('#agentflow-steps tr.agentflow-step')]
      .map((row) => [row.querySelector('code').innerText,
                     [row.dataset.status, Number(row.children[3].innerText), row.querySelector('.agentflow-error').innerText]])),
    usage: text('#agentflow-usage'),
    connection: text('#agentflow-connection'),
    events: [...document.querySelectorAll('#agentflow-events tr.agentflow-event td:first-child')].map((td) => td.innerText),
  };
}"""


def events_of(run_id: str) -> list[dict[str, Any]]:
    return archive.history(run_id)


def wait_for_event(run_id: str, predicate: Any, what: str, timeout_seconds: float = 60) -> dict[str, Any]:
    """The first event of the run's stream that satisfies ``predicate``, once there is one."""

    def found() -> dict[str, Any] | None:
        return next((event for event in events_of(run_id) if predicate(event)), None)

    return wait_for(found, timeout_seconds, what, poll_seconds=0.1)  # type: ignore[return-value]


def wait_for_progress(run_id: str, events: int, what: str, timeout_seconds: float = 60) -> None:
    """Until the run's stream has ``events`` more events than now: the run went on (the worker is alive)."""
    target = len(events_of(run_id)) + events
    wait_for(lambda: len(events_of(run_id)) >= target, timeout_seconds, what, poll_seconds=0.1)


def streamed_output(run_id: str) -> str:
    """The run's output text by the documented voiding rules (tests/conftest.py), not by agentflow.js."""
    return "".join(e["data"]["text"] for e in apply_voiding(events_of(run_id)) if e["type"] == "output.delta")


def checkpoints(run_id: str) -> dict[str, tuple[str, int]]:
    """The run's step checkpoints (not its waits: a request for input or a child run is shown apart)."""
    steps = StepRun.objects.filter(run_id=run_id).exclude(step_id__startswith="input:")
    return {s.step_id: (s.status, s.attempts) for s in steps.exclude(step_id__startswith="workflow:")}


def finished_run(run_id: str) -> WorkflowRun:
    """The run once it ended and its events were archived (its last event id is recorded then)."""
    deadline = time.monotonic() + 60
    while True:
        run = WorkflowRun.objects.get(pk=run_id)
        if run.is_finished and run.last_event_id:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} did not finish: {run.status}")
        time.sleep(0.1)


def start_from_form(page: Any, live: Any, topic: str, sections: int = 3, review: bool = False) -> str:
    page.goto(f"{live.http}/workflows/blog-post/")
    page.fill("#id_topic", topic)
    page.fill("#id_sections", str(sections))
    if not review:
        page.uncheck("#id_review")  # the outline needs no approval
    page.click("#start")
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}/$"))
    return page.url.rstrip("/").rsplit("/", 1)[-1]
