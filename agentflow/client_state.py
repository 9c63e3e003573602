"""What a client shows of a run, as a pure function of its events: the reducer behind every surface.

The same reducer exists in JavaScript (``agentflow/static/agentflow/agentflow.js``, ``reduce``/``apply``),
and both are checked against the same recorded event sequences (tests/js/fixtures, written by
tests/test_client_state_fixtures.py), so the browser, the CLI and the tests cannot drift apart::

    state = client_state.reduce(events)          # or: state = new_state(); apply(state, event) per event
    state["status"], state["output_text"], state["texts"]["section 1"], state["usage"]["cost_usd"]

It applies the two voiding rules of docs/topics/events.md as events arrive: each content event (``status``,
``data``, ``output.delta``) is kept in ``content`` with its ``(step, attempt, epoch)``; a ``step.retrying``,
``run.recovered`` or ``run.resumed`` drops the ones it voids and the derived fields (``output_text``, ``texts``, ``data``,
``status_text``, ``progress``) are computed again. So the state after any prefix of the stream is what a
run that never failed would show at that point, and reducing a stream in pieces (a reconnect with
``after``) gives the state of reducing it whole.

``apply`` updates the state it is given in place (a long run's content list is not copied per event) and
returns it; it does no I/O and reads no clock. The state is plain JSON (dicts, lists, strings, numbers),
identical key for key to the JavaScript reducer's. docs/topics/browser.md describes every field.

Django-free: the CLI, the tests and any Python client use it as they are.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from .core import events as ev

__all__ = ["USAGE_KEYS", "apply", "new_state", "reduce", "snapshot", "step_tree"]

#: The run's usage totals, summed from the ``usage`` of its steps' end events.
USAGE_KEYS = (
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_calls",
    "estimated_calls",
)
#: Events about what a run waits on (docs/topics/events.md, "Wait events"), by the status they give the wait.
_WAIT_STATUS = {
    ev.INPUT_REQUESTED: "requested",
    ev.INPUT_RECEIVED: "received",
    ev.INPUT_TIMED_OUT: "timed_out",
    ev.CHILD_STARTED: "started",
    ev.CHILD_COMPLETED: "completed",
    ev.CHILD_FAILED: "failed",
}

_RUN_STATUS = {
    ev.RUN_QUEUED: "queued",
    ev.RUN_STARTED: "running",
    ev.RUN_RECOVERED: "running",
    ev.RUN_RESUMED: "running",
    ev.RUN_CONTINUED: "running",
    ev.RUN_WAITING: "waiting",
    ev.RUN_COMPLETED: "completed",
    ev.RUN_FAILED: "failed",
    ev.RUN_CANCELLED: "cancelled",
}


def new_state() -> dict[str, Any]:
    """The state before any event."""
    return {
        "run": None,
        "status": None,  # queued, running, waiting, completed, failed, cancelled (None: no event yet)
        "done": False,  # a terminal event arrived: nothing follows
        "error": None,
        "epoch": 0,
        "recoveries": 0,
        "waiting": None,  # {"reason", "wake_at"} while the run is handed back
        "duration_seconds": None,
        "progress": None,  # 0..1, from the latest status event that gave one
        "status_text": None,
        "steps": {},  # step id -> step (see _step)
        "roots": [],  # top-level step ids, in the order they first appeared
        "output_text": "",  # the non-void output.delta text, in stream order
        "texts": {},  # data label -> its non-void string values joined (a stream forwarded to "data")
        "data": {},  # data label -> its latest non-void value
        "has_output": False,
        "output": None,  # the run's output (the ``output`` event)
        # wait step id (input:<key>, workflow:<name>#<n>) -> {"kind", "status", and the data of its requests
        # and answers merged}: the last wait event of a step gives its status
        "waits": {},
        "usage": {key: 0.0 if key == "cost_usd" else 0 for key in USAGE_KEYS},
        "last_id": None,
        "events": 0,
        "voided": 0,  # content events dropped by the voiding rules
        "content": [],  # the non-void content events, {"type", "step", "attempt", "epoch", "data"}
    }


def reduce(events: Iterable[dict[str, Any]], state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply ``events`` (oldest first) to ``state`` (a new one by default) and return it."""
    state = new_state() if state is None else state
    for event in events:
        apply(state, event)
    return state


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``state`` without its ``content`` list: what the fixtures compare."""
    return copy.deepcopy({key: value for key, value in state.items() if key != "content"})


def step_tree(state: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """``(depth, step)`` depth first, children in the order they first appeared."""
    rows: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, step_id) for step_id in reversed(state["roots"])]
    while stack:
        depth, step_id = stack.pop()
        step = state["steps"][step_id]
        rows.append((depth, step))
        stack.extend((depth + 1, child) for child in reversed(step["children"]))
    return rows


def apply(state: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """Apply one event to ``state`` (in place) and return it."""
    kind, data = event.get("type"), event.get("data") or {}
    state["events"] += 1
    if event.get("id") is not None:
        state["last_id"] = event["id"]
    if state["run"] is None and event.get("run") is not None:
        state["run"] = event["run"]
    epoch = event.get("epoch")
    if isinstance(epoch, int) and epoch > state["epoch"]:
        state["epoch"] = epoch

    if kind in ev.CONTENT_TYPES:
        _add_content(state, event)
    elif kind in _RUN_STATUS:
        _run_event(state, kind, data)
    elif kind == ev.OUTPUT:
        state["has_output"] = True
        state["output"] = data.get("value")
    elif kind in ev.STEP_TYPES:
        _step_event(state, event, kind, data)
    elif kind in _WAIT_STATUS and isinstance(event.get("step"), str):
        wait = state["waits"].setdefault(event["step"], {"kind": str(kind).split(".")[0]})
        wait.update(data)
        wait["status"] = _WAIT_STATUS[kind]
    # Other types (a newer server's) change nothing but the counters: clients ignore what they do not know.
    return state


# -- run events ------------------------------------------------------------------------------------------------


def _run_event(state: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
    if state["done"]:
        if kind in ev.TERMINAL_TYPES:
            return  # one terminal event per incarnation: a stray duplicate must not change the outcome
        # A resumed run goes on after its terminal event: a new incarnation, a new outcome to come.
        state.update(done=False, error=None, output=None, has_output=False, duration_seconds=None)
    state["status"] = _RUN_STATUS[kind]
    state["waiting"] = None
    if kind == ev.RUN_WAITING:
        state["waiting"] = {"reason": data.get("reason"), "wake_at": data.get("wake_at")}
    elif kind == ev.RUN_RECOVERED:
        state["recoveries"] = int(data.get("recoveries") or state["recoveries"] + 1)
        _run_again(state, set(data.get("void_steps") or ()), state["epoch"])
    elif kind == ev.RUN_RESUMED:
        state["recoveries"] = int(data.get("recoveries") or 0)  # resuming starts the count again
        _run_again(state, set(data.get("void_steps") or ()), state["epoch"])
    elif kind in ev.TERMINAL_TYPES:
        state["done"] = True
        _interrupt_running(state)
        state["duration_seconds"] = data.get("duration_seconds")
        if kind == ev.RUN_FAILED:
            state["error"] = data.get("error")


def _run_again(state: dict[str, Any], void_steps: set[str], epoch: int) -> None:
    """Rule 2: the steps a new incarnation runs again (unfinished by a dead one, or failed or unfinished
    before a resume) lose their earlier content and their open attempts."""
    for step_id in void_steps:
        step = state["steps"].get(step_id)
        if step is None:
            continue
        for attempt in step["attempts"]:
            if attempt["status"] == "running" and attempt["epoch"] < epoch:
                attempt["status"] = "lost"
        step["status"] = "interrupted"
    _void(state, lambda c: c["step"] is not None and c["step"] in void_steps and c["epoch"] < epoch)


def _interrupt_running(state: dict[str, Any]) -> None:
    """At the run's end, a step still running (cut short by a cancellation or by its run's failure) is not."""
    for step in state["steps"].values():
        if step["status"] == "running":
            step["status"] = "interrupted"
            for attempt in step["attempts"]:
                if attempt["status"] == "running":
                    attempt["status"] = "lost"


# -- steps -----------------------------------------------------------------------------------------------------


def _step(state: dict[str, Any], step_id: str, data: dict[str, Any]) -> dict[str, Any]:
    step = state["steps"].get(step_id)
    if step is None:
        parent = data.get("parent")
        step = {
            "id": step_id,
            "component": data.get("component"),
            "parent": parent,
            "status": "running",  # running, retrying, interrupted, completed, failed
            "attempt": 0,  # the number of its latest attempt (0: served from the cache)
            "cached": False,
            "error": None,
            "attempts": [],  # {"attempt", "epoch", "status", "error", "delay_seconds"}
            "usage": None,
            "started_at": None,  # ts of its latest step.started
            "finished_at": None,  # ts of its step.completed or step.failed
            "children": [],
        }
        state["steps"][step_id] = step
        siblings = state["steps"][parent]["children"] if parent in state["steps"] else state["roots"]
        siblings.append(step_id)
    return step


def _attempt(step: dict[str, Any], number: int, epoch: int) -> dict[str, Any]:
    """The step's attempt ``number``: the latest one with that number (of ``epoch`` if there is one)."""
    same = [a for a in step["attempts"] if a["attempt"] == number]
    for attempt in reversed(same):
        if attempt["epoch"] == epoch:
            return attempt
    if same:
        return same[-1]
    attempt = {"attempt": number, "epoch": epoch, "status": "running", "error": None, "delay_seconds": None}
    step["attempts"].append(attempt)
    return attempt


