#!/usr/bin/env python
"""LLM fan-out: N provider calls issued by one agentflow run against the same N calls as a Celery group.

    python bench/llm_fanout.py [--calls 200] [--latency-ms 500] [--reps 5] [--fanout gather,map]
                               [--baseline-calls N] [--patch probe,...] [--profile DIR] [--deadline 300]

Everything runs against ONE Celery worker (prefork pool, 2 processes), the same Redis server and PostgreSQL,
and ONE fake OpenAI-compatible server in a separate process (``FakeOpenAI.spawn``) that answers every chat
completion after ``--latency-ms``:

  (a) baseline:  ``group(llm_call.s(i) for i in range(N))``: a plain Celery task making the call with the plain
                 sync ``openai.OpenAI`` client, timed from ``apply_async`` until every result is available.
                 Each process holds one call at a time, so N calls take about N / 2 x latency.
  (b) agentflow: ``agentflow.start("bench-llm-fanout", {"calls": N, "fanout": ...})`` timed until
                 ``agentflow.wait`` returns. The workflow issues the N calls at once through
                 ``agentflow.llm.AsyncOpenAI`` (each a durable, checkpointed step ``openai.chat#i``), with
                 ``asyncio.gather`` (``gather``) or ``agentflow.map`` over an async component (``map``: a
                 component step per call, with the call as its child step).
  (c) floor:     one Celery task making the N calls at once with the plain ``openai.AsyncOpenAI`` client and
                 ``asyncio.gather``: what the SDK costs with no step, checkpoint, limiter or event. The
                 target is a ratio to it, measured in the same run.

(b) and (c) are measured interleaved, ``--reps`` times each, after a warm-up; (a) once (it takes N / 2 x
latency). Printed: wall times (median, min, max), the CPU the worker, the fake server, PostgreSQL and Redis
spent, a timeline of the median run (claim, call steps started, first and last request seen by the server,
call steps done, final UPDATE), each call step's time beyond the latency, the ratio to the Celery group and
the target check (issue 14: each agentflow fan-out <= 1.15x the floor, and ``agentflow.map`` no slower than
``asyncio.gather``; medians of the same run; printed, not asserted). Checks (a failure exits
non-zero): every call is a completed ``openai.chat`` step of its run, the run's usage counts every call, and
the fake server saw exactly the calls made, per side (each side has its own API key).

``--patch probe`` adds the worker-side phases of each call (limiter granted, SDK call started, response
received, checkpoint written and how long it waited for the store's DB thread); ``--patch`` also takes
experiments that wrap agentflow's functions in the worker only (bench/_llm_probes.py: ``no-limiter``,
``shards=N``, ``gc`` (the collector's pauses per task, printed), ``freeze``, ``persistent-loop``). ``--profile DIR`` runs the worker's tasks under cProfile (see
bench/workflows_llm.py) and prints the hot spots of the last task; cProfile sees the task's thread (the run's
event loop), not the helper threads (checkpoint writer, ``asyncio.to_thread``), which the probes time.

Setup: bench.settings (database ``agentflow_bench``, created if missing and migrated; Redis db 14). Only this
benchmark's runs and the worker's queues are deleted first. The worker's log goes to a temporary file,
printed if something fails. The script aborts after ``--deadline`` seconds and always stops the worker and
the fake server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

WORKFLOW = "bench-llm-fanout"
QUEUES = ("agentflow", "celery")
AGENTFLOW_KEY = "bench-agentflow"  # the API key of each side: the fake server counts requests by key
BASELINE_KEY = "bench-baseline"
FLOOR_KEY = "bench-floor"
TARGET_RATIO = 1.15  # agentflow / floor, medians of the same run (200 calls of 0.5 s)
PROCESSES = 2


# -- setup -----------------------------------------------------------------------------------------------------


def reset_state() -> None:
    """Delete this benchmark's runs and the worker's queued messages (left by an aborted run)."""
    from agentflow import streams
    from agentflow.models import WorkflowRun

    WorkflowRun.objects.filter(workflow=WORKFLOW).delete()
    client = streams.get_client()
    for queue in QUEUES:  # kombu's Redis transport keeps priority sub-queues as queue + "\x06\x16" + n
        client.delete(queue, *(f"{queue}\x06\x16{n}" for n in (3, 6, 9)))


def start_worker(
    log_path: Path, base_url: str, profile_dir: str | None, patches: str, probe_dir: str
) -> subprocess.Popen[bytes]:
    from bench.step_overhead import start_worker as start

    # bench.settings has no LLM_PROVIDERS: the wrapped client and the plain SDK both use these.
    env: dict[str, str | None] = {
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": AGENTFLOW_KEY,
        "OPENAI_ORG_ID": None,
        "BENCH_LLM_PROFILE": profile_dir or None,
        "BENCH_LLM_PATCH": patches or None,
        "BENCH_LLM_PROBE_DIR": probe_dir if patches else None,
    }
    return start(log_path, pool="prefork", processes=PROCESSES, name="bench-llm", env=env)


# -- measurements --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    config: str  # "gather", "map" (agentflow) or "floor"
    calls: int
    wall: float  # agentflow.start -> agentflow.wait returned; apply_async -> result (floor)
    t0: float  # time.time() at the start
    key: str = AGENTFLOW_KEY  # the API key its requests carry
    run_id: str = ""
    marks: dict[str, float] = field(default_factory=dict)  # timeline, seconds after the start
    beyond: list[float] = field(default_factory=list)  # per call step: (finished - started) - latency
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds spent during the sample, by process


def _requests_between(log: list[dict[str, Any]], key: str, t0: float, t1: float) -> list[float]:
    return sorted(entry["time"] for entry in log if entry["key"] == key and t0 <= entry["time"] <= t1)


def measure_agentflow(calls: int, fanout: str, latency_s: float, timeout_s: float) -> Sample:
    import agentflow
    from agentflow.models import StepRun, WorkflowRun

    t0_wall = time.time()
    t0 = time.perf_counter()
    run = agentflow.start(WORKFLOW, {"calls": calls, "fanout": fanout})
    output = agentflow.wait(run, timeout_seconds=timeout_s)
    wall = time.perf_counter() - t0
    t1_wall = t0_wall + wall
    if output != {"calls": calls, "completion_tokens": output.get("completion_tokens")}:
        raise RuntimeError(f"run {run.pk} returned {output!r}")
    row = WorkflowRun.objects.get(pk=run.pk)
    steps = list(
        StepRun.objects.filter(run_id=run.pk, component="openai.chat").values_list(
            "status", "started_at", "finished_at", "usage"
        )
    )
    completed = [s for s in steps if s[0] == "completed"]
    if len(completed) != calls or len(steps) != calls:
        raise RuntimeError(
            f"run {run.pk}: {len(completed)} completed openai.chat steps of {len(steps)}, expected {calls}"
        )
    if any((s[3] or {}).get("calls") != 1 for s in completed):
        raise RuntimeError(f"run {run.pk}: a call step's usage does not count its call")
    usage = row.usage or {}
    if usage.get("calls") != calls:
        raise RuntimeError(f"run {run.pk}: the run's usage counts {usage.get('calls')} calls, not {calls}")
    if fanout == "map" and StepRun.objects.filter(run_id=run.pk, component="ask").count() != calls:
        raise RuntimeError(f"run {run.pk}: agentflow.map did not record {calls} component steps")

    spans = [(s[1], s[2]) for s in completed if s[1] is not None and s[2] is not None]
    if row.started_at is None or row.finished_at is None or len(spans) != calls:
        raise RuntimeError(f"run {run.pk}: a finished run or step without its timestamps")
    sample = Sample(fanout, calls, wall, t0_wall, run_id=str(run.pk))
    started = sorted(begin.timestamp() for begin, _ in spans)
    finished = sorted(end.timestamp() for _, end in spans)
    sample.beyond = sorted((end - begin).total_seconds() - latency_s for begin, end in spans)
    sample.marks = {
        "run claimed by the worker": row.started_at.timestamp() - t0_wall,
        "first call step started": started[0] - t0_wall,
        "last call step started": started[-1] - t0_wall,
        "first call step done (checkpoint queued)": finished[0] - t0_wall,
        "last call step done (checkpoint queued)": finished[-1] - t0_wall,
        "run finished (final UPDATE)": row.finished_at.timestamp() - t0_wall,
        "agentflow.wait returned": t1_wall - t0_wall,
    }
    return sample


def measure_floor(calls: int, timeout_s: float) -> Sample:
    from bench.celery_app import llm_gather

    t0_wall = time.time()
    t0 = time.perf_counter()
    result = llm_gather.apply_async(args=(calls,), kwargs={"api_key": FLOOR_KEY})
    values = result.get(timeout=timeout_s)
    wall = time.perf_counter() - t0
    result.forget()
    if len(values) != calls or not all(isinstance(v, int) and v > 0 for v in values):
        raise RuntimeError(f"the floor task returned {values[:5]!r}...")
    sample = Sample("floor", calls, wall, t0_wall, key=FLOOR_KEY)
    sample.marks["result available"] = wall
    return sample


class CpuProbe:
    """CPU seconds of the worker's processes (main and pool), the fake server, the bench database's
    PostgreSQL backends and the Redis server (server-wide)."""

    def __init__(self, worker_pid: int, server_pid: int) -> None:
        from bench.step_overhead import Probe

        self.worker_pid, self.server_pid = worker_pid, server_pid
        self.probe = Probe(worker_pid)

    def _worker_pids(self) -> list[int]:
        pids = [self.worker_pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.worker_pid:
                        pids.append(int(entry.name))
        return pids

    def snapshot(self) -> dict[str, Any]:
        from bench.step_overhead import _proc_cpu

        base = self.probe.snapshot()
        return {
            **base,
            "worker": {pid: _proc_cpu(pid) for pid in self._worker_pids()},
            "server": _proc_cpu(self.server_pid),
        }

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        def grown(key: str) -> float:
            return sum(cpu - before[key].get(pid, 0.0) for pid, cpu in after[key].items())

        return {
            "worker": grown("worker"),
            "fake server": after["server"] - before["server"],
            "PG": grown("pg"),
            "Redis*": after["redis"] - before["redis"],
        }


def add_server_marks(sample: Sample, log: list[dict[str, Any]]) -> int:
    """Mark when the sample's first and last requests reached the server; return how many it saw."""
    arrivals = _requests_between(log, sample.key, sample.t0, sample.t0 + sample.wall)
    if arrivals:
        sample.marks["first request at the server"] = arrivals[0] - sample.t0
        sample.marks["last request at the server"] = arrivals[-1] - sample.t0
    return len(arrivals)


