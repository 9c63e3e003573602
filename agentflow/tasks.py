"""Celery tasks. Arguments are plain JSON (run id and epoch); the task loads everything else itself."""

from __future__ import annotations

from celery import shared_task

from .conf import agentflow_settings


@shared_task(
    name="agentflow.execute_run",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    serializer="json",
)
def execute_run_task(run_id: str, epoch: int) -> str | None:
    from .runner import execute_run

    return execute_run(run_id, epoch)


@shared_task(name="agentflow.monitor", ignore_result=True, serializer="json")
def monitor_task() -> dict[str, int]:
    from .monitor import check_runs

    return check_runs().as_dict()


def beat_schedule(every_seconds: float | None = None) -> dict[str, dict[str, object]]:
    """A ``beat_schedule`` entry for the monitor, on its own queue: ``app.conf.beat_schedule.update(...)``."""
    return {
        "agentflow-monitor": {
            "task": "agentflow.monitor",
            "schedule": every_seconds or max(1.0, agentflow_settings.heartbeat_interval_seconds),
            "options": {"queue": agentflow_settings.monitor_queue, "expires": 60},
        }
    }
