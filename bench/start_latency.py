#!/usr/bin/env python
"""Start latency: from ``POST /api/workflows/<name>/runs/`` to the run's ``run.started`` at a websocket client.

    python bench/start_latency.py [--runs 200] [--pool prefork|solo] [--connections kept|per-task]
                                  [--deadline 600]

What a user waits for before anything moves ("time to first event"). Each sample, one at a time, on a kept-alive
HTTP connection (a browser's), authenticated with a DRF API token:

  t0        ``POST /api/workflows/bench-noop-steps/runs/`` with ``{"steps": 0}`` sent;
  response  202 received (Django + DRF: authentication, validation, the INSERT, the commit, and the on_commit
            callback: ``run.queued`` appended and the task sent to the broker);
  open      the websocket opened with the response's ``urls.websocket``, offering its ``stream_token`` as the
            subprotocol ``agentflow.token.<token>`` (next to ``agentflow.v1``), as agentflow.js does;
  claimed   the run's ``started_at`` (a worker claimed it), read from the DB afterwards;
  appended  ``run.started``'s ``ts`` (the worker built the event; its writer thread appends it);
  received  ``run.started`` received by the websocket client: **the figure**.

The client then reads on until the run's terminal event, so runs do not overlap. The floor, measured
alternately with the same worker, broker and machine: ``bench.stamp.apply_async()`` until the first line of the
task (``time.time()`` there, returned through the result backend). Target (issue 14): p50 of ``received`` <= 2x
the floor's p50. Printed: p50/p90/p99/max of every mark and of the floor, the ratio and MET / NOT MET.

Everything runs on this machine: one Celery worker (``--pool``, default prefork with 2 processes, as
deployed) on queues agentflow and celery, one uvicorn process serving tests.asgi (Django HTTP and agentflow's
websocket routes), bench.settings (database ``agentflow_bench``, Redis db 14, both overridable: BENCH_DB_NAME,
BENCH_REDIS_URL). The benchmark deletes only its own runs (its user's) and user. It aborts after
``--deadline`` seconds and always stops the worker and the server.

Database connections (``--connections``): ``kept`` (the default) is what docs/deploy.md recommends: the ASGI
server on Django's connection pool and the worker's prefork children keeping their connection between tasks
(``CELERY_DB_REUSE_MAX``); ``per-task`` is Django's and Celery's default, a new PostgreSQL connection for
every request and every task (about 3 ms each here, more under load: its figures show what that costs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

from bench import event_time  # noqa: E402

WORKFLOW = "bench-noop-steps"
USERNAME = "bench-start-latency"
TARGET_RATIO = 2.0  # p50 of received <= 2 x the floor's p50
MARKS = ("response", "open", "claimed", "appended", "received")


def make_user() -> str:
    """The benchmark's user (created afresh) and its API token."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    User = get_user_model()
    User.objects.filter(username=USERNAME).delete()  # cascades to its runs and token
    user = User.objects.create_user(USERNAME)
    return str(Token.objects.create(user=user).key)


def cleanup() -> None:
    from django.contrib.auth import get_user_model

    from agentflow import streams
    from agentflow.models import WorkflowRun

    ids = [
        str(pk) for pk in WorkflowRun.objects.filter(owner__username=USERNAME).values_list("pk", flat=True)
    ]
    client = streams.get_client()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        client.delete(*(streams.stream_key(r) for r in chunk), *(streams.meta_key(r) for r in chunk))
    get_user_model().objects.filter(username=USERNAME).delete()


def measure_floor() -> float:
    from bench.celery_app import stamp

    t0 = time.time()
    result = stamp.apply_async()
    started = float(result.get(timeout=30))
    result.forget()
    return started - t0


async def measure_agentflow(http: Any, base: str, token: str) -> tuple[str, dict[str, float]]:
    import websockets

    marks: dict[str, float] = {}
    t0 = time.time()
    response = await http.post(
        f"{base}/api/workflows/{WORKFLOW}/runs/",
        json={"steps": 0},
        headers={"Authorization": f"Token {token}"},
    )
    marks["response"] = time.time() - t0
    if response.status_code != 202:
        raise RuntimeError(f"POST answered {response.status_code}: {response.text[:500]}")
    run = response.json()
    # The token as a subprotocol, as agentflow.js offers it (out of URLs and access logs).
    offered = ["agentflow.v1", f"agentflow.token.{run['stream_token']}"]
    async with websockets.connect(run["urls"]["websocket"], subprotocols=offered, max_size=None) as ws:
        marks["open"] = time.time() - t0
        terminal = False
        while not terminal:
            event = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if event["type"] == "run.started":
                marks["received"] = time.time() - t0
                marks["appended"] = event_time(event["ts"]) - t0
            terminal = event["type"] in ("run.completed", "run.failed", "run.cancelled")
    if "received" not in marks:
        raise RuntimeError(f"run {run['id']}: no run.started before its end")
    marks["t0"] = t0
    return str(run["id"]), marks


