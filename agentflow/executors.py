"""Executors put a run's ``(run_id, epoch)`` in front of something that will call ``runner.execute_run``.

``AGENTFLOW["EXECUTOR"]`` picks one: :class:`CeleryExecutor` (the default: workers in other processes),
:class:`InProcessExecutor` (threads of the current process: the embedded default and development) or
:class:`InlineExecutor` (synchronously, in the caller: unit tests). They are called by
:mod:`agentflow.dispatch`, which records the message as owed first and sends it again when
:meth:`Executor.enqueue` raises :class:`NotAccepted`.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol, TypeVar

from django.db import close_old_connections, connection
from django.utils.module_loading import import_string

from . import streams
from .conf import agentflow_settings
from .core import keys

T = TypeVar("T")


class NotAccepted(Exception):
    """The executor could not take the message now (the broker is down or does not answer in time)."""


class Executor(Protocol):
    #: Whether runs execute on workers in other processes (which the worker registry tracks), not here.
    uses_workers: bool

    def enqueue(
        self, run_id: str, epoch: int, *, countdown_seconds: float | None = None, queue: str | None = None
    ) -> None:
        """Arrange for ``runner.execute_run(run_id, epoch)`` to be called, at least once (not before
        ``countdown_seconds``, when given: a suspended run's wake-up), by the workers of ``queue`` (the run's
        queue; None: ``TASK_QUEUE``) if the executor has queues. Raise :class:`NotAccepted` when that cannot
        be arranged now; any other exception is a bug and propagates."""


@dataclass(frozen=True)
class QueueState:
    """What an executor knows of its queue: the monitor's evidence to tell a message that waits behind
    others from one that was lost."""

    #: Messages in the queue, not yet taken by a worker.
    waiting: int
    #: The recent takes: for each second in which workers took messages sent for now from the queue, how many
    #: seconds ago that second ended and the latest send time among those messages.
    taken: tuple[tuple[float, datetime], ...] = ()

    def delivered_through(self, settled_seconds: float) -> datetime | None:
        """Every message sent before this time was taken at least ``settled_seconds`` ago (the queue is first
        in, first out), or None if no worker said so."""
        sent = [sent_at for ago, sent_at in self.taken if ago >= settled_seconds]
        return max(sent) if sent else None

    def seconds_since_last_take(self) -> float | None:
        return min((ago for ago, _sent_at in self.taken), default=None)


class CeleryExecutor:
    """Sends the task ``agentflow.execute_run`` to ``TASK_QUEUE``, waiting at most
    ``DISPATCH_TIMEOUT_SECONDS`` for the broker: a dead broker never holds a web request for long."""

    uses_workers = True

    def enqueue(
        self, run_id: str, epoch: int, *, countdown_seconds: float | None = None, queue: str | None = None
    ) -> None:
        from .tasks import execute_run_task

        queue = queue or agentflow_settings.task_queue
        # A message sent for now goes to the back of the queue: its send time says where it stands, which
        # the worker taking it records (record_delivery). A delayed one is held by a worker until due.
        # Headers, not arguments: a worker of an older version ignores them.
        headers = {} if countdown_seconds else {SENT_TO: queue, SENT_AT_MS: int(time.time() * 1000)}
        _bounded(
            lambda: execute_run_task.apply_async(
                args=(str(run_id), int(epoch)),
                headers=headers,
                queue=queue,
                countdown=countdown_seconds,
                # Celery's default retries a refused connection for about a second; once is enough here,
                # the dispatcher tries again within seconds.
                retry_policy={
                    "max_retries": 1,
                    "interval_start": 0,
                    "interval_step": 0.2,
                    "interval_max": 0.2,
                },
            )
        )

    def queue_state(self, queue: str | None = None) -> QueueState:
        """The state of ``queue`` (None: ``TASK_QUEUE``). Raises :class:`NotAccepted` when the broker (or
        Redis) cannot be asked."""
        queue = queue or agentflow_settings.task_queue

        def read() -> QueueState:
            pipe = streams.get_client().pipeline(transaction=False)
            pipe.time()
            pipe.hgetall(keys.delivered(agentflow_settings.key_prefix, queue))
            (now, _micros), takes = pipe.execute()
            taken = tuple(
                # A second's takes may have happened until its end: count from there.
                (max(0.0, now - (int(second) + 1)), datetime.fromtimestamp(int(sent_ms) / 1000, tz=UTC))
                for second, sent_ms in takes.items()
            )
            return QueueState(waiting=_queue_length(queue), taken=taken)

        return _bounded(read)


def _queue_length(queue: str) -> int:
    from celery import current_app

    with current_app.connection_for_read() as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except Exception as exc:
            # Redis keeps no empty list, and AMQP has no queue nobody declared: either way, nothing waits.
            if getattr(exc, "code", None) in (404, "404") or "NOT_FOUND" in str(exc):
                return 0
            raise
        finally:
            channel.close()


#: Message headers of a run task sent for now: the queue, and when (milliseconds since the epoch).
SENT_TO, SENT_AT_MS = "agentflow_sent_to", "agentflow_sent_at_ms"

# Lua: in the hash of takes, the field of this second (Redis's clock) keeps the latest send time (ARGV[1],
# milliseconds) of the messages taken in it. Past 900 fields, those older than ten minutes go.
_RECORD_TAKE = """
local second = tonumber(redis.call('TIME')[1])
local current = tonumber(redis.call('HGET', KEYS[1], second) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], second, ARGV[1])
end
if redis.call('HLEN', KEYS[1]) > 900 then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if tonumber(field) < second - 600 then
      redis.call('HDEL', KEYS[1], field)
    end
  end
