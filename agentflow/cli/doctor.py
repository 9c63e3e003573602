"""Check the database, Redis, the broker, the cache and the workers, and show the settings in force.

Exits 1 when something is wrong (a check in error: runs would not start, not progress, or not be seen), 0
otherwise, warnings included. ``--json`` prints the same report as ``GET /api/health/`` gives staff.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..health import ERROR, WARNING, Report, report
from ..workers import WorkerInfo

_LABELS = {"ok": "ok", WARNING: "WARNING", ERROR: "ERROR"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def handle(options: dict[str, Any], out: Any) -> int:
    result = report()
    if options.get("json"):
        out.write(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        out.write(render(result))
    return 1 if result.status == ERROR else 0


def _worker_line(worker: WorkerInfo) -> str:
    if not worker.alive:
        return f"  DEAD  {worker.name} (pid {worker.pid}): no heartbeat for {worker.seconds_since_beat:.0f} s"
    draining = ", draining" if worker.state == "draining" else ""
    return (
        f"  live  {worker.name} (pid {worker.pid}, agentflow {worker.version}{draining}): "
        f"queues {', '.join(worker.queues) or '-'}; {worker.runs_held} run(s) held, "
        f"{worker.free_slots} of {worker.concurrency} slot(s) free; last beat {worker.seconds_since_beat:.1f} s "
        f"ago, up since {worker.started_at}"
    )


def _setting_lines(values: dict[str, Any], indent: str = "  ") -> list[str]:
    return [f"{indent}{name} = {value!r}" for name, value in values.items()]


def render(result: Report) -> str:
    lines = [f"agentflow doctor: {result.status.upper()}", ""]
    width = max(len(check.name) for check in result.checks)
    lines += [
        f"  {_LABELS.get(check.status, check.status):<8} {check.name:<{width}}  {check.summary}"
        for check in result.checks
    ]
    lines += ["", f"Workers ({sum(w.alive for w in result.workers)} live):"]
    lines += [_worker_line(worker) for worker in result.workers] or ["  none has registered in the last hour"]
    lines += ["", "Settings in force (secrets masked):"]
    lines += _setting_lines(result.settings["AGENTFLOW"])
    celery, cache = result.settings["CELERY"], result.settings["CACHE"]
    lines += [f"  Celery app = {celery['app']!r}, broker_url = {celery['broker_url']!r}"]
    lines += [f"  cache = {cache['BACKEND']!r} at {cache['LOCATION']!r}", ""]
    return "\n".join(lines)