async def measure(runs: int, base: str, token: str) -> tuple[list[dict[str, float]], list[float]]:
    import httpx

    from agentflow.models import WorkflowRun

    samples: list[dict[str, float]] = []
    floors: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:
        for warm in (True, False):  # a few unmeasured rounds first: imports, connections, caches
            for _ in range(5 if warm else runs):
                floor = await asyncio.to_thread(measure_floor)
                run_id, marks = await measure_agentflow(http, base, token)
                started_at = await asyncio.to_thread(
                    lambda run_id=run_id: WorkflowRun.objects.values_list("started_at", flat=True).get(
                        pk=run_id
                    )
                )
                if started_at is None:
                    raise RuntimeError(f"run {run_id} has no started_at")
                marks["claimed"] = started_at.timestamp() - marks.pop("t0")
                if not warm:
                    floors.append(floor)
                    samples.append(marks)
    return samples, floors


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _row(label: str, values: list[float]) -> str:
    return (
        f"  {label:<44}{_pct(values, 0.5) * 1e3:8.1f}{_pct(values, 0.9) * 1e3:8.1f}"
        f"{_pct(values, 0.99) * 1e3:8.1f}{max(values) * 1e3:8.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="measured runs (and floor samples)")
    parser.add_argument("--pool", choices=("prefork", "solo"), default="prefork")
    parser.add_argument(
        "--connections",
        choices=("kept", "per-task"),
        default="kept",
        help="kept: pooled under ASGI, reused by the worker (docs/deploy.md); per-task: a new one each time",
    )
    parser.add_argument(
        "--deadline", type=float, default=600.0, help="abort (and stop everything) after this"
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    from bench import arm_deadline, disarm_deadline

    arm_deadline(args.deadline)
    started = time.monotonic()
    # Read by bench/settings.py, here and in the worker and server processes (they inherit the environment).
    kept = "1" if args.connections == "kept" else "0"
    os.environ["BENCH_DB_POOL"] = os.environ["BENCH_DB_REUSE"] = kept
    from bench._streaming import AsgiServer, environment, setup_django
    from bench.step_overhead import start_worker, stop_worker, wait_ready

    setup_django()
    token = make_user()
    log_path = Path(tempfile.mkstemp(prefix="agentflow-bench-start-worker-", suffix=".log")[1])
    worker = None
    server = None
    failed = True
    try:
        worker = start_worker(
            log_path, pool=args.pool, processes=1 if args.pool == "solo" else 2, name="bench-start"
        )
        server = AsgiServer()
        server.wait_ready()
        ready_s = wait_ready(worker, 60)
        base = f"http://127.0.0.1:{server.port}"
        samples, floors = asyncio.run(measure(args.runs, base, token))

        print("agentflow start latency: POST .../runs/ -> run.started at a websocket client")
        print("=" * 100)
        for key, value in environment():
            print(f"  {key:<20} {value}")
        print(
            f"  {'Worker':<20} celery -A bench.celery_app worker -P {args.pool} (ready after {ready_s:.2f}s)"
        )
        print(f"  {'ASGI server':<20} uvicorn tests.asgi:application (pid {server.pid})")
        print(
            f"  {'DB connections':<20} "
            + (
                "kept: Django's pool in the server, CELERY_DB_REUSE_MAX=100 in the worker"
                if args.connections == "kept"
                else "per-task: a new connection per request and per task (Django's and Celery's default)"
            )
        )
        print(f"  {'Runs':<20} {args.runs} of {WORKFLOW} {{steps: 0}}, one at a time, after 5 warm-up rounds")
        print()
        print(f"  {'ms after the POST was sent':<44}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
        print("-" * 100)
        labels = {
            "response": "202 response received",
            "open": "websocket open",
            "claimed": "run claimed by the worker (started_at)",
            "appended": "run.started built (its ts)",
            "received": "run.started received by the client",
        }
        for mark in MARKS:
            print(_row(labels[mark], [s[mark] for s in samples]))
        print(_row("floor: apply_async -> the task's first line", floors))
        print()
        p50, floor_p50 = _pct([s["received"] for s in samples], 0.5), _pct(floors, 0.5)
        ratio = p50 / floor_p50
        verdict = "MET" if ratio <= TARGET_RATIO else "NOT MET"
        print(f"  floor p50 {floor_p50 * 1e3:.1f} ms; agentflow p50 {p50 * 1e3:.1f} ms; ratio {ratio:.2f}")
        print(f"  target p50 <= {TARGET_RATIO:g}x the floor: {verdict}")
        print(
            f"\n  load average {os.getloadavg()[0]:.2f} (1 min) at end; elapsed {time.monotonic() - started:.1f}s"
        )
        failed = False
        return 0
    finally:
        disarm_deadline()
        stop_worker(worker)
        if server is not None:
            server.stop(failed=failed)
        if failed and log_path.exists():
            print(f"\n--- worker log ---\n{log_path.read_text(errors='replace')[-4000:]}", file=sys.stderr)
        log_path.unlink(missing_ok=True)
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
