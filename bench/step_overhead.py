#!/usr/bin/env python
"""Per-step overhead of a durable agentflow step, against a plain Celery chain on the same worker.

    python bench/step_overhead.py [--steps 100] [--warmup 2] [--reps 5]

Everything runs against ONE Celery worker subprocess (solo pool: one process, one thread executing tasks)
and the same Redis server and PostgreSQL:

  (a) baseline:  ``chain(noop.s(0), noop.s(), ...)`` of N no-op tasks with a Redis result backend, timed from
                 ``apply_async`` until the chain's final result is available (``AsyncResult.get``).
  (b) agentflow: ``agentflow.start("bench-noop-steps", {"steps": N})`` timed until ``agentflow.wait`` returns,
                 and the same with 0 steps; per-step overhead = (t(N) - t(0)) / N.

Setup done here: database ``agentflow_bench`` (created if missing, migrated, agentflow tables truncated),
Redis db 14 (``BENCH_REDIS_URL``) for broker, result backend and streams (only the bench's keys and the
worker's queues are deleted), settings ``bench.settings``, Celery app ``bench.celery_app``. The worker's log
is kept in a temporary file and printed if it fails. The whole script is bounded by ``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

QUEUES = ("agentflow", "celery")


class Deadline(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise Deadline("the benchmark ran past its deadline")


# -- setup -----------------------------------------------------------------------------------------------------


def ensure_database() -> None:
    """Create the bench database if it does not exist (PostgreSQL, through the maintenance database)."""
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        return
    params = {"host": db.get("HOST") or None, "port": db.get("PORT") or None, "user": db.get("USER") or None}
    if db.get("PASSWORD"):
        params["password"] = db["PASSWORD"]
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db["NAME"],)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')


def reset_state() -> None:
    """Empty the bench's tables and delete its Redis keys (streams, results, queued messages)."""
    from django.conf import settings
    from django.db import connection

    from agentflow import streams
    from agentflow.models import RunEvent, StepRun, WorkflowRun

    tables = ", ".join(m._meta.db_table for m in (RunEvent, StepRun, WorkflowRun))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} CASCADE")

    client = streams.get_client()
    patterns = [f"{settings.BENCH_KEY_PREFIX}*", "agentflow-bench-cache*", "celery-task-meta-*", "unacked*"]
    for pattern in patterns:
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])
    for queue in QUEUES:  # kombu's Redis transport keeps priority sub-queues as queue + "\x06\x16" + n
        client.delete(queue, *(f"{queue}\x06\x16{n}" for n in (3, 6, 9)))


def start_worker(log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    cmd = [
        sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
        "-P", "solo", "-c", "1", "-Q", ",".join(QUEUES),
        "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "warning",
        "-n", f"bench-{os.getpid()}@%h",
    ]  # fmt: skip
    log = open(log_path, "wb")  # noqa: SIM115  (closed by the caller's cleanup through the process)
    try:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, killed as a whole at the end
        )  # fmt: skip
    finally:
        log.close()