def measure_baseline(calls: int, timeout_s: float) -> float:
    from celery import group

    from bench.celery_app import llm_call

    sig = group(llm_call.s(i, api_key=BASELINE_KEY) for i in range(calls))
    t0 = time.perf_counter()
    result = sig.apply_async()
    values = result.get(timeout=timeout_s)
    wall = time.perf_counter() - t0
    if len(values) != calls or not all(isinstance(v, int) and v > 0 for v in values):
        raise RuntimeError(f"the Celery group returned {values[:5]!r}...")
    result.forget()
    return wall


# -- report ----------------------------------------------------------------------------------------------------


def environment(server: Any) -> list[tuple[str, str]]:
    import openai

    from bench.step_overhead import environment as base

    rows = [(k, v) for k, v in base() if k not in ("Worker", "BENCH_PATCH")]
    rows.append(("openai SDK", openai.__version__))
    rows.append(("Fake server", f"{server.base_url} (separate process, pid {server.process.pid})"))
    rows.append(
        (
            "Worker",
            f"celery -A bench.celery_app worker -P prefork -c {PROCESSES} -Q agentflow,celery "
            "(acks_late, prefetch 1)",
        )
    )
    return rows


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) {five:.2f} (5 min)"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def print_probes(probe_dir: str, sample: Sample, t0: float) -> None:
    """The worker-side phases of one run (``--patch probe``), in ms after agentflow.start."""
    import json

    path = Path(probe_dir, f"{sample.run_id}.json")
    if not path.exists():
        print(f"  (no probe data for run {sample.run_id})")
        return
    data = json.loads(path.read_text())
    print("  worker-side phases (--patch probe)            count    first     last   (ms after start)")
    for name, times in sorted(data["marks"].items(), key=lambda item: min(item[1])):
        print(f"  {name:<44}{len(times):6d}{(min(times) - t0) * 1e3:9.1f}{(max(times) - t0) * 1e3:9.1f}")
    for name, values in data["durations"].items():
        if name == "checkpoints per batch":
            print(
                f"  {name:<44}{len(values):6d}   median {statistics.median(values):.0f}, max {max(values):.0f}"
            )
            continue
        print(
            f"  {name:<44}{len(values):6d}   median {statistics.median(values) * 1e3:.2f} ms, "
            f"max {max(values) * 1e3:.2f} ms, sum {sum(values) * 1e3:.1f} ms"
        )