def _step_event(state: dict[str, Any], event: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
    step_id = event.get("step")
    if not isinstance(step_id, str):
        return
    step = _step(state, step_id, data)
    number, epoch = int(event.get("attempt") or 0), int(event.get("epoch") or 0)
    if kind == ev.STEP_STARTED:
        step["attempts"].append(
            {"attempt": number, "epoch": epoch, "status": "running", "error": None, "delay_seconds": None}
        )
        step.update(
            status="running", attempt=number, error=None, started_at=event.get("ts"), finished_at=None
        )
    elif kind == ev.STEP_RETRYING:
        # Rule 1: the failed attempt's content is void (parent_retry: a child that failed for good runs again).
        attempt = _attempt(step, number, epoch)
        attempt.update(status="failed", error=data.get("error"), delay_seconds=data.get("delay_seconds"))
        step.update(status="retrying", error=None)
        _void(state, lambda c: c["step"] == step_id and c["attempt"] == number and c["epoch"] == epoch)
    elif kind == ev.STEP_COMPLETED:
        if number:
            _attempt(step, number, epoch)["status"] = "completed"
        step.update(status="completed", attempt=number, error=None, cached=bool(data.get("cached")))
        step["finished_at"] = event.get("ts")
        _add_usage(state, step, data.get("usage"))
    else:  # step.failed
        attempt = _attempt(step, number, epoch)
        attempt.update(status="failed", error=data.get("error"))
        step.update(status="failed", attempt=number, error=data.get("error"), finished_at=event.get("ts"))
        _add_usage(state, step, data.get("usage"))


def _add_usage(state: dict[str, Any], step: dict[str, Any], usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    step["usage"] = usage
    totals = state["usage"]
    for key in USAGE_KEYS:
        if key == "cost_usd":
            # Rounded like agentflow.core.usage.merge, so the sum equals the run's stored total.
            totals[key] = round(totals[key] + float(usage.get(key) or 0.0), 10)
        else:
            totals[key] += int(usage.get(key) or 0)


# -- content ---------------------------------------------------------------------------------------------------


def _add_content(state: dict[str, Any], event: dict[str, Any]) -> None:
    piece = {
        "type": event["type"],
        "step": event.get("step"),
        "attempt": event.get("attempt"),
        "epoch": event.get("epoch"),
        "data": event.get("data") or {},
    }
    state["content"].append(piece)
    _show(state, piece)


def _show(state: dict[str, Any], piece: dict[str, Any]) -> None:
    data = piece["data"]
    if piece["type"] == ev.OUTPUT_DELTA:
        state["output_text"] += str(data.get("text") or "")
    elif piece["type"] == ev.STATUS:
        state["status_text"] = data.get("text")
        if data.get("progress") is not None:
            state["progress"] = data["progress"]
    else:
        label, value = _label(data.get("label")), data.get("value")
        state["data"][label] = value
        if isinstance(value, str):
            state["texts"][label] = state["texts"].get(label, "") + value


def _label(label: Any) -> str:
    return label if isinstance(label, str) else json.dumps(label)


def _void(state: dict[str, Any], is_void: Any) -> None:
    kept = [piece for piece in state["content"] if not is_void(piece)]
    dropped = len(state["content"]) - len(kept)
    if not dropped:
        return
    state["voided"] += dropped
    state["content"] = kept
    state.update(output_text="", texts={}, data={}, status_text=None, progress=None)
    for piece in kept:
        _show(state, piece)