def stop_worker(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            if pgid is not None:
                os.killpg(pgid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    if pgid is not None:  # anything left in the group (there should be nothing)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_ready(proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Round-trip a no-op task until the worker answers; return seconds waited."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from bench.celery_app import noop

    t0 = time.monotonic()
    deadline = t0 + timeout_s
    pending = noop.apply_async(args=(42,))
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with status {proc.returncode} before it was ready")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"the worker was not ready within {timeout_s}s")
        try:
            if pending.get(timeout=min(1.0, remaining)) == 42:
                return time.monotonic() - t0
        except CeleryTimeout:
            continue


# -- measurements --------------------------------------------------------------------------------------------


def time_chain(n: int) -> float:
    from celery import chain

    from bench.celery_app import noop

    sig = chain(noop.s(0), *(noop.s() for _ in range(n - 1))) if n > 1 else noop.s(0)
    t0 = time.perf_counter()
    result = sig.apply_async()
    value = result.get(timeout=30)
    elapsed = time.perf_counter() - t0
    if value != 0:
        raise RuntimeError(f"the chain returned {value!r}")
    return elapsed


def time_agentflow(n: int, extras: dict[str, list[float]]) -> float:
    import agentflow
    from agentflow.models import StepRun, WorkflowRun

    t0 = time.perf_counter()
    run = agentflow.start("bench-noop-steps", {"steps": n})
    output = agentflow.wait(run, timeout_seconds=30)
    elapsed = time.perf_counter() - t0
    if output != n * (n - 1) // 2:
        raise RuntimeError(f"run {run.pk} returned {output!r}")
    row = WorkflowRun.objects.get(pk=run.pk)
    steps = StepRun.objects.filter(run_id=run.pk).count()
    if steps != n or row.step_count != n:
        raise RuntimeError(f"run {run.pk} recorded {steps} steps (step_count {row.step_count}), not {n}")
    # In-worker time: from the claim (started_at) to the final status update (finished_at).
    extras.setdefault(f"worker:{n}", []).append((row.finished_at - row.started_at).total_seconds())
    extras.setdefault(f"queue:{n}", []).append((row.started_at - row.created_at).total_seconds())
    return elapsed


# -- report ----------------------------------------------------------------------------------------------------


def environment() -> list[tuple[str, str]]:
    import celery
    import django
    import kombu
    import psycopg
    import redis
    from django.db import connection

    from agentflow import streams

    info = streams.get_client().info("server")
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        pg_version = cursor.fetchone()[0].split(" on ")[0]
        cursor.execute("SELECT current_setting('fsync'), current_setting('synchronous_commit')")
        fsync, sync_commit = cursor.fetchone()
    from django.conf import settings

    return [
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("Platform", f"{platform.platform()}, {os.cpu_count()} CPUs"),
        ("Django", django.get_version()),
        ("Celery / kombu", f"{celery.__version__} / {kombu.__version__}"),
        ("redis-py / hiredis", f"{redis.__version__} / {_hiredis()}"),
        ("psycopg", psycopg.__version__),
        ("Redis server", f"{info.get('redis_version')} at {settings.BENCH_REDIS_URL}"),
        ("PostgreSQL", f"{pg_version}, fsync={fsync}, synchronous_commit={sync_commit}"),
        ("Database", settings.DATABASES["default"]["NAME"]),
        ("Broker / results", f"{settings.CELERY_BROKER_URL} / {settings.CELERY_RESULT_BACKEND}"),
        ("Worker", "celery -A bench.celery_app worker -P solo -c 1 -Q agentflow,celery (acks_late, prefetch 1)"),
    ]


def _hiredis() -> str:
    try:
        import hiredis

        return hiredis.__version__
    except ImportError:
        return "not installed"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="tasks in the chain / steps in the workflow")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--deadline", type=float, default=110.0, help="abort (and stop the worker) after this")
    args = parser.parse_args()
    n = args.steps
    if n < 2:
        parser.error("--steps must be at least 2")

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(args.deadline)))
    started = time.monotonic()

    import django

    ensure_database()
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    reset_state()

    log_fd, log_name = tempfile.mkstemp(prefix="agentflow-bench-worker-", suffix=".log")
    os.close(log_fd)
    log_path = Path(log_name)
    proc = None
    failed = True
    try:
        proc = start_worker(log_path)
        ready_s = wait_ready(proc, 30.0)

        print("agentflow step-overhead benchmark")
        print("=" * 78)
        for key, value in environment():
            print(f"  {key:<20} {value}")
        print(f"  {'Worker ready after':<20} {ready_s:.2f}s (pid {proc.pid})")
        print(f"  {'Repetitions':<20} warm-up {args.warmup}, measured {args.reps}, N = {n}")
        print()

        extras: dict[str, list[float]] = {}
        configs: list[tuple[str, Any]] = [
            (f"celery chain x{n}", lambda: time_chain(n)),
            ("celery chain x1", lambda: time_chain(1)),
            ("agentflow 0 steps", lambda: time_agentflow(0, extras)),
            (f"agentflow {n} steps", lambda: time_agentflow(n, extras)),
        ]
        samples: dict[str, list[float]] = {name: [] for name, _ in configs}
        for _ in range(args.warmup):
            for _name, fn in configs:
                fn()
        extras.clear()
        # Interleaved, so drift (other load, a warming cache) affects every configuration alike.
        for _ in range(args.reps):
            for name, fn in configs:
                samples[name].append(fn())

        med = {name: statistics.median(v) for name, v in samples.items()}
        low = {name: min(v) for name, v in samples.items()}

        print(f"{'measurement':<26}{'median ms':>11}{'min ms':>11}{'max ms':>11}{'per unit (median)':>20}")
        print("-" * 79)
        for name, values in samples.items():
            units = n if name.endswith(f"x{n}") or name.endswith(f"{n} steps") else 1
            per = f"{med[name] / units * 1000:.3f} ms/{'task' if 'celery' in name else 'step'}" if units > 1 else ""
            print(f"{name:<26}{ms(med[name]):>11}{ms(low[name]):>11}{ms(max(values)):>11}{per:>20}")
        for key in ("worker:0", f"worker:{n}", "queue:0", f"queue:{n}"):
            values = extras.get(key, [])
            if values:
                what, count = key.split(":")
                label = f"  in worker, {count} steps" if what == "worker" else f"  queued, {count} steps"
                print(f"{label:<26}{ms(statistics.median(values)):>11}{ms(min(values)):>11}{ms(max(values)):>11}")
        print()

        chain_n, chain_1 = f"celery chain x{n}", "celery chain x1"
        af_0, af_n = "agentflow 0 steps", f"agentflow {n} steps"
        celery_per_task = med[chain_n] / n
        celery_marginal = (med[chain_n] - med[chain_1]) / (n - 1)
        af_overhead = (med[af_n] - med[af_0]) / n
        af_total_per = med[af_n] / n
        af_overhead_min = (low[af_n] - low[af_0]) / n
        worker_per = (
            (statistics.median(extras[f"worker:{n}"]) - statistics.median(extras["worker:0"])) / n
            if extras.get(f"worker:{n}") and extras.get("worker:0")
            else float("nan")
        )
        ratio = af_overhead / celery_per_task
        print("per unit (medians)")
        print("-" * 79)
        print(f"  celery per task            total/{n}:                  {celery_per_task * 1000:8.3f} ms")
        print(f"  celery per task            (x{n} - x1)/{n - 1}:            {celery_marginal * 1000:8.3f} ms")
        print(f"  agentflow per step         (t({n}) - t(0))/{n}:         {af_overhead * 1000:8.3f} ms"
              f"   (from minima: {af_overhead_min * 1000:.3f} ms)")  # fmt: skip
        print(f"  agentflow per step         total/{n}:                  {af_total_per * 1000:8.3f} ms")
        print(f"  agentflow per step, worker (in-worker {n} - 0)/{n}:     {worker_per * 1000:8.3f} ms")
        print()
        print(f"  ratio agentflow per-step / celery per-task = {ratio:.3f}"
              f"   (total/{n} vs total/{n}: {af_total_per / celery_per_task:.3f})")  # fmt: skip
        target_ok = af_overhead <= 0.001 and ratio <= 0.45
        print(f"  target (<= 1.0 ms per durable step, ratio <= 0.45): {'MET' if target_ok else 'NOT MET'}")
        print(f"\n  elapsed {time.monotonic() - started:.1f}s")
        failed = False
        return 0
    finally:
        signal.alarm(0)
        stop_worker(proc)
        if failed and log_path.exists():
            tail = log_path.read_text(errors="replace")[-4000:]
            print(f"\n--- worker log ({log_path}) ---\n{tail}", file=sys.stderr)
        try:
            log_path.unlink()
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