def print_gc(probe_dir: str) -> None:
    """The collector's pauses per task (``--patch gc``): median seconds by generation, per task name."""
    path = Path(probe_dir, "gc.log")
    if not path.exists():
        return
    by_task: dict[str, list[list[float]]] = {}
    for line in path.read_text().splitlines():
        name, _pauses, *seconds = line.split()
        by_task.setdefault(name, []).append([float(s) for s in seconds])
    print("  garbage collector pauses per task (--patch gc), median ms by generation 0 / 1 / 2, and total")
    for name, rows in by_task.items():
        gens = [statistics.median(row[g] for row in rows) * 1e3 for g in range(3)]
        total = statistics.median(sum(row) for row in rows) * 1e3
        print(
            f"  {name:<44}{len(rows):4d} tasks  {gens[0]:6.1f} {gens[1]:6.1f} {gens[2]:6.1f}   {total:6.1f}"
        )
    print()


def print_profile(profile_dir: str, limit: int = 30) -> None:
    import pstats

    files = sorted(Path(profile_dir).glob("agentflow_execute_run*.prof"), key=lambda p: p.stat().st_mtime)
    if not files:
        files = sorted(Path(profile_dir).glob("*.prof"), key=lambda p: p.stat().st_mtime)
    if not files:
        print(f"  (no profile in {profile_dir})")
        return
    print(f"cProfile of the last run's task ({files[-1].name}), the run's thread only")
    print("-" * 100)
    for order in ("tottime", "cumulative"):
        stats = pstats.Stats(str(files[-1]), stream=sys.stdout)
        stats.sort_stats(order).print_stats(limit)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="LLM calls per run / tasks in the group")
    parser.add_argument("--latency-ms", type=float, default=500.0, help="the fake server's latency per call")
    parser.add_argument("--reps", type=int, default=5, help="measured runs of each one-process configuration")
    parser.add_argument(
        "--fanout", default="gather,map", help="agentflow fan-out styles to measure: gather, map or both"
    )
    parser.add_argument(
        "--baseline-calls", type=int, default=None, help="tasks in the Celery group (default: --calls)"
    )
    parser.add_argument("--profile", metavar="DIR", default=None, help="cProfile the worker's tasks")
    parser.add_argument(
        "--patch",
        default="",
        help="probes/experiments of bench/_llm_probes.py in the worker: probe, no-limiter, shards=N "
        "(comma-separated)",
    )
    parser.add_argument(
        "--deadline", type=float, default=300.0, help="abort (and stop everything) after this"
    )
    args = parser.parse_args()
    n = args.calls
    baseline_n = args.baseline_calls or n
    fanouts = [f.strip() for f in args.fanout.split(",") if f.strip()]
    if n < 1 or baseline_n < 1 or args.reps < 1 or args.latency_ms < 0:
        parser.error("--calls, --baseline-calls and --reps must be at least 1, --latency-ms at least 0")
    if not fanouts or set(fanouts) - {"gather", "map"}:
        parser.error("--fanout takes gather, map or gather,map")
    latency_s = args.latency_ms / 1000
    timeout_s = max(30.0, 4 * latency_s + n * 0.05)
    baseline_timeout_s = baseline_n * latency_s / PROCESSES * 2 + 30
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        for old in Path(args.profile).glob("*.prof"):
            old.unlink()

    from bench import arm_deadline, disarm_deadline

    arm_deadline(args.deadline)
    started = time.monotonic()

    from bench._streaming import setup_django
    from bench.step_overhead import wait_ready

    setup_django()
    reset_state()
    from agentflow.models import WorkflowRun
    from agentflow.testing.fake_openai import FakeOpenAI

    log_fd, log_name = tempfile.mkstemp(prefix="agentflow-bench-llm-worker-", suffix=".log")
    os.close(log_fd)
    log_path = Path(log_name)
    proc = None
    server = None
    failed = True
    cleanup: list[Any] = []
    try:
        server = FakeOpenAI.spawn(latency_ms=args.latency_ms)
        probe_dir = tempfile.mkdtemp(prefix="agentflow-bench-llm-probes-")
        cleanup.append(lambda: shutil.rmtree(probe_dir, ignore_errors=True))
        proc = start_worker(log_path, server.base_url, args.profile, args.patch, probe_dir)
        ready_s = wait_ready(proc, 30.0)
        cpu = CpuProbe(proc.pid, server.process.pid)

        print("agentflow LLM fan-out benchmark")
        print("=" * 100)
        for key, value in environment(server):
            print(f"  {key:<20} {value}")
        print(f"  {'Worker ready after':<20} {ready_s:.2f}s (pid {proc.pid})")
        print(
            f"  {'Calls':<20} agentflow {n} per run ({', '.join(fanouts)}; {args.reps} runs each), "
            f"Celery group {baseline_n}; latency {args.latency_ms:.0f} ms per call"
        )
        print(f"  {'Load average':<20} {_load()} at start")
        if args.patch:
            print(f"  {'BENCH_LLM_PATCH':<20} {args.patch} (bench/_llm_probes.py, in the worker)")
        print()

        # Warm-up, not measured: imports, connections and SDK clients in both worker processes.
        for fanout in fanouts:
            measure_agentflow(min(n, 4), fanout, latency_s, timeout_s)
        measure_floor(min(n, 4), timeout_s)
        measure_baseline(min(baseline_n, 2 * PROCESSES), baseline_timeout_s)
        WorkflowRun.objects.filter(workflow=WORKFLOW).delete()
        server.reset()

        configs = ["floor", *fanouts]
        samples: dict[str, list[Sample]] = {config: [] for config in configs}
        for _ in range(args.reps):  # interleaved: drift and outside load hit every configuration alike
            for config in configs:
                time.sleep(0.05)  # let the worker go idle (the previous run's task archives its events)
                before = cpu.snapshot()
                if config == "floor":
                    sample = measure_floor(n, timeout_s)
                else:
                    sample = measure_agentflow(n, config, latency_s, timeout_s)
                sample.cpu = CpuProbe.delta(before, cpu.snapshot())
                samples[config].append(sample)
        baseline = measure_baseline(baseline_n, baseline_timeout_s)

        stats = server.stats()
        log = stats["request_log"]
        af_runs = sum(len(samples[f]) for f in fanouts)
        seen = {
            key: stats["by_key"].get(key, {}).get("requests", 0)
            for key in (AGENTFLOW_KEY, FLOOR_KEY, BASELINE_KEY)
        }
        for config_samples in samples.values():
            for sample in config_samples:
                if add_server_marks(sample, log) != n:
                    raise RuntimeError(
                        f"{sample.config} {sample.run_id}: the server did not see {n} requests"
                    )
        expected = {AGENTFLOW_KEY: af_runs * n, FLOOR_KEY: args.reps * n, BASELINE_KEY: baseline_n}
        if seen != expected:
            raise RuntimeError(f"the fake server saw {seen} requests by API key, expected {expected}")

        def med(config: str) -> float:
            return statistics.median(s.wall for s in samples[config])

        labels = {
            "floor": "plain AsyncOpenAI + gather (floor)",
            "gather": "agentflow, asyncio.gather",
            "map": "agentflow, agentflow.map",
        }
        cpu_keys = ("worker", "fake server", "PG", "Redis*")
        print(f"{n} calls at once, one worker process        wall (s)                    CPU (ms, mean)")
        print(f"{'':<40}{'median':>8}{'min':>8}{'max':>8}  " + "".join(f"{k:>12}" for k in cpu_keys))
        print("-" * 100)
        for config in configs:
            walls = [s.wall for s in samples[config]]
            cpus = "".join(
                f"{statistics.fmean(s.cpu[k] for s in samples[config]) * 1e3:12.0f}" for k in cpu_keys
            )
            print(f"  {labels[config]:<38}{med(config):8.3f}{min(walls):8.3f}{max(walls):8.3f}  {cpus}")
        print(
            "  floor: one Celery task, the plain SDK and asyncio.gather, no steps; agentflow: agentflow.start ->"
            " agentflow.wait.\n  * Redis CPU is server-wide: other clients count too."
        )
        print()
        for config in configs:
            runs = samples[config]
            median_run = sorted(runs, key=lambda s: s.wall)[len(runs) // 2]
            what = f"run {median_run.run_id}" if median_run.run_id else "task"
            print(f"timeline of the median {labels[config]} {what} (ms after the start)")
            print("-" * 100)
            for label, at in sorted(median_run.marks.items(), key=lambda item: item[1]):
                print(f"  {label:<44}{at * 1e3:9.1f}")
            if runs[0].beyond:
                beyond = [b for s in runs for b in s.beyond]
                print(
                    f"  each call step beyond the {args.latency_ms:.0f} ms latency, all runs (ms): "
                    f"median {statistics.median(beyond) * 1e3:.1f}, p90 {_pct(beyond, 0.9) * 1e3:.1f}, "
                    f"max {max(beyond) * 1e3:.1f}"
                )
            print(f"  whole run beyond one latency: {(median_run.wall - latency_s) * 1e3:.0f} ms")
            if median_run.run_id and "probe" in args.patch.split(","):
                print_probes(probe_dir, median_run, median_run.t0)
            print()

        if "gc" in args.patch.split(","):
            print_gc(probe_dir)
        print(
            f"  fake server requests   agentflow {seen[AGENTFLOW_KEY]} ({af_runs} runs x {n}), "
            f"floor {seen[FLOOR_KEY]}, Celery group {seen[BASELINE_KEY]}: as expected"
        )
        print(
            f"  every agentflow call a completed openai.chat step, counted in its run's usage: yes ({af_runs} runs)"
        )
        print()
        per_call = baseline / baseline_n
        print(
            f"  Celery group           {baseline:.3f} s for {baseline_n} calls "
            f"({baseline_n / baseline:.1f} calls/s, {per_call * 1e3:.0f} ms a call)"
        )
        scaled = "" if baseline_n == n else f" (group scaled to {n} calls)"
        for config in configs:
            ratio = med(config) / (baseline if baseline_n == n else per_call * n)
            print(
                f"  {labels[config]:<44} {med(config):.3f} s ({n / med(config):.0f} calls/s); "
                f"ratio to the Celery group = {ratio:.4f}{scaled}"
            )
        for fanout in fanouts:
            extra = med(fanout) - med("floor")
            print(
                f"  agentflow {fanout} beyond the floor: {extra * 1e3:.0f} ms for {n} calls "
                f"({extra / n * 1e3:.2f} ms a call: steps, checkpoints, limiter, events)"
            )
        if n == 200 and abs(args.latency_ms - 500) < 1e-9:
            for fanout in fanouts:
                ratio = med(fanout) / med("floor")
                verdict = "MET" if ratio <= TARGET_RATIO else "NOT MET"
                print(f"  target agentflow {fanout} <= {TARGET_RATIO}x the floor: {ratio:.3f}x, {verdict}")
            if {"gather", "map"} <= set(fanouts):
                verdict = "MET" if med("map") <= med("gather") else "NOT MET"
                print(
                    f"  target agentflow.map no slower than asyncio.gather: {med('map'):.3f} s vs "
                    f"{med('gather'):.3f} s, {verdict}"
                )
        else:
            print(f"  (the targets, <= {TARGET_RATIO}x the floor, are for 200 calls of 500 ms)")
        print(f"\n  load average {_load()} at end; elapsed {time.monotonic() - started:.1f}s")
        if args.profile:
            print()
            print_profile(args.profile)
        failed = False
        return 0
    finally:
        disarm_deadline()
        from bench.step_overhead import stop_worker

        stop_worker(proc)
        if server is not None:
            server.stop()
        if failed and log_path.exists():
            tail = log_path.read_text(errors="replace")[-4000:]
            print(f"\n--- worker log ({log_path}) ---\n{tail}", file=sys.stderr)
        with contextlib.suppress(OSError):
            log_path.unlink()
        for fn in cleanup:
            fn()


if __name__ == "__main__":
    sys.exit(main())
