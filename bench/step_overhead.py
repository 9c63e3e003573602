#!/usr/bin/env python
"""Per-step overhead of a durable agentflow step, against a plain Celery chain on the same worker.

    python bench/step_overhead.py [--steps 100] [--warmup 2] [--reps 15]

Everything runs against ONE Celery worker subprocess (solo pool: a single process executes every task) and
the same Redis server and PostgreSQL:

  (a) baseline:  ``chain(noop.s(0), noop.s(), ...)`` of N no-op tasks with a Redis result backend, timed from
                 ``apply_async`` until the chain's final result is available (``AsyncResult.get``).
  (b) agentflow: ``agentflow.start("bench-noop-steps", {"steps": N})`` timed until ``agentflow.wait`` returns,
                 and the same with 0 steps; per-step overhead = (t(N) - t(0)) / N.

Configurations are measured interleaved (one of each per repetition), after the worker went idle. Besides
wall time, each sample records the CPU time the worker process, this process (the client), the PostgreSQL
backends connected to the bench database and the Redis server (server-wide: other clients count too) spent.

Setup done here: database ``agentflow_bench`` (created if missing, migrated, agentflow tables truncated),
Redis db 14 (``BENCH_REDIS_URL``) for broker, result backend and streams (only the bench's keys and the
worker's queues are deleted), settings ``bench.settings``, Celery app ``bench.celery_app``. With
``BENCH_PATCH=module``, that module is imported in the client and in the worker once Django is set up (to try
an engine change without editing agentflow; see bench/celery_app.py). The worker's log
goes to a temporary file, printed if something fails. The script aborts after ``--deadline`` seconds and
always stops the worker's process group. Exit status 0 when every measurement succeeded, whatever the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

QUEUES = ("agentflow", "celery")
WORKFLOW = "bench-noop-steps"
TICK = os.sysconf("SC_CLK_TCK")


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

    from bench import BENCH_MARKER, claim_redis

    claim_redis()
    from django.db import connection

    from agentflow import streams
    from agentflow.models import RunEvent, StepRun, WorkflowRun

    tables = ", ".join(m._meta.db_table for m in (RunEvent, StepRun, WorkflowRun))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} CASCADE")

    client = streams.get_client()
    marker = (BENCH_MARKER, BENCH_MARKER.encode())  # as the client gives keys back, str or bytes
    for pattern in (
        f"{settings.BENCH_KEY_PREFIX}*",
        "agentflow-bench-cache*",
        "celery-task-meta-*",
        "unacked*",
    ):
        # The marker shares the keys' prefix: deleting it would make the next benchmark refuse the database.
        batch = [key for key in client.scan_iter(match=pattern, count=1000) if key not in marker]
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])
    for queue in QUEUES:  # kombu's Redis transport keeps priority sub-queues as queue + "\x06\x16" + n
        client.delete(queue, *(f"{queue}\x06\x16{n}" for n in (3, 6, 9)))


def start_worker(
    log_path: Path,
    *,
    pool: str = "solo",
    processes: int = 1,
    name: str = "bench",
    env: dict[str, str | None] | None = None,
) -> subprocess.Popen[bytes]:
    """A Celery worker of bench.celery_app on :data:`QUEUES`, in its own process group, logging to ``log_path``.
    ``env``: variables to set for it (None: to remove from this process's environment)."""
    worker_env = dict(os.environ)
    worker_env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + worker_env["PYTHONPATH"] if worker_env.get("PYTHONPATH") else ""
    )
    worker_env["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    for key, value in (env or {}).items():
        if value is None:
            worker_env.pop(key, None)
        else:
            worker_env[key] = value
    cmd = [
        sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
        "-P", pool, "-c", str(processes), "-Q", ",".join(QUEUES),
        "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "warning",
        "-n", f"{name}-{os.getpid()}@%h",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, killed as a whole at the end
        )  # fmt: skip


def stop_worker(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the worker's process group, then SIGKILL whatever is left."""
    if proc is None:
        return
    pgid = proc.pid  # start_new_session: the worker leads its own group
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):  # anything left in the group (nothing)
        os.killpg(pgid, signal.SIGKILL)


def wait_ready(proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Round-trip a no-op task until the worker answers; return the seconds it took."""
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


# -- CPU accounting --------------------------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process, threads (also exited ones) included, in seconds (clock-tick resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class Probe:
    """CPU counters of the worker, this process, the bench database's PostgreSQL backends and Redis."""

    def __init__(self, worker_pid: int) -> None:
        from django.conf import settings

        from agentflow import streams

        self.worker_pid = worker_pid
        self.db_name = settings.DATABASES["default"]["NAME"]
        self.redis = streams.get_client()

    def _pg_pids(self) -> list[int]:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [self.db_name])
            return [row[0] for row in cursor.fetchall()]

    def snapshot(self) -> dict[str, Any]:
        info = self.redis.info("cpu")
        pg = {pid: _proc_cpu(pid) for pid in self._pg_pids()}
        return {
            "worker": _proc_cpu(self.worker_pid),
            "driver": time.process_time(),
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "pg": pg,
        }

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        pg = sum(cpu - before["pg"].get(pid, cpu) for pid, cpu in after["pg"].items())
        return {
            "worker": after["worker"] - before["worker"],
            "redis": after["redis"] - before["redis"],
            "pg": pg,
        }


# -- measurements --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float  # the timed interval
    driver_cpu: float  # CPU of this process during the timed interval
    worker_cpu: float = 0.0  # from the start until the worker is done with the run
    pg_cpu: float = 0.0
    redis_cpu: float = 0.0
    in_worker: float | None = None  # agentflow: run.started_at -> run.finished_at (claim to final UPDATE)
    done: float | None = None  # agentflow: until the run's events are archived (the task's last write)


def measure_chain(n: int) -> Sample:
    from celery import chain

    from bench.celery_app import noop

    sig = chain(noop.s(0), *(noop.s() for _ in range(n - 1))) if n > 1 else noop.s(0)
    c0 = time.process_time()
    t0 = time.perf_counter()
    result = sig.apply_async()
    value = result.get(timeout=30)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if value != 0:
        raise RuntimeError(f"the chain returned {value!r}")
    return Sample(elapsed, cpu)


def measure_agentflow(n: int) -> Sample:
    import agentflow
    from agentflow.models import StepRun, WorkflowRun

    c0 = time.process_time()
    t0 = time.perf_counter()
    run = agentflow.start(WORKFLOW, {"steps": n})
    output = agentflow.wait(run, timeout_seconds=30)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if output != n * (n - 1) // 2:
        raise RuntimeError(f"run {run.pk} returned {output!r}")
    # Not timed: wait for the worker to finish the task (finalize_stream archives the events, then sets
    # last_event_id), so the next measurement starts on an idle worker.
    deadline = time.monotonic() + 10
    while True:
        row = WorkflowRun.objects.get(pk=run.pk)
        if row.last_event_id:
            done = time.perf_counter() - t0
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run.pk} was not finalized within 10s of completing")
        time.sleep(0.0005)
    steps = StepRun.objects.filter(run_id=run.pk).count()
    if steps != n or row.step_count != n:
        raise RuntimeError(f"run {run.pk} recorded {steps} steps (step_count {row.step_count}), not {n}")
    in_worker = (row.finished_at - row.started_at).total_seconds()
    return Sample(elapsed, cpu, in_worker=in_worker, done=done)


