"""Helpers of the chaos tests: real workers killed, stopped and cancelled under load, and a subscriber that
applies the documented voiding rules (docs/topics/events.md, "Voiding rules") to a run's whole stream."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from agentflow import streams
from agentflow.conf import agentflow_settings
from agentflow.core import events as ev
from agentflow.monitor import check_runs

QUEUE = "agentflow-chaos"
TERMINAL = ev.TERMINAL_TYPES


@pytest.fixture
def chaos_settings() -> Iterator[None]:
    """The monitor (run by the test) sends runs to the chaos queue and never gives up on a run. (It sends
    again the message a killed worker took with it once the queue is empty or a later message was taken.)"""
    overrides = {**agentflow_settings.user_settings, "TASK_QUEUE": QUEUE, "MAX_RECOVERIES": 50}
    with override_settings(AGENTFLOW=overrides):
        yield


def step_texts(kept: list[dict[str, Any]]) -> dict[str | None, str]:
    """Each step's streamed text (``output.delta`` chunks in stream order), by step id."""
    texts: dict[str | None, str] = {}
    for event in kept:
        if event["type"] == "output.delta":
            texts[event["step"]] = texts.get(event["step"], "") + event["data"]["text"]
    return texts


def events_of(run_id: str) -> list[dict[str, Any]]:
    return list(streams.iter_all(run_id))


def drive_monitor(seconds: float, poll_seconds: float = 0.2) -> int:
    """Run the monitor every ``poll_seconds`` for ``seconds``; returns how many runs it recovered."""
    recovered = 0
    deadline = time.monotonic() + seconds
    while True:
        recovered += check_runs().recovered
        if time.monotonic() >= deadline:
            return recovered
        time.sleep(poll_seconds)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to a worker's whole process group (the worker leads it: ``start_new_session``)."""
    os.killpg(pid, sig)
