"""Dispatch: handing a recorded run to the executor, and handing it again until the broker took it.

Both planes stand on this module and neither on the other for it: the API plane (``start``, ``resume``) and
the compute plane (the runner handing a run back, the monitor recovering one or sending a lost message
again) record that a run needs a worker, and this module gets the message there.

**A transactional outbox.** The transaction that makes a run need a worker (recording it, resuming it,
handing it back, recovering it) also marks the run's message as owed: ``dispatch_pending`` and
``enqueued_at`` (:func:`owed`). Once it commits, :func:`send` gives ``(run_id, epoch)`` to the executor and
clears the mark with an UPDATE conditional on the epoch (a worker that claimed the run meanwhile cleared it
already). So the run recorded is the truth: a run is never lost because the broker was down when it was
started, and never started twice because a client retried after an error.

When the broker does not take the message within ``DISPATCH_TIMEOUT_SECONDS``, the mark stays, and whoever
looks first sends it again, within seconds of the broker answering again:

- the process that failed, from a thread that retries every ``DISPATCH_RETRY_INTERVAL_SECONDS`` for at most
  :data:`RETRY_LOOP_SECONDS`;
- every Celery worker, from a thread of its main process (:func:`start_flusher`);
- the monitor, at each pass.

Each of them takes an owed run with a conditional UPDATE of ``enqueued_at`` (at most one try per run per
interval across every process) and stops its round at the first failure, so a dead broker costs little. A
message sent twice is harmless: the claim of the second finds the run's epoch moved on.

A new run (epoch 0) gets its ``run.queued`` event before its first message, also copied into the archive at
once, so a client that saw it sees it again after Redis lost its data.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from redis import RedisError

from . import streams
from .conf import agentflow_settings
from .core import events as ev
from .executors import NotAccepted, get_executor
from .models import ACTIVE_STATUSES, RunEvent, RunStatus, WorkflowRun

logger = logging.getLogger("agentflow.dispatch")

#: How long the process whose send failed keeps trying; after that, workers and the monitor carry on.
RETRY_LOOP_SECONDS = 120.0
#: Owed runs one round sends at most.
BATCH = 100

#: For the UPDATE of a claim or an end: the run waits for no message.
HELD: dict[str, Any] = {"dispatch_pending": False, "enqueued_at": None}


def owed(now: datetime | None = None) -> dict[str, Any]:
    """The fields that mark a run's message as owed, for the INSERT or UPDATE, in the same transaction, that
    makes the run need a worker. Then call :func:`send_on_commit` (or :func:`send` after the commit)."""
    return {"dispatch_pending": True, "enqueued_at": now or timezone.now()}


def send_on_commit(
    run_id: str,
    epoch: int,
    *,
    queue: str | None = None,
    countdown_seconds: float | None = None,
    new_run: bool = False,
    robust: bool = False,
) -> None:
    """:func:`send` once the current transaction commits (at once outside one). ``robust``: an exception
    (from an inline executor running the run) is logged instead of raised into the committing code."""
    run_id = str(run_id)
    transaction.on_commit(
        lambda: send(run_id, epoch, queue=queue, countdown_seconds=countdown_seconds, new_run=new_run),
        robust=robust,
    )


def send(
    run_id: str,
    epoch: int,
    *,
    queue: str | None = None,
    countdown_seconds: float | None = None,
    new_run: bool = False,
    retry_in_process: bool = True,
) -> bool:
    """Give the owed message of ``run_id`` at ``epoch`` to the executor, for ``queue`` (the run's
    ``WorkflowRun.queue``; None or empty: this process's ``TASK_QUEUE``); True once it took it.

    ``new_run``: the first try for a run just recorded (its ``run.queued`` is surely not archived yet). Never
    raises for a broker or Redis that is down: the message stays owed and is sent again (by this process for
    a while, unless ``retry_in_process`` is false, and by workers and the monitor).
    """
    run_id = str(run_id)
    try:
        if epoch == 0:
            _announce(run_id, new_run=new_run)
        # As close as can be to the send time the executor gives the message (CeleryExecutor's headers).
        sent_at = timezone.now()
        get_executor().enqueue(
            run_id, epoch, countdown_seconds=countdown_seconds, queue=queue or agentflow_settings.task_queue
        )
    except (NotAccepted, RedisError, DatabaseError) as exc:
        # Redis or the database failing in _announce: the run's first event must precede its message.
        # Loud once per run and process; the rounds that try again during an outage are not.
        logger.log(
            logging.WARNING if retry_in_process else logging.DEBUG,
            "run %s: its message was not sent (%s); sending it again as soon as the broker answers",
            run_id,
            exc,
        )
        if retry_in_process:
            _retry_later(run_id)
        return False
    try:
        WorkflowRun.objects.filter(id=run_id, epoch=epoch, dispatch_pending=True).update(
            dispatch_pending=False, enqueued_at=sent_at
        )
    except DatabaseError:  # still owed: sent again later, and the second message is a no-op
        logger.warning("run %s: sent, but the database could not record it", run_id, exc_info=True)
    return True


def _announce(run_id: str, *, new_run: bool) -> None:
    """``run.queued``, appended once and archived at once (a stream can lose its data; the archive keeps
    what a client may have seen)."""
    if not new_run and RunEvent.objects.filter(run__pk=run_id, type=ev.RUN_QUEUED).exists():
        # Announced and archived by an earlier try; its stream may have lost it since (Redis restarted
        # empty), and a second run.queued under another id would be a second first event.
        return
    entry = streams.announce(
        run_id, ev.envelope(ev.RUN_QUEUED, run_id, step=None, attempt=None, epoch=0, data={})
    )
    if entry is not None and entry[1] and agentflow_settings.archive_events:
        from .archive import store_entries

        store_entries(run_id, [(entry[0], {"d": entry[1]})])


def flush(
    *, run_ids: set[str] | None = None, queues: list[str] | None = None, now: datetime | None = None
) -> int:
    """Send the owed messages whose last try is older than ``DISPATCH_RETRY_INTERVAL_SECONDS`` (of
    ``run_ids`` only, or of runs whose queue is one of ``queues``, if given), up to :data:`BATCH`; stop at
    the first the broker does not take. Returns how many were sent."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=agentflow_settings.dispatch_retry_interval_seconds)
    owing = WorkflowRun.objects.filter(dispatch_pending=True, status__in=ACTIVE_STATUSES).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=cutoff)  # not tried within the interval
    )
    if run_ids is not None:
        owing = owing.filter(id__in=run_ids)
    if queues is not None:
        owing = owing.filter(queue__in=queues)
    sent = 0
    for run_id, epoch, status, wake_at, last_try, queue in owing.values_list(
        "id", "epoch", "status", "wake_at", "enqueued_at", "queue"
    )[:BATCH]:
        # One try per run per interval across every process: take this one.
        if not WorkflowRun.objects.filter(
            id=run_id, epoch=epoch, dispatch_pending=True, enqueued_at=last_try
        ).update(enqueued_at=now):
            continue
        countdown = None
        if status == RunStatus.WAITING and wake_at is not None and wake_at > now:
            countdown = (wake_at - now).total_seconds()
        if not send(str(run_id), epoch, queue=queue, countdown_seconds=countdown, retry_in_process=False):
            break  # the broker is down: the rest waits for the next round
        sent += 1
    return sent


