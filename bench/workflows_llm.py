"""The LLM fan-out benchmark's workflow (bench/llm_fanout.py): N chat completions at once from one run.

``bench-llm-fanout`` issues ``calls`` ``AsyncOpenAI().chat.completions.create(...)`` concurrently, each one
durable step (``openai.chat#i``), either straight from the workflow with ``asyncio.gather`` (``fanout:
"gather"``) or through ``agentflow.map`` over an async component that makes the call (``"map"``: a component
step with the call as its child step). The provider is the environment's (``OPENAI_BASE_URL``,
``OPENAI_API_KEY``): the benchmark points the worker at its fake server.

In the worker's environment, ``BENCH_LLM_PROFILE=<directory>`` profiles every task its processes run with
cProfile and writes ``<directory>/<task name>-<pid>-<n>.prof`` (bench/llm_fanout.py --profile);
``BENCH_LLM_PATCH=name,...`` installs probes or experiments of bench/_llm_probes.py in each pool process
(bench/llm_fanout.py --patch).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import agentflow
from agentflow import component, workflow
from agentflow.llm import AsyncOpenAI

client = AsyncOpenAI()  # providers read at each call: AGENTFLOW["LLM_PROVIDERS"] or the environment


def _request(i: int, model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Benchmark call {i}: say something short."}],
        "max_tokens": max_tokens,
    }


@component
async def ask(job: dict[str, Any]) -> int:
    reply = await client.chat.completions.create(**_request(job["i"], job["model"], job["max_tokens"]))
    return int(reply.usage.completion_tokens) if reply.usage else 0


@workflow(
    name="bench-llm-fanout",
    description="N concurrent chat completions, each a durable step (LLM fan-out benchmark).",
)
async def llm_fanout(
    calls: int, fanout: str = "gather", model: str = "fake-model", max_tokens: int = 16
) -> dict[str, int]:
    if fanout == "map":
        jobs = [{"i": i, "model": model, "max_tokens": max_tokens} for i in range(calls)]
        tokens = await agentflow.map(ask, jobs)
        return {"calls": calls, "completion_tokens": sum(tokens)}
    replies = await asyncio.gather(
        *(client.chat.completions.create(**_request(i, model, max_tokens)) for i in range(calls))
    )
    return {
        "calls": len(replies),
        "completion_tokens": sum(r.usage.completion_tokens for r in replies if r.usage),
    }


# -- profiling and probes (BENCH_LLM_PROFILE, BENCH_LLM_PATCH) ---------------------------------------------

_PROFILE_DIR = os.environ.get("BENCH_LLM_PROFILE")
_PATCHES = [name.strip() for name in os.environ.get("BENCH_LLM_PATCH", "").split(",") if name.strip()]

if _PATCHES:
    from celery.signals import task_postrun, worker_process_init

    @worker_process_init.connect(weak=False)
    def _install_patches(**kwargs: Any) -> None:
        from bench import _llm_probes

        _llm_probes.install(_PATCHES)

    @task_postrun.connect(weak=False)
    def _dump_probes(task: Any = None, args: Any = None, **kwargs: Any) -> None:
        if getattr(task, "name", "") == "agentflow.execute_run" and args:
            from bench import _llm_probes

            _llm_probes.dump(str(args[0]))


if _PROFILE_DIR:
    import cProfile
    import itertools

    from celery.signals import task_postrun, task_prerun

    _profiles: dict[str, cProfile.Profile] = {}
    _numbers = itertools.count()

    @task_prerun.connect(weak=False)
    def _profile_start(task_id: str | None = None, **kwargs: Any) -> None:
        profile = cProfile.Profile()
        _profiles[task_id or ""] = profile
        profile.enable()

    @task_postrun.connect(weak=False)
    def _profile_stop(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
        profile = _profiles.pop(task_id or "", None)
        if profile is None:
            return
        profile.disable()
        name = getattr(task, "name", "task").replace(".", "_")
        profile.dump_stats(os.path.join(_PROFILE_DIR or ".", f"{name}-{os.getpid()}-{next(_numbers)}.prof"))
