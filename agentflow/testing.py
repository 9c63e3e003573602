"""Helpers for your own tests.

- :func:`run_inline` executes a workflow in the calling thread against in-memory backends: no database, no
  Redis, no worker. It returns the output, every event and every checkpoint, so a test can assert on them.
- :func:`inline_executor` makes ``agentflow.start()`` execute runs synchronously in the caller (with the
  database and Redis as usual), for tests of code that starts runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .core.context import StepRecord
from .core.memory import MemoryCache, MemorySink, MemoryStore, run_in_memory
from .core.workflow import Workflow, registry


@dataclass
class InlineRun:
    output: Any
    events: list[dict[str, Any]]
    steps: dict[str, StepRecord] = field(default_factory=dict)

    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == type]


def run_inline(
    workflow: str | Workflow[Any, Any],
    input: dict[str, Any] | None = None,
    *,
    cache: MemoryCache | None = None,
) -> InlineRun:
    """Validate ``input`` and run ``workflow`` to the end in this thread; exceptions propagate."""
    wf = registry.get(workflow) if isinstance(workflow, str) else workflow
    store, sink = MemoryStore(), MemorySink()
    output, _ctx = run_in_memory(wf, input, store=store, sink=sink, cache=cache or MemoryCache())
    return InlineRun(output=output, events=sink.events, steps=dict(store.records))


@contextmanager
def inline_executor() -> Iterator[None]:
    """Within the block, runs started with ``agentflow.start()`` execute at once, in the caller's thread,
    when the transaction commits (so use a transactional test, or ``captureOnCommitCallbacks``)."""
    from django.test import override_settings

    from .conf import agentflow_settings

    with override_settings(
        AGENTFLOW={**agentflow_settings.user_settings, "EXECUTOR": "agentflow.executors.InlineExecutor"}
    ):
        yield
