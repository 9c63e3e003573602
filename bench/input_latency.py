#!/usr/bin/env python
"""Human input latency: from an answer to the run it resumes taking the answer up on a worker.

    BENCH_DB_NAME=agentflow_bench BENCH_REDIS_URL=redis://127.0.0.1:6379/14 python bench/input_latency.py [--reps 30]

One solo Celery worker serves the run queue (as bench/step_overhead.py sets it up: settings ``bench.settings``,
its database created and migrated, its tables and Redis keys emptied). Each repetition starts a run of
``bench-asks`` (one ``agentflow.wait_for_input``), waits until the run is ``waiting`` for input (its worker
free again), then answers with ``agentflow.send_input()`` (what ``POST /api/runs/{id}/input/{key}/`` calls
after authentication and parsing) and measures, from just before the answer:

- ``answer``: the answer recorded (the transaction that checkpoints it and makes the run due committed, and
  the run enqueued);
- ``run.continued``: the new incarnation's ``run.continued`` event's ``ts`` (claimed by the worker);
- ``completed``: its ``run.completed`` (the answer replayed, the output recorded).

The target in the issue is p50 <= 200 ms for ``run.continued``. Figures depend on the machine's load; the
load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from bench import event_time, wait_until  # noqa: E402


def one(reps: int) -> list[dict[str, float]]:
    import agentflow
    from agentflow import streams
    from agentflow.models import WorkflowRun

    samples = []
    for rep in range(reps):
        run = agentflow.start("bench-asks", {})
        wait_until(
            lambda run=run: WorkflowRun.objects.filter(
                pk=run.pk, status="waiting", wait_reason="input"
            ).exists(),
            30,
            "the run to wait for input",
        )
        started = time.time()
        agentflow.send_input(run, "go", rep)
        answered = time.time()

        def ended(run_id: str = str(run.pk)) -> list[dict[str, Any]] | None:
            events = streams.read_events(run_id)
            return events if any(e["type"] == "run.completed" for e in events) else None

        events = wait_until(ended, 30, "the run to complete")
        by_type = {e["type"]: e for e in events}
        assert WorkflowRun.objects.get(pk=run.pk).output == rep
        samples.append(
            {
                "answer": answered - started,
                "continued": event_time(by_type["run.continued"]["ts"]) - started,
                "completed": event_time(by_type["run.completed"]["ts"]) - started,
            }
        )
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument(
        "--deadline", type=float, default=300.0, help="abort (and stop the worker) after this"
    )
    args = parser.parse_args()

    from bench import arm_deadline, disarm_deadline

    arm_deadline(args.deadline)
    import django

    from bench.step_overhead import ensure_database, reset_state, start_worker, stop_worker, wait_ready

    ensure_database()
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    reset_state()
    log = Path(tempfile.mkstemp(prefix="agentflow-input-latency-", suffix=".log")[1])
    worker = start_worker(log)
    try:
        wait_ready(worker, 60)
        one(2)  # warm-up: imports, connections
        samples = one(args.reps)
    finally:
        stop_worker(worker)
        disarm_deadline()
    print("agentflow human input latency: answer -> the run taking it up on a worker (1 solo worker)")
    print("=" * 90)
    print(f"  {args.reps} answers; load average {os.getloadavg()[0]:.2f}")
    for key, label in (
        ("answer", "answer recorded"),
        ("continued", "run.continued"),
        ("completed", "run.completed"),
    ):
        values = sorted(s[key] * 1000 for s in samples)
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        print(
            f"  {label:<16} p50 {statistics.median(values):7.1f} ms   p90 {p90:7.1f} ms   max {values[-1]:7.1f} ms"
        )
    log.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
