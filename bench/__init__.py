"""agentflow's benchmarks (see README). What every script shares lives here; the streaming benchmarks'
set-up is in bench/_streaming.py."""

from __future__ import annotations

import signal
from typing import Any


class Deadline(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise Deadline("the benchmark ran past its deadline")


def arm_deadline(seconds: float) -> None:
    """Abort the benchmark (cleanups run: they are in ``finally`` blocks) after ``seconds``."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(seconds)))


def disarm_deadline() -> None:
    signal.alarm(0)