# -- the retry loop of a process whose send failed -------------------------------------------------------------

_retry_lock = threading.Lock()
_retry_runs: set[str] = set()
_retry_thread: threading.Thread | None = None


def _retry_later(run_id: str) -> None:
    global _retry_thread
    with _retry_lock:
        _retry_runs.add(run_id)
        if _retry_thread is None:
            _retry_thread = threading.Thread(target=_retry_loop, name="agentflow-dispatch-retry", daemon=True)
            _retry_thread.start()


def _retry_loop() -> None:
    global _retry_thread
    deadline = time.monotonic() + RETRY_LOOP_SECONDS
    while True:
        time.sleep(agentflow_settings.dispatch_retry_interval_seconds)
        with _retry_lock:
            if not _retry_runs or time.monotonic() > deadline:
                if _retry_runs:
                    logger.warning(
                        "%d run(s) still not sent after %.0fs; workers and the monitor keep trying",
                        len(_retry_runs),
                        RETRY_LOOP_SECONDS,
                    )
                _retry_runs.clear()
                _retry_thread = None
                return
            run_ids = set(_retry_runs)
        try:
            flush(run_ids=run_ids)
            owing = WorkflowRun.objects.filter(
                id__in=run_ids, dispatch_pending=True, status__in=ACTIVE_STATUSES
            ).values_list("id", flat=True)
            done = run_ids - {str(pk) for pk in owing}
            with _retry_lock:
                _retry_runs.difference_update(done)
        except Exception:  # the database down too: try again at the next interval
            logger.warning("dispatch: sending owed messages again failed", exc_info=True)
        finally:
            connection.close()  # never hold a connection while sleeping


def _forget_parent_retries() -> None:
    # A forked child (a prefork pool process) inherits the parent's state, not its retry thread.
    global _retry_lock, _retry_thread
    _retry_lock, _retry_thread = threading.Lock(), None
    _retry_runs.clear()


os.register_at_fork(after_in_child=_forget_parent_retries)


def stop_retrying(timeout_seconds: float = 10) -> None:
    """Stop this process's retry loop (workers and the monitor carry on), waiting for its last round."""
    with _retry_lock:
        _retry_runs.clear()
        thread = _retry_thread
    if thread is not None:
        thread.join(timeout_seconds)


# -- every worker's flusher -------------------------------------------------------------------------------------

_flusher_started = threading.Event()


def start_flusher(queues: list[str], interval_seconds: float | None = None) -> None:
    """In a worker's main process: send the owed messages of the runs of ``queues`` (those the worker
    consumes: it sends nothing it would not take itself) every ``interval_seconds`` (default
    ``HEARTBEAT_INTERVAL_SECONDS``), so a run whose web process died before sending it, or failed to, goes
    out within seconds of the broker answering. One indexed query per interval. Idempotent."""
    if _flusher_started.is_set():
        return
    _flusher_started.set()
    interval = interval_seconds or agentflow_settings.heartbeat_interval_seconds

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                flush(queues=queues)
            except Exception:
                logger.debug("dispatch: the worker's flush failed", exc_info=True)
            finally:
                connection.close()

    threading.Thread(target=loop, name="agentflow-dispatch-flush", daemon=True).start()
