"""The benchmark's Celery app: ``celery -A bench.celery_app worker -P solo -Q agentflow,celery``.

The same CELERY_* settings as the test workers (acks late, prefetch 1, JSON), plus a Redis result backend for the
baseline's chain. It defines the baselines' tasks (a no-op; for bench/llm_fanout.py one plain ``openai.OpenAI``
call, and N plain ``openai.AsyncOpenAI`` calls gathered); importing it also registers the bench workflows (which
agentflow's autodiscovery of ``bench.workflows`` does as well once Django is set up).

``BENCH_PATCH=module`` (importable from PYTHONPATH) is imported in the worker once it is ready (Django set
up), and by bench/step_overhead.py in the client: a way to A/B-test an engine change without editing it.
"""

import importlib
import os
import time

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("agentflow_bench")
# The CELERY_* settings come from tests/settings.py through bench/settings.py.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(result_expires=600)
app.set_default()
app.autodiscover_tasks(["agentflow"])


@app.task(name="bench.noop")
def noop(value=0):
    return value


@app.task(name="bench.stamp")
def stamp():
    """The start-latency benchmark's floor (bench/start_latency.py): when the task's first line ran."""
    return time.time()


_openai_clients: dict = {}


@app.task(name="bench.llm_call")
def llm_call(i, model="fake-model", max_tokens=16, api_key=None):
    """The LLM fan-out benchmark's baseline (bench/llm_fanout.py): one chat completion with the plain sync
    ``openai.OpenAI`` client (OPENAI_BASE_URL, OPENAI_API_KEY unless ``api_key``), one client per process."""
    client = _openai_clients.get(api_key)
    if client is None:
        import openai

        client = _openai_clients[api_key] = openai.OpenAI(api_key=api_key)
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Benchmark call {i}: say something short."}],
        max_tokens=max_tokens,
    )
    return reply.usage.completion_tokens if reply.usage else 0


@app.task(name="bench.llm_gather")
def llm_gather(calls, model="fake-model", max_tokens=16, api_key=None):
    """The LLM fan-out benchmark's floor: ``calls`` chat completions at once with the plain
    ``openai.AsyncOpenAI`` client and ``asyncio.gather`` in one task: no steps, no checkpoints, no limiter.
    Returns the completion tokens of each call."""
    import asyncio

    import openai

    async def main():
        async with openai.AsyncOpenAI(api_key=api_key) as client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model=model,
                        messages=[{"role": "user", "content": f"Benchmark call {i}: say something short."}],
                        max_tokens=max_tokens,
                    )
                    for i in range(calls)
                )
            )
        return [reply.usage.completion_tokens if reply.usage else 0 for reply in replies]

    return asyncio.run(main())


from . import workflows  # noqa: E402,F401  (registers bench-noop-steps)


@worker_ready.connect
def _import_bench_patch(**kwargs):
    name = os.environ.get("BENCH_PATCH")
    if name:
        importlib.import_module(name)
