"""Celery tasks. Arguments are plain JSON (run id and epoch); the task loads everything else itself."""

from __future__ import annotations

import gc
import logging
import re
from typing import Any

from celery import shared_task
from celery.signals import (
    beat_init,
    celeryd_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from .conf import agentflow_settings

logger = logging.getLogger("agentflow.tasks")


@shared_task(
    name="agentflow.execute_run",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    serializer="json",
)
def execute_run_task(run_id: str, epoch: int) -> str | None:
    from .executors import SENT_AT_MS, SENT_TO, record_delivery
    from .runner import execute_run

    # Where the message stood in its queue (a message sent for now has these headers), which tells the
    # monitor about the messages behind it (executors.QueueState).
    request = execute_run_task.request
    sent_to, sent_at_ms = request.get(SENT_TO), request.get(SENT_AT_MS)
    if sent_to and sent_at_ms:
        try:
            record_delivery(str(sent_to), int(sent_at_ms))
        except Exception:  # Redis down: the monitor then has less evidence, nothing more
            logger.debug("run %s: cannot record its message's delivery", run_id, exc_info=True)
    return execute_run(run_id, epoch)


@shared_task(name="agentflow.monitor", ignore_result=True, serializer="json")
def monitor_task() -> dict[str, int]:
    from .monitor import check_runs

    return check_runs().as_dict()


@shared_task(name="agentflow.schedules", ignore_result=True, serializer="json")
def schedules_task() -> dict[str, int]:
    """Start the runs of the schedules' due ticks (``agentflow.schedules``); beat sends it often."""
    from .schedules import dispatch

    return dispatch().as_dict()


def beat_schedule(every_seconds: float | None = None) -> dict[str, dict[str, object]]:
    """``beat_schedule`` entries for the monitor and the scheduler, on the monitor's own queue:
    ``app.conf.beat_schedule.update(beat_schedule())``. Any number of beat processes may send them."""
    interval = agentflow_settings.scheduler_interval_seconds
    return {
        "agentflow-monitor": {
            "task": "agentflow.monitor",
            "schedule": every_seconds or max(1.0, agentflow_settings.heartbeat_interval_seconds),
            "options": {"queue": agentflow_settings.monitor_queue, "expires": 60},
        },
        "agentflow-schedules": {
            "task": "agentflow.schedules",
            "schedule": interval,
            # A pass that waited longer than this is stale: the next one starts the same ticks anyway.
            "options": {"queue": agentflow_settings.monitor_queue, "expires": max(interval * 2, 1.0)},
        },
    }


@worker_shutting_down.connect
def _drain_on_shutdown(**kwargs: Any) -> None:
    """Warm shutdown (SIGTERM): hand running runs back at their next step boundary (``DRAIN_SECONDS``).

    The signal is sent in the worker's main process, where the solo and threads pools execute tasks; it
    also sets a Redis key that the prefork pool's child processes watch.
    """
    from .runner import announce_drain
    from .workers import mark_draining

    mark_draining()
    announce_drain()


@worker_ready.connect
def _register_worker(sender: Any = None, **kwargs: Any) -> None:
    """The worker registry (``agentflow.workers``): register, then beat every HEARTBEAT_INTERVAL_SECONDS."""
    from .workers import start_heartbeat

    start_heartbeat(sender)


@worker_shutdown.connect
def _unregister_worker(**kwargs: Any) -> None:
    from .workers import stop_heartbeat

    stop_heartbeat()


@worker_ready.connect
def _flush_owed_messages(sender: Any = None, **kwargs: Any) -> None:
    """In the worker's main process: send the messages the broker did not take when they were due, of the
    runs whose queue this worker consumes."""
    from .dispatch import start_flusher

    task_consumer = getattr(sender, "task_consumer", None)
    queues = [queue.name for queue in getattr(task_consumer, "queues", None) or ()]
    if not queues and sender is not None:  # before the consumer started: what the worker was told (-Q)
        queues = list(sender.app.amqp.queues.consume_from)
    start_flusher(queues)


@celeryd_init.connect
@beat_init.connect
def _quiet_idle_monitor(**kwargs: Any) -> None:
    """Celery logs every task it receives and finishes, and beat every task it sends, at INFO: three lines
    per monitor pass. Keep them for passes that changed something (a non-zero count in the result)."""
    for name in ("celery.worker.strategy", "celery.app.trace", "celery.beat"):
        logging.getLogger(name).addFilter(_idle_monitor_filter)


def _idle_monitor_filter(record: logging.LogRecord) -> bool:
    args = record.args
    if isinstance(args, dict) and args.get("name") == "agentflow.monitor":
        if "return_value" not in args:
            return False  # received: what the pass did is not known yet
        # The result's repr, such as "{'recovered': 0, 'abandoned': 0, ...}": keep it if a count is not 0.
        return any(count != "0" for count in re.findall(r"\d+", str(args["return_value"])))
    # Beat's "Scheduler: Sending due task <entry> (agentflow.monitor)".
    return not (record.name == "celery.beat" and isinstance(args, tuple) and "agentflow.monitor" in args)


@worker_process_init.connect
def _watch_for_drain(**kwargs: Any) -> None:
    """In each prefork child: drain when the parent worker's warm shutdown begins."""
    from .runner import watch_parent_drain

    watch_parent_drain()


@worker_process_init.connect
@worker_ready.connect
def freeze_startup_heap(**kwargs: Any) -> None:
    """Move every object alive once a worker process is ready (modules, settings, the app) out of the garbage
    collector's reach (``gc.freeze()``, ``WORKER_GC_FREEZE``).

    A run's steps keep many objects alive for a while (requests, responses, checkpoints, events); enough of
    them survive to trigger full collections, which otherwise scan the whole start-up heap each time: measured
    on bench/llm_fanout.py, a median 120 ms of collector pauses per 200-call run, and 40 ms frozen. Frozen
    objects are still freed by reference counting; only reference cycles among them are never collected.
    In each prefork child (worker_process_init) and in the main process (worker_ready: the solo and threads
    pools run tasks there).
    """
    if agentflow_settings.worker_gc_freeze:
        gc.freeze()


@shared_task(name="agentflow.prune", ignore_result=True, serializer="json")
def prune_task() -> dict[str, int]:
    """Retention (``RETENTION_DAYS``, ``EVENT_RETENTION_DAYS``); schedule it daily with Celery beat."""
    from .retention import prune

    return prune().as_dict()
