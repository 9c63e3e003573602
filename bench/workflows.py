"""The benchmark's workflow: ``steps`` sequential no-op component calls, each one durable step."""

from __future__ import annotations

from agentflow import component, workflow


@component
def noop_step(i: int) -> int:
    return i


@workflow(name="bench-noop-steps", description="N sequential no-op steps (step-overhead benchmark).")
def noop_steps(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += noop_step(i)
    return total


from . import workflows_llm  # noqa: E402,F401  (bench-llm-fanout, for bench/llm_fanout.py)


@workflow(name="bench-asks", description="Waits for one answer, then returns it (input latency benchmark).")
def asks() -> object:
    import agentflow

    return agentflow.wait_for_input("go", schema={"type": "integer"}, prompt="Go?")
