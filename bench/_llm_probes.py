"""Probes and experiments for bench/llm_fanout.py, installed in the worker (before its pool forks) by
``BENCH_LLM_PATCH=name[,name...]``; bench/workflows_llm.py applies them. Nothing here changes agentflow's files:
they wrap its functions in the worker process only.

- ``probe``: record when each phase of every provider call ended (limiter granted, SDK call started, response
  received, checkpoints written: how long each waited for the store's DB thread, how long each write or
  batch took) and when the workflow's clients were closed, and write them as
  JSON to ``$BENCH_LLM_PROBE_DIR/<run id>.json`` when the task ends (read by llm_fanout.py --probe).
- ``no-limiter``: skip the shared rate limiter (no Redis round trip on a thread before and after each call).
- ``shards=N``: spread a run's calls over N HTTP connection pools (N SDK clients) instead of one.
- ``gc``: time the garbage collector's pauses (by generation), per run and per task of any kind (the floor's
  too: ``$BENCH_LLM_PROBE_DIR/gc.log``, summarised by llm_fanout.py).
- ``freeze``: ``gc.freeze()`` in each pool process once it starts (what ``WORKER_GC_FREEZE`` does).
- ``persistent-loop``: run each async workflow on an event loop kept by the worker thread across runs, and
  keep the run's SDK clients (their connections) for the next run, instead of a new loop per incarnation.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

_marks: dict[str, list[float]] = defaultdict(list)
_durations: dict[str, list[float]] = defaultdict(list)
_lock = threading.Lock()


def mark(name: str, duration: float | None = None) -> None:
    now = time.time()
    with _lock:
        _marks[name].append(now)
        if duration is not None:
            _durations[name].append(duration)


def dump(run_id: str) -> None:
    directory = os.environ.get("BENCH_LLM_PROBE_DIR")
    with _lock:
        data = {"marks": dict(_marks), "durations": dict(_durations)}
        _marks.clear()
        _durations.clear()
    if directory:
        Path(directory, f"{run_id}.json").write_text(json.dumps(data))


def install(names: list[str]) -> None:
    for name in names:
        if name == "probe":
            _install_probe()
        elif name == "persistent-loop":
            _install_persistent_loop()
        elif name == "freeze":
            import gc

            gc.freeze()
        elif name == "gc":
            _install_gc()
        elif name == "no-limiter":
            _install_no_limiter()
        elif name.startswith("shards="):
            _install_shards(int(name.split("=", 1)[1]))
        elif name:
            raise ValueError(f"unknown BENCH_LLM_PATCH {name!r}")


def _install_probe() -> None:
    from agentflow.core.context import RunContext
    from agentflow.llm import calls
    from agentflow.store import DjangoRunStore

    original_wait = calls.limiter.await_for_grant

    async def await_for_grant(*args: Any, **kwargs: Any) -> Any:
        mark("call step body started")
        grant = await original_wait(*args, **kwargs)
        mark("limiter granted")
        return grant

    calls.limiter.await_for_grant = await_for_grant  # type: ignore[method-assign]

    original_request = calls._arequest

    async def arequest(*args: Any, **kwargs: Any) -> Any:
        mark("SDK call started")
        try:
            return await original_request(*args, **kwargs)
        finally:
            mark("response received")

    calls._arequest = arequest

    original_reconcile = calls._reconcile

    def reconcile(*args: Any, **kwargs: Any) -> None:
        mark("limiter reconciled (thread)")
        original_reconcile(*args, **kwargs)

    calls._reconcile = reconcile

    # Checkpoints go to the store's DB thread: one at a time (_write), or those of concurrent steps together
    # (_write_many, where the store batches them).
    def timed(original: Any, name: str) -> Any:
        def write(self: Any, records: Any) -> None:
            batch = records if isinstance(records, list) else [records]
            now = time.time()
            with _lock:
                _durations["checkpoint queued before its write"] += [now - r.finished_at for r in batch]
            started = time.perf_counter()
            try:
                original(self, records)
            finally:
                elapsed = time.perf_counter() - started
                done = time.time()
                with _lock:
                    _marks["checkpoint written (DB thread)"] += [done] * len(batch)
                    _durations[name].append(elapsed)
                    if isinstance(records, list):
                        _durations["checkpoints per batch"].append(float(len(batch)))

        return write

    store: Any = DjangoRunStore
    if hasattr(store, "_write_many"):
        store._write_many = timed(store._write_many, "checkpoint batch written (DB thread)")
    else:
        store._write = timed(store._write, "checkpoint written (DB thread)")

    original_close = RunContext.aclose_resources

    async def aclose_resources(self: Any) -> None:
        mark("workflow returned")
        started = time.perf_counter()
        await original_close(self)
        mark("clients closed", time.perf_counter() - started)

    RunContext.aclose_resources = aclose_resources  # type: ignore[method-assign]


def _install_no_limiter() -> None:
    from agentflow.llm import calls
    from agentflow.ratelimit import Grant

    async def await_for_grant(*args: Any, **kwargs: Any) -> Grant:
        return Grant(0.0, time.monotonic())

    calls.limiter.await_for_grant = await_for_grant  # type: ignore[method-assign]
    calls._reconcile = lambda *args, **kwargs: None  # still one asyncio.to_thread hop per call


def _install_shards(count: int) -> None:
    import openai

    from agentflow.llm import calls

    original = calls.async_client
    counter = itertools.count()

    def async_client(ctx: Any, provider: Any, sdk_options: Any) -> Any:
        first = original(ctx, provider, sdk_options)  # registers the closer of the run's clients
        shard = next(counter) % count
        if shard == 0:
            return first
        shards = ctx.resources.setdefault("bench_shards", {})
        client = shards.get((provider, sdk_options, shard))
        if client is None:
            client = openai.AsyncOpenAI(**calls._client_options(provider, sdk_options))
            shards[(provider, sdk_options, shard)] = client
            ctx.resources.setdefault("async_clients", []).append(client)
        return client

    calls.async_client = async_client


def _install_gc() -> None:
    """Time the collector's pauses; also log them per task (any task: the floor's too) to
    ``$BENCH_LLM_PROBE_DIR/gc.log`` as ``<task name> <pauses> <seconds by generation...>``."""
    import gc

    from celery.signals import task_postrun, task_prerun

    started: dict[int, float] = {}
    per_task = [0.0, 0.0, 0.0]
    pauses = [0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[info["generation"]] = time.perf_counter()
        elif info["generation"] in started:
            elapsed = time.perf_counter() - started.pop(info["generation"])
            per_task[info["generation"]] += elapsed
            pauses[0] += 1
            with _lock:
                _durations[f"gc generation {info['generation']} pause"].append(elapsed)

    gc.callbacks.append(callback)

    @task_prerun.connect(weak=False)
    def _reset(**kwargs: Any) -> None:
        per_task[:] = [0.0, 0.0, 0.0]
        pauses[0] = 0

    @task_postrun.connect(weak=False)
    def _log(task: Any = None, **kwargs: Any) -> None:
        directory = os.environ.get("BENCH_LLM_PROBE_DIR")
        if directory:
            with open(Path(directory, "gc.log"), "a") as log:
                log.write(
                    f"{getattr(task, 'name', '?')} {pauses[0]} {' '.join(f'{t:.4f}' for t in per_task)}\n"
                )


def _install_persistent_loop() -> None:
    import asyncio
    import contextvars

    from agentflow.core import workflow as wf_module
    from agentflow.core.context import _frame, _run
    from agentflow.llm import calls

    local = threading.local()

    def execute(self: Any, input: Any, ctx: Any) -> Any:
        kwargs = self.bind(input)
        run_token = _run.set(ctx)
        frame_token = _frame.set(ctx.root)
        try:
            if self.is_async:
                runner = getattr(local, "runner", None)
                if runner is None:
                    runner = local.runner = asyncio.Runner()
                result = runner.run(self._main(self.fn, kwargs, ctx), context=contextvars.copy_context())
            else:
                result = self.fn(**kwargs)
        finally:
            _frame.reset(frame_token)
            _run.reset(run_token)
        return self.dump_output(result)

    wf_module.Workflow.execute = execute

    async def close_async_clients(ctx: Any) -> None:
        ctx.resources.pop("async_clients", [])

    calls.close_async_clients = close_async_clients
