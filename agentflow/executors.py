"""Executors put a run's ``(run_id, epoch)`` in front of something that will call ``runner.execute_run``.

``AGENTFLOW["EXECUTOR"]`` picks one: :class:`CeleryExecutor` (the default: workers in other processes),
:class:`InProcessExecutor` (threads of the current process: the embedded default and development) or
:class:`InlineExecutor` (synchronously, in the caller: unit tests).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from functools import cache
from typing import Protocol

from django.db import close_old_connections, connection
from django.utils.module_loading import import_string

from .conf import agentflow_settings


class Executor(Protocol):
    #: Whether runs execute on workers in other processes (which the worker registry tracks), not here.
    uses_workers: bool

    def enqueue(self, run_id: str, epoch: int, *, countdown_seconds: float | None = None) -> None:
        """Arrange for ``runner.execute_run(run_id, epoch)`` to be called, at least once (not before
        ``countdown_seconds``, when given: a suspended run's wake-up)."""


class CeleryExecutor:
    uses_workers = True

    def enqueue(self, run_id: str, epoch: int, *, countdown_seconds: float | None = None) -> None:
        from .tasks import execute_run_task

        execute_run_task.apply_async(
            args=(str(run_id), int(epoch)), queue=agentflow_settings.task_queue, countdown=countdown_seconds
        )


class InProcessExecutor:
    """Runs workflows on a few threads of this process. Not durable across restarts of the process:
    use Celery in production (the monitor still recovers runs the process left behind)."""

    max_workers = 4
    uses_workers = False

    def __init__(self) -> None:
        self._pool = _pool(self.max_workers)

    def enqueue(self, run_id: str, epoch: int, *, countdown_seconds: float | None = None) -> None:
        if countdown_seconds:
            timer = threading.Timer(countdown_seconds, self.enqueue, (str(run_id), int(epoch)))
            timer.daemon = True  # lost with the process; the monitor wakes the run then
            timer.start()
            return
        self._pool.submit(_run_in_thread, str(run_id), int(epoch))


class InlineExecutor:
    """Executes the run at once in the calling thread (after the transaction commits)."""

    uses_workers = False

    def enqueue(self, run_id: str, epoch: int, *, countdown_seconds: float | None = None) -> None:
        from .runner import execute_run

        if countdown_seconds:
            time.sleep(countdown_seconds)  # synchronous by design: the caller waits for the wake-up
        execute_run(str(run_id), int(epoch))


@cache
def _pool(max_workers: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="agentflow-run")


def _run_in_thread(run_id: str, epoch: int) -> None:
    from .runner import execute_run

    close_old_connections()
    try:
        execute_run(run_id, epoch)
    finally:
        connection.close()


def get_executor() -> Executor:
    cls = import_string(agentflow_settings.executor)
    return cls()