end
return 1
"""


def record_delivery(queue: str, sent_at_ms: int) -> None:
    """A worker took a message sent to ``queue`` at ``sent_at_ms``: every message sent before it was taken
    too (see :class:`QueueState`). One small script per task."""
    key = keys.delivered(agentflow_settings.key_prefix, queue)
    streams.get_client().eval(_RECORD_TAKE, 1, key, int(sent_at_ms))


_MAX_IN_FLIGHT = 16  # sends waiting on a broker that does not answer; beyond that, fail at once
_in_flight = 0
_in_flight_lock = threading.Lock()


def _bounded(call: Callable[[], T]) -> T:
    """``call()`` on a sender thread, waiting at most ``DISPATCH_TIMEOUT_SECONDS``.

    Without socket time-outs in the broker's transport options, a publish to a broker that stopped answering
    blocks for ever; the caller gives up after the time-out (the thread stays blocked until the socket
    fails). Every failure is :class:`NotAccepted`.
    """
    global _in_flight
    with _in_flight_lock:
        if _in_flight >= _MAX_IN_FLIGHT:
            raise NotAccepted(f"{_in_flight} messages already wait for the broker to answer")
        _in_flight += 1

    def run() -> T:
        global _in_flight
        try:
            return call()
        finally:
            with _in_flight_lock:
                _in_flight -= 1

    timeout = agentflow_settings.dispatch_timeout_seconds
    future = _senders(os.getpid()).submit(run)
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise NotAccepted(f"the broker did not answer within {timeout}s") from None
    except Exception as exc:
        raise NotAccepted(f"{type(exc).__name__}: {exc}") from exc


@cache
def _senders(pid: int) -> concurrent.futures.ThreadPoolExecutor:
    # One pool per process: a prefork child does not inherit its parent's threads.
    return concurrent.futures.ThreadPoolExecutor(_MAX_IN_FLIGHT, thread_name_prefix="agentflow-send")


def _forget_parent_sends() -> None:
    # A child forked while its parent's sends were in flight (a prefork pool replacing a child) inherits the
    # count, and maybe the lock held, but not the threads that would release them.
    global _in_flight, _in_flight_lock
    _in_flight, _in_flight_lock = 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_sends)


class InProcessExecutor:
    """Runs workflows on a few threads of this process. Not durable across restarts of the process:
    use Celery in production (the monitor still recovers runs the process left behind)."""

    max_workers = 4
    uses_workers = False

    def __init__(self) -> None:
        self._pool = _pool(self.max_workers)

    def enqueue(
        self, run_id: str, epoch: int, *, countdown_seconds: float | None = None, queue: str | None = None
    ) -> None:
        if countdown_seconds:
            timer = threading.Timer(countdown_seconds, self.enqueue, (str(run_id), int(epoch)))
            timer.daemon = True  # lost with the process; the monitor wakes the run then
            timer.start()
            return
        self._pool.submit(_run_in_thread, str(run_id), int(epoch))


class InlineExecutor:
    """Executes the run at once in the calling thread (after the transaction commits)."""

    uses_workers = False

    def enqueue(
        self, run_id: str, epoch: int, *, countdown_seconds: float | None = None, queue: str | None = None
    ) -> None:
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


def queue_state(executor: Any, queue: str | None = None) -> QueueState | None:
    """The executor's :class:`QueueState`, or None if it keeps no queue it can describe (it then has no
    evidence: the monitor falls back on ``QUEUED_TIMEOUT_SECONDS``). Raises :class:`NotAccepted` when it
    has a queue but cannot read it now."""
    describe = getattr(executor, "queue_state", None)
    return describe(queue) if describe is not None else None
