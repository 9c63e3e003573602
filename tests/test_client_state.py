"""agentflow.client_state, the reducer every surface renders: unit tests on hand-written event sequences, and the
committed recordings of real runs (tests/js/fixtures) that the JavaScript reducer is held to as well."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentflow import client_state as cs

FIXTURES = Path(__file__).resolve().parent / "js" / "fixtures"
RUN = "6264b0ba-42d6-47b5-b38d-28ef6a1975c1"


def event(
    n: int, type: str, step: str | None = None, attempt: int | None = None, epoch: int = 1, **data: Any
) -> dict[str, Any]:
    return {
        "id": f"1000-{n}",
        "type": type,
        "run": RUN,
        "step": step,
        "attempt": attempt,
        "epoch": epoch,
        "ts": f"2024-11-23T19:26:{n:02d}.000000Z",
        "data": data,
    }


def delta(n: int, text: str, step: str | None, attempt: int | None = 1, epoch: int = 1) -> dict[str, Any]:
    return event(n, "output.delta", step, attempt, epoch, text=text)


def test_a_retried_attempts_output_is_dropped_and_its_error_kept_on_the_attempt() -> None:
    events = [
        event(0, "run.queued", epoch=0),
        event(1, "run.started"),
        event(2, "step.started", "a#0", 1, component="a", parent=None),
        delta(3, "Hel", "a#0"),
        event(
            4,
            "step.retrying",
            "a#0",
            1,
            error={"type": "IOError", "message": "cut"},
            delay_seconds=0.5,
            next_attempt=2,
        ),
        event(5, "step.started", "a#0", 2, component="a", parent=None),
        delta(6, "Hello", "a#0", 2),
        event(7, "step.completed", "a#0", 2, component="a", parent=None),
        event(8, "output", value="Hello"),
        event(9, "run.completed", duration_seconds=1.5),
    ]
    state = cs.reduce(events[:4])
    assert state["output_text"] == "Hel" and state["steps"]["a#0"]["status"] == "running"
    cs.reduce(events[4:5], state)
    assert state["output_text"] == "" and state["voided"] == 1
    step = state["steps"]["a#0"]
    assert step["status"] == "retrying"
    assert step["attempts"] == [
        {"attempt": 1, "epoch": 1, "status": "failed", "error": {"type": "IOError", "message": "cut"},
         "delay_seconds": 0.5},
    ]  # fmt: skip
    cs.reduce(events[5:], state)
    assert state["output_text"] == "Hello" and state["status"] == "completed" and state["done"]
    assert [a["status"] for a in step["attempts"]] == ["failed", "completed"] and step["attempt"] == 2
    assert state["output"] == "Hello" and state["duration_seconds"] == 1.5 and state["last_id"] == "1000-9"


def test_recovery_voids_the_unfinished_steps_of_the_dead_incarnation_only() -> None:
    events = [
        event(1, "run.started"),
        event(2, "status", text="working", progress=0.1),
        event(3, "step.started", "a#0", 1, component="a", parent=None),
        event(4, "step.started", "b#0", 1, component="b", parent=None),
        delta(5, "A1", "a#0"),
        delta(6, "B1", "b#0"),
        event(7, "step.completed", "b#0", 1, component="b", parent=None),
        delta(8, "A2", "a#0"),
        # The worker dies; the next incarnation voids a#0 (b#0 completed) and runs it again.
        event(9, "run.recovered", epoch=2, void_steps=["a#0"], recoveries=1),
        event(10, "step.started", "a#0", 1, epoch=2, component="a", parent=None),
        delta(11, "A1A2", "a#0", 1, epoch=2),
        event(12, "step.completed", "a#0", 1, epoch=2, component="a", parent=None),
    ]
    state = cs.reduce(events[:9])
    assert state["output_text"] == "B1" and state["status_text"] == "working"  # workflow content stays
    assert state["recoveries"] == 1 and state["epoch"] == 2
    assert state["steps"]["a#0"]["status"] == "interrupted"
    assert state["steps"]["a#0"]["attempts"][0]["status"] == "lost"
    assert state["steps"]["b#0"]["status"] == "completed"
    cs.reduce(events[9:], state)
    assert state["output_text"] == "B1A1A2"
    assert [(a["epoch"], a["status"]) for a in state["steps"]["a#0"]["attempts"]] == [
        (1, "lost"),
        (2, "completed"),
    ]


def test_data_labels_join_their_text_and_keep_their_latest_value() -> None:
    events = [
        event(1, "step.started", "d#0", 1, component="d", parent=None),
        event(2, "data", "d#0", 1, label="section 1", value="Alpha "),
        event(3, "data", "d#0", 1, label="section 1", value="bravo"),
        event(4, "data", None, None, label="outline", value={"headings": ["x"]}),
        event(
            5,
            "step.failed",
            "d#0",
            1,
            component="d",
            parent=None,
            error={"type": "E", "message": "no"},
            usage={
                "calls": 1,
                "prompt_tokens": 3,
                "completion_tokens": 2,
                "total_tokens": 5,
                "cost_usd": 0.1,
                "unpriced_calls": 0,
            },
        ),
    ]
    state = cs.reduce(events)
    assert state["texts"] == {"section 1": "Alpha bravo"}
    assert state["data"] == {"section 1": "bravo", "outline": {"headings": ["x"]}}
    step = state["steps"]["d#0"]
    # A step that failed for good keeps its content (docs/topics/events.md) and its error.
    assert step["status"] == "failed" and step["error"] == {"type": "E", "message": "no"}
    assert state["usage"]["total_tokens"] == 5 and state["usage"]["cost_usd"] == 0.1


def test_usage_sums_are_rounded_like_the_runs_stored_totals() -> None:
    from agentflow.core.usage import merge

    costs = [0.1, 0.2, 0.000000123, 1e-11, 0.3]
    events = [
        event(i, "step.completed", f"s#{i}", 1, component="s", parent=None,
              usage={"calls": 1, "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "cost_usd": c})
        for i, c in enumerate(costs)
    ]  # fmt: skip
    stored: dict[str, Any] = {}
    for cost in costs:
        merge(stored, {"calls": 1, "cost_usd": cost})
    assert cs.reduce(events)["usage"]["cost_usd"] == stored["cost_usd"]


def test_children_nest_under_their_parent_and_a_parent_retry_reopens_a_failed_child() -> None:
    events = [
        event(1, "step.started", "p#0", 1, component="p", parent=None),
        event(2, "step.started", "p#0/c#0", 1, component="c", parent="p#0"),
        delta(3, "x", "p#0/c#0"),
        event(
            4, "step.failed", "p#0/c#0", 1, component="c", parent="p#0", error={"type": "E", "message": "m"}
        ),
        event(
            5,
            "step.retrying",
            "p#0/c#0",
            1,
            error={"type": "E", "message": "m"},
            reason="parent_retry",
            next_attempt=1,
        ),
        event(
            6,
            "step.retrying",
            "p#0",
            1,
            error={"type": "E", "message": "m"},
            delay_seconds=0.1,
            next_attempt=2,
        ),
    ]
    state = cs.reduce(events)
    assert [(depth, step["id"]) for depth, step in cs.step_tree(state)] == [(0, "p#0"), (1, "p#0/c#0")]
    assert state["steps"]["p#0/c#0"]["status"] == "retrying" and state["output_text"] == ""


def test_a_second_terminal_event_changes_nothing_and_unknown_types_are_ignored() -> None:
    events = [
        event(1, "run.started"),
        event(2, "run.cancelled"),
        event(3, "run.completed"),
        event(4, "run.x"),
    ]
    state = cs.reduce(events)
    assert state["status"] == "cancelled" and state["events"] == 4 and state["last_id"] == "1000-4"


def test_a_resumed_run_goes_on_after_its_terminal_event() -> None:
    failed = {"type": "StepFailed", "message": "no"}
    state = cs.reduce([event(1, "run.started"), event(2, "run.failed", error=failed)])
    assert state["done"] and state["error"] == failed
    cs.reduce([event(3, "run.resumed", epoch=3, void_steps=[], recoveries=0)], state)
    assert state["status"] == "running" and not state["done"] and state["error"] is None
    cs.reduce([event(4, "output", epoch=3, value=1), event(5, "run.completed", epoch=3)], state)
    assert state["status"] == "completed" and state["output"] == 1


def test_run_resumed_voids_the_earlier_content_of_the_steps_it_lists() -> None:
    error = {"type": "E", "message": "m"}
    state = cs.reduce(
        [
            event(1, "run.started"),
            event(2, "step.started", "kept#0", 1, component="kept", parent=None),
            delta(3, "A", "kept#0"),
            event(4, "step.completed", "kept#0", 1, component="kept", parent=None),
            event(5, "step.started", "failed#0", 1, component="failed", parent=None),
            delta(6, "B", "failed#0"),
            event(7, "step.failed", "failed#0", 1, component="failed", parent=None, error=error),
            event(8, "step.started", "cut#0", 1, component="cut", parent=None),
            delta(9, "C", "cut#0"),
            delta(10, "D", None, None),
            event(11, "run.cancelled", recoveries=2),
        ]
    )
    # The end: a step still running is not (its attempt is lost); the failure and its text stand.
    assert state["steps"]["cut#0"]["status"] == "interrupted"
    assert state["steps"]["cut#0"]["attempts"][0]["status"] == "lost"
    assert state["output_text"] == "ABCD" and state["steps"]["failed#0"]["status"] == "failed"
    state["recoveries"] = 2
    cs.apply(state, event(12, "run.resumed", epoch=3, void_steps=["failed#0", "cut#0"], recoveries=0))
    assert state["output_text"] == "AD" and state["voided"] == 2 and state["recoveries"] == 0
    assert state["steps"]["failed#0"]["status"] == "interrupted" and state["status"] == "running"
    cs.reduce(
        [
            event(13, "step.started", "failed#0", 1, 3, component="failed", parent=None),
            delta(14, "b", "failed#0", 1, 3),
            event(15, "step.completed", "failed#0", 1, 3, component="failed", parent=None),
        ],
        state,
    )
    assert state["output_text"] == "ADb"
    assert [a["status"] for a in state["steps"]["failed#0"]["attempts"]] == ["failed", "completed"]


def test_a_wait_takes_the_status_of_its_last_event() -> None:
    state = cs.reduce(
        [
            event(
                1, "input.requested", "input:ok", None, key="ok", prompt="Ship?", schema={}, timeout_at=None
            ),
            event(2, "child.started", "workflow:sub#0", None, run="r2", workflow="sub"),
        ]
    )
    assert state["waits"]["input:ok"] == {
        "kind": "input", "status": "requested", "key": "ok", "prompt": "Ship?", "schema": {}, "timeout_at": None
    }  # fmt: skip
    cs.reduce([event(3, "input.received", "input:ok", None, key="ok", value=True, answered_by="ann")], state)
    assert state["waits"]["input:ok"]["status"] == "received" and state["waits"]["input:ok"]["value"] is True
    assert state["waits"]["workflow:sub#0"]["status"] == "started" and state["steps"] == {}


def test_waiting_is_shown_until_the_run_continues() -> None:
    state = cs.reduce([event(1, "run.started"), event(2, "run.waiting", reason="retry", wake_at="t")])
    assert state["status"] == "waiting" and state["waiting"] == {"reason": "retry", "wake_at": "t"}
    cs.apply(state, event(3, "run.continued", epoch=2))
    assert state["status"] == "running" and state["waiting"] is None


def recorded() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def test_the_committed_recordings_cover_every_case_the_javascript_tests_need() -> None:
    names = {path.stem for path in recorded()}
    assert {
        "fanout-retries", "recovered", "llm-cut-streams", "llm-fallback", "input-wait", "failed",
        "resumed-after-failure", "resumed-after-cancel",
    } <= names  # fmt: skip


@pytest.mark.parametrize("path", recorded(), ids=lambda path: path.stem)
def test_the_python_reducer_gives_each_recordings_expected_states(path: Path) -> None:
    """The states the JavaScript reducer must give too (tests/js/client_state.test.mjs)."""
    fixture = json.loads(path.read_text())
    state = cs.new_state()
    done = 0
    for cut in fixture["cuts"]:
        cs.reduce(fixture["events"][done : cut["at"]], state)
        done = cut["at"]
        assert cs.snapshot(state) == cut["state"]
    assert cs.snapshot(cs.reduce(fixture["events"])) == fixture["expected"]