def measured(probe: Probe, fn: Any) -> Sample:
    time.sleep(0.02)  # let the worker (and Redis, PostgreSQL) settle after the previous measurement
    before = probe.snapshot()
    sample: Sample = fn()
    delta = Probe.delta(before, probe.snapshot())
    sample.worker_cpu, sample.pg_cpu, sample.redis_cpu = delta["worker"], delta["pg"], delta["redis"]
    return sample


# -- report ----------------------------------------------------------------------------------------------------


def environment() -> list[tuple[str, str]]:
    import celery
    import django
    import kombu
    import psycopg
    import redis
    from django.conf import settings
    from django.db import connection

    from agentflow import streams

    info = streams.get_client().info("server")
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        pg_version = cursor.fetchone()[0].split(" on ")[0]
        cursor.execute("SELECT current_setting('fsync'), current_setting('synchronous_commit')")
        fsync, sync_commit = cursor.fetchone()
    try:
        import hiredis

        hiredis_version = hiredis.__version__
    except ImportError:
        hiredis_version = "not installed"
    return [
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("Platform", f"{platform.platform()}, {os.cpu_count()} CPUs"),
        ("Django", django.get_version()),
        ("Celery / kombu", f"{celery.__version__} / {kombu.__version__}"),
        ("redis-py / hiredis", f"{redis.__version__} / {hiredis_version}"),
        ("psycopg", f"{psycopg.__version__} ({psycopg.pq.__impl__} libpq wrapper)"),
        (
            "Redis server",
            f"{info.get('redis_version')}; broker, results and streams at {settings.BENCH_REDIS_URL}",
        ),
        ("PostgreSQL", f"{pg_version}, fsync={fsync}, synchronous_commit={sync_commit}"),
        ("Database", settings.DATABASES["default"]["NAME"]),
        (
            "Worker",
            "celery -A bench.celery_app worker -P solo -c 1 -Q agentflow,celery (acks_late, prefetch 1)",
        ),
        ("BENCH_PATCH", os.environ.get("BENCH_PATCH") or "none (agentflow as it is)"),
    ]


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) {five:.2f} (5 min)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="tasks in the chain / steps in the workflow")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured repetitions first")
    parser.add_argument("--reps", type=int, default=15, help="measured repetitions of every configuration")
    parser.add_argument(
        "--deadline", type=float, default=110.0, help="abort (and stop the worker) after this"
    )
    args = parser.parse_args()
    n = args.steps
    if n < 2 or args.reps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 2, --reps at least 1")

    from bench import arm_deadline, disarm_deadline

    arm_deadline(args.deadline)
    started = time.monotonic()

    import django

    ensure_database()
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    reset_state()
    patch = os.environ.get("BENCH_PATCH")
    if patch:  # an experiment: the worker imports it too (bench/celery_app.py)
        import importlib

        importlib.import_module(patch)

    log_fd, log_name = tempfile.mkstemp(prefix="agentflow-bench-worker-", suffix=".log")
    os.close(log_fd)
    log_path = Path(log_name)
    proc = None
    failed = True
    try:
        proc = start_worker(log_path)
        ready_s = wait_ready(proc, 30.0)
        probe = Probe(proc.pid)

        print("agentflow step-overhead benchmark")
        print("=" * 100)
        for key, value in environment():
            print(f"  {key:<20} {value}")
        print(f"  {'Worker ready after':<20} {ready_s:.2f}s (pid {proc.pid})")
        print(f"  {'Repetitions':<20} warm-up {args.warmup}, measured {args.reps} (interleaved), N = {n}")
        print(f"  {'Load average':<20} {_load()} at start")
        print()

        chain_n, chain_1, af_0, af_n = (
            f"celery chain x{n}",
            "celery chain x1",
            "agentflow 0 steps",
            f"agentflow {n} steps",
        )
        configs = {
            chain_n: lambda: measure_chain(n),
            chain_1: lambda: measure_chain(1),
            af_0: lambda: measure_agentflow(0),
            af_n: lambda: measure_agentflow(n),
        }
        for _ in range(args.warmup):
            for fn in configs.values():
                measured(probe, fn)
        samples: dict[str, list[Sample]] = {name: [] for name in configs}
        for _ in range(args.reps):  # interleaved: drift and outside load hit every configuration alike
            for name, fn in configs.items():
                samples[name].append(measured(probe, fn))

        def med(name: str, attr: str = "wall") -> float:
            return statistics.median(getattr(s, attr) for s in samples[name])

        def low(name: str, attr: str = "wall") -> float:
            return min(getattr(s, attr) for s in samples[name])

        def mean(name: str, attr: str) -> float:
            return statistics.fmean(getattr(s, attr) for s in samples[name])

        print("whole runs (ms)                    wall                     CPU per run (mean)")
        print(f"{'':<26}{'median':>9}{'min':>9}{'max':>9}   {'worker':>9}{'client':>9}{'PG':>9}{'Redis*':>9}")
        print("-" * 100)
        for name in configs:
            values = [s.wall for s in samples[name]]
            print(
                f"{name:<26}{med(name) * 1e3:9.2f}{low(name) * 1e3:9.2f}{max(values) * 1e3:9.2f}   "
                f"{mean(name, 'worker_cpu') * 1e3:9.2f}{mean(name, 'driver_cpu') * 1e3:9.2f}"
                f"{mean(name, 'pg_cpu') * 1e3:9.2f}{mean(name, 'redis_cpu') * 1e3:9.2f}"
            )
        for name in (af_0, af_n):
            for attr, label in (("in_worker", "in worker"), ("done", "until archived")):
                values = [getattr(s, attr) for s in samples[name]]
                print(f"  {label + ', ' + name.split(' ', 1)[1]:<24}"
                      f"{statistics.median(values) * 1e3:9.2f}{min(values) * 1e3:9.2f}{max(values) * 1e3:9.2f}")  # fmt: skip
        print("  * Redis CPU is server-wide: other clients of the same server count too.")
        print()

        def per(a: str, b: str | None, units: int, attr: str, agg: Any = med) -> float:
            return (agg(a, attr) - (agg(b, attr) if b else 0.0)) / units

        rows = [
            (f"celery per task    total/{n}", chain_n, None, n),
            (f"celery per task    (x{n} - x1)/{n - 1}", chain_n, chain_1, n - 1),
            (f"agentflow per step (t({n}) - t(0))/{n}", af_n, af_0, n),
            (f"agentflow per step total/{n}", af_n, None, n),
        ]
        print("per task / step (µs)                        wall             CPU (means)")
        print(f"{'':<40}{'median':>9}{'min':>9}   {'worker':>9}{'client':>9}{'PG':>9}{'Redis*':>9}")
        print("-" * 100)
        for label, a, b, units in rows:
            print(
                f"{label:<40}{per(a, b, units, 'wall') * 1e6:9.0f}{per(a, b, units, 'wall', low) * 1e6:9.0f}   "
                + "".join(f"{per(a, b, units, attr, mean) * 1e6:9.0f}" for attr in ("worker_cpu", "driver_cpu", "pg_cpu", "redis_cpu"))
            )  # fmt: skip
        for label, attr in (("in worker", "in_worker"), ("until archived", "done")):
            print(f"{'agentflow per step ' + label:<40}{per(af_n, af_0, n, attr) * 1e6:9.0f}"
                  f"{per(af_n, af_0, n, attr, low) * 1e6:9.0f}")  # fmt: skip
        print()

        celery_per_task = med(chain_n) / n
        af_per_step = per(af_n, af_0, n, "wall")
        ratio = af_per_step / celery_per_task
        print(f"  celery per task        {celery_per_task * 1e3:.3f} ms   (median chain x{n} / {n})")
        print(f"  agentflow per step     {af_per_step * 1e3:.3f} ms   ((median t({n}) - median t(0)) / {n})")
        print(f"  ratio = agentflow per-step / celery per-task = {ratio:.3f}"
              f"   (total/{n} over total/{n}: {med(af_n) / med(chain_n):.3f};"
              f" from minima: {per(af_n, af_0, n, 'wall', low) / (low(chain_n) / n):.3f})")  # fmt: skip
        met = af_per_step <= 0.001 and ratio <= 0.45
        print(f"  target <= 1.0 ms per durable step and ratio <= 0.45: {'MET' if met else 'NOT MET'}")
        print(f"\n  load average {_load()} at end; elapsed {time.monotonic() - started:.1f}s")
        failed = False
        return 0
    finally:
        disarm_deadline()
        stop_worker(proc)
        if failed and log_path.exists():
            tail = log_path.read_text(errors="replace")[-4000:]
            print(f"\n--- worker log ({log_path}) ---\n{tail}", file=sys.stderr)
        with contextlib.suppress(OSError):
            log_path.unlink()


if __name__ == "__main__":
    sys.exit(main())
