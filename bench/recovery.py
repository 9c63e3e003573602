#!/usr/bin/env python
"""Recovery time: from the SIGKILL of the worker running a run to the run moving again on another worker.

    python bench/recovery.py [--reps 5] [--lease 4] [--heartbeat 1] [--monitor-interval 0.5]

Two Celery workers (solo pool, each its own process group) serve the run queue; this process runs the
monitor (``agentflow.monitor.check_runs()``) every ``--monitor-interval`` seconds in a thread, as
``manage.py agentflow_monitor --loop`` or Celery beat would. Each repetition starts a run of
``bench-recovery-steps`` (sequential steps of ``--step-seconds``), waits until two of its steps completed
and then a random fraction of a heartbeat interval (``--seed``), SIGKILLs the process group of the worker
holding it (the other one is the standby), and measures, from the kill:

- ``monitor``: when the monitor re-enqueued the run (its lease had expired);
- ``recovered``: when the new incarnation's ``run.recovered`` event was appended (its ``ts``);
- ``moving``: when the next step started on the standby (the first ``step.started`` of the new epoch).

It then starts a replacement worker, checks that the run completes with the right output, and goes on.
Expect about ``LEASE_SECONDS`` minus the time since the last heartbeat, plus up to one monitor interval.
The figures are printed next to ``LEASE_SECONDS`` and ``HEARTBEAT_INTERVAL_SECONDS`` and as a ratio to
the lease (median, max).

Setup as bench/step_overhead.py: settings ``bench.settings`` (database ``agentflow_bench``, created and
migrated, its tables emptied; Redis db 14), with ``LEASE_SECONDS`` and ``HEARTBEAT_INTERVAL_SECONDS`` from
``--lease`` / ``--heartbeat`` (passed to the workers as BENCH_RECOVERY_LEASE / BENCH_RECOVERY_HEARTBEAT; the
workers load this module as their Celery app, which registers the workflow). ``--lease 30 --heartbeat 5``
measures agentflow's defaults (slow: ~35 s a repetition). Workers' logs go to temporary files, printed if
something fails. The script aborts after ``--deadline`` seconds and always kills the workers' process groups.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")


def _configure() -> None:
    """Put the lease and heartbeat under test into bench.settings, before Django reads it (here and in
    the workers, which import this module as their Celery app)."""
    import bench.settings as bench_settings

    bench_settings.AGENTFLOW = {
        **bench_settings.AGENTFLOW,
        "LEASE_SECONDS": float(os.environ.get("BENCH_RECOVERY_LEASE", "4")),
        "HEARTBEAT_INTERVAL_SECONDS": float(os.environ.get("BENCH_RECOVERY_HEARTBEAT", "1")),
    }


_configure()

from agentflow import component, workflow  # noqa: E402
from bench import event_time, wait_until  # noqa: E402
from bench.celery_app import app  # noqa: E402, F401  (`celery -A bench.recovery worker` uses this app)

WORKFLOW = "bench-recovery-steps"
QUEUES = ("agentflow", "celery")


@component
def sleepy_step(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


@workflow(name=WORKFLOW, description="N sequential steps of a fixed duration (recovery benchmark).")
def sleepy_steps(steps: int, seconds: float) -> int:
    return sum(sleepy_step(i, seconds) for i in range(steps))


class Worker:
    """``celery -A bench.recovery worker -P solo`` in its own process group, logging to a temporary file."""

    def __init__(self, name: str, lease: float, heartbeat: float) -> None:
        fd, path = tempfile.mkstemp(prefix=f"agentflow-recovery-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(
            DJANGO_SETTINGS_MODULE="bench.settings",
            BENCH_RECOVERY_LEASE=str(lease),
            BENCH_RECOVERY_HEARTBEAT=str(heartbeat),
        )
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench.recovery", "worker", "-P", "solo", "-c", "1",
            "-Q", ",".join(QUEUES), "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info",
            "-n", f"{name}-{os.getpid()}@%h",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = 60.0) -> Worker:
        deadline = time.monotonic() + timeout_s
        while " ready." not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {self.pid} exited ({self.proc.returncode}):\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.pid} not ready within {timeout_s}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def close(self) -> None:
        from bench.step_overhead import stop_worker

        stop_worker(self.proc)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


class MonitorLoop(threading.Thread):
    """``check_runs()`` every ``interval`` seconds; remembers when it recovered something."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="bench-monitor", daemon=True)
        self.interval = interval
        self.recoveries: list[float] = []
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def run(self) -> None:
        from django.db import connection

        from agentflow.monitor import check_runs

        try:
            while not self._halt.is_set():
                try:
                    if check_runs().recovered:
                        self.recoveries.append(time.time())
                except Exception as exc:  # reported at the end; the loop goes on, as the real monitor's does
                    self.errors.append(exc)
                self._halt.wait(self.interval)
        finally:
            connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def one_repetition(
    workers: list[Worker], monitor: MonitorLoop, args: argparse.Namespace, rng: random.Random
) -> dict[str, float]:
    import agentflow
    from agentflow import streams
    from agentflow.models import WorkflowRun

    run = agentflow.start(WORKFLOW, {"steps": args.steps, "seconds": args.step_seconds})
    run_id = str(run.pk)

    def events() -> list[dict[str, Any]]:
        return streams.read_events(run_id)

    wait_until(
        lambda: sum(e["type"] == "step.completed" for e in events()) >= 2, 30, "two completed steps", 0.01
    )
    time.sleep(rng.uniform(0, args.heartbeat))  # kill at a random phase of the heartbeat
    holder = WorkflowRun.objects.get(pk=run_id)
    if holder.status != "running":
        raise RuntimeError(f"run {run_id} is {holder.status} before the kill: give it more --steps")
    holder_pid = int(holder.worker.rsplit(":", 1)[1])
    victim = next((w for w in workers if w.pid == holder_pid), None)
    if victim is None:
        raise RuntimeError(
            f"run {run_id} is held by {holder_pid}, not by a worker of ours: {[w.pid for w in workers]}"
        )
    killed_at = time.time()
    victim.kill()
    workers.remove(victim)
    last_beat = WorkflowRun.objects.get(
        pk=run_id
    ).heartbeat_at.timestamp()  # the dead worker's last heartbeat

    timeout = args.lease + 3 * args.monitor_interval + 15
    recovered = wait_until(
        lambda: next((e for e in events() if e["type"] == "run.recovered"), None),
        timeout,
        "run.recovered",
        0.01,
    )
    moving = wait_until(
        lambda: next(
            (e for e in events() if e["type"] == "step.started" and e["epoch"] == recovered["epoch"]), None
        ),
        15,
        "the next step to start",
        0.01,
    )
    new_holder = int(WorkflowRun.objects.get(pk=run_id).worker.rsplit(":", 1)[1])
    if new_holder == holder_pid or new_holder not in {w.pid for w in workers}:
        raise RuntimeError(f"run {run_id} resumed on {new_holder}, not on the standby")
    detected = next((t for t in monitor.recoveries if t >= killed_at), float("nan"))

    workers.append(Worker(f"bench-recovery-{len(monitor.recoveries)}", args.lease, args.heartbeat))
    output = agentflow.wait(run_id, timeout_seconds=args.steps * args.step_seconds + 30)
    if output != sum(range(args.steps)):
        raise RuntimeError(f"run {run_id} returned {output!r}")
    workers[-1].wait_ready()
    return {
        "since_beat": killed_at - last_beat,
        "monitor": detected - killed_at,
        "recovered": event_time(recovered["ts"]) - killed_at,
        "moving": event_time(moving["ts"]) - killed_at,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="measured kills")
    parser.add_argument("--lease", type=float, default=4.0, help="LEASE_SECONDS")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="HEARTBEAT_INTERVAL_SECONDS")
    parser.add_argument("--monitor-interval", type=float, default=0.5, help="seconds between monitor passes")
    parser.add_argument(
        "--steps",
        type=int,
        default=12,
        help="steps of each run (raised so a run outlasts the wait before the kill)",
    )
    parser.add_argument("--step-seconds", type=float, default=0.25, help="duration of each step")
    parser.add_argument("--seed", type=int, default=1, help="seeds the moment of each kill")
    parser.add_argument(
        "--deadline", type=float, default=150.0, help="abort (and kill the workers) after this"
    )
    args = parser.parse_args()
    if args.reps < 1 or args.lease <= 0 or args.heartbeat <= 0 or args.steps < 4:
        parser.error("--reps >= 1, --lease and --heartbeat > 0, --steps >= 4")
    # The run must outlast two steps plus the random wait before the kill, with a margin.
    args.steps = max(args.steps, math.ceil((args.heartbeat + 2) / args.step_seconds) + 4)
    os.environ["BENCH_RECOVERY_LEASE"] = str(args.lease)
    os.environ["BENCH_RECOVERY_HEARTBEAT"] = str(args.heartbeat)
    _configure()

    from bench import arm_deadline, disarm_deadline

    arm_deadline(args.deadline)
    started = time.monotonic()

    import django

    from bench.step_overhead import ensure_database, reset_state

    ensure_database()
    django.setup()
    from django.core.management import call_command

    from agentflow.conf import agentflow_settings

    call_command("migrate", verbosity=0, interactive=False)
    reset_state()
    logging.getLogger("agentflow.monitor").setLevel(
        logging.ERROR
    )  # its "lease expired" line is expected here
    rng = random.Random(args.seed)

    workers: list[Worker] = []
    spawned: list[Worker] = []
    monitor = MonitorLoop(args.monitor_interval)
    failed = True
    try:
        for name in ("a", "b"):
            workers.append(Worker(f"bench-recovery-{name}", args.lease, args.heartbeat))
            spawned.append(workers[-1])
        for worker in workers:
            worker.wait_ready()
        monitor.start()
        lease, beat = agentflow_settings.lease_seconds, agentflow_settings.heartbeat_interval_seconds
        print("agentflow recovery benchmark: SIGKILL of the worker holding a run -> the run moving again")
        print("=" * 100)
        print(f"  LEASE_SECONDS {lease:g}, HEARTBEAT_INTERVAL_SECONDS {beat:g}, monitor every "
              f"{args.monitor_interval:g} s (in this process), 2 solo workers (one standby)")  # fmt: skip
        print(f"  run: {args.steps} steps of {args.step_seconds:g} s, killed after its second step; "
              f"{args.reps} repetitions; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        print()
        print(f"  {'rep':>3} {'since last beat':>16} {'monitor':>9} {'run.recovered':>14} {'next step':>10}"
              f" {'/ lease':>8}")  # fmt: skip
        samples = []
        for rep in range(args.reps):
            sample = one_repetition(workers, monitor, args, rng)
            spawned += [w for w in workers if w not in spawned]
            samples.append(sample)
            print(f"  {rep + 1:>3} {sample['since_beat']:>15.2f}s {sample['monitor']:>8.2f}s "
                  f"{sample['recovered']:>13.2f}s {sample['moving']:>9.2f}s {sample['moving'] / lease:>8.2f}")  # fmt: skip
        print("-" * 100)
        for key, label in (("monitor", "monitor re-enqueued"), ("recovered", "run.recovered"),
                           ("moving", "next step started")):  # fmt: skip
            values = [s[key] for s in samples]
            med, top = statistics.median(values), max(values)
            print(f"  {label:<22} median {med:6.2f} s  max {top:6.2f} s   = {med / lease:.2f} / {top / lease:.2f}"
                  " x LEASE_SECONDS")  # fmt: skip
        print(f"  expected about LEASE_SECONDS - since last beat + up to one monitor interval "
              f"({lease:g} - U(0, {beat:g}) + U(0, {args.monitor_interval:g}) s)")  # fmt: skip
        if monitor.errors:
            print(f"  monitor errors: {monitor.errors[:3]}")
        print(f"\n  elapsed {time.monotonic() - started:.1f}s")
        failed = False
        return 0
    finally:
        disarm_deadline()
        try:
            monitor.stop()
            if failed and monitor.errors:
                print(f"monitor errors: {monitor.errors[:3]!r}", file=sys.stderr)
        finally:
            spawned += [w for w in workers if w not in spawned]
            for worker in spawned:
                if failed:
                    print(f"\n--- worker {worker.pid} log ---\n{worker.log()[-3000:]}", file=sys.stderr)
                worker.close()


if __name__ == "__main__":
    sys.exit(main())
