"""Helpers for your own tests.

- :func:`run_inline` executes a workflow in the calling thread against in-memory backends: no database, no
  Redis, no worker. It returns the output, every event and every checkpoint, so a test can assert on them.
- :func:`inline_executor` makes ``agentflow.start()`` execute runs synchronously in the caller (with the
  database and Redis as usual), for tests of code that starts runs.
- :class:`FakeOpenAI` (in :mod:`agentflow.testing.fake_openai`) is a real HTTP server speaking the OpenAI
  wire format, with configurable latency and injected failures; also ``python -m
  agentflow.testing.fake_openai``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.context import StepRecord
from ..core.memory import MemoryCache, MemoryRun
from ..core.usage import Budget, Pricer
from ..core.workflow import Workflow, registry

if TYPE_CHECKING:
    from .fake_openai import FakeOpenAI, FakeOpenAIProcess

__all__ = ["FakeOpenAI", "FakeOpenAIProcess", "InlineRun", "inline_executor", "run_inline"]


def __getattr__(name: str) -> Any:
    # Imported lazily: most users of this package never start the fake server, and importing
    # ``fake_openai`` here would make ``python -m agentflow.testing.fake_openai`` warn about a module
    # found in sys.modules before its execution.
    if name in {"FakeOpenAI", "FakeOpenAIProcess"}:
        from . import fake_openai

        return getattr(fake_openai, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class InlineRun:
    output: Any
    events: list[dict[str, Any]]
    steps: dict[str, StepRecord] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == type]


def run_inline(
    workflow: str | Workflow[Any, Any],
    input: dict[str, Any] | None = None,
    *,
    cache: MemoryCache | None = None,
    budget: Budget | dict[str, Any] | None = None,
    answers: dict[str, Any] | None = None,
) -> InlineRun:
    """Validate ``input`` and run ``workflow`` to the end in this thread; exceptions propagate.

    Usage is priced with ``AGENTFLOW["LLM_PRICES"]`` when Django is configured; ``budget`` replaces the
    workflow's (a ``BudgetExceeded`` then propagates like any other exception). ``usage`` holds the totals.
    ``answers`` answers ``agentflow.wait_for_input`` by key (the run replays after each, as it would on a
    worker; a question without an answer raises ``RunSuspended``). Child workflows run at once, in memory.
    """
    wf = registry.get(workflow) if isinstance(workflow, str) else workflow
    run = MemoryRun(
        wf,
        input,
        answers=answers,
        cache=cache or MemoryCache(),
        budget=Budget.parse(budget),
        pricer=_pricer(),
    )
    output = run.run()
    assert run.ctx is not None
    return InlineRun(
        output=output, events=run.sink.events, steps=dict(run.store.records), usage=run.ctx.usage
    )


def _pricer() -> Pricer | None:
    from django.conf import settings

    if not settings.configured:
        return None
    from ..llm.pricing import price

    return price


@contextmanager
def inline_executor() -> Iterator[None]:
    """Within the block, runs started with ``agentflow.start()`` execute at once, in the caller's thread,
    when the transaction commits (so use a transactional test, or ``captureOnCommitCallbacks``)."""
    from django.test import override_settings

    from ..conf import agentflow_settings

    with override_settings(
        AGENTFLOW={**agentflow_settings.user_settings, "EXECUTOR": "agentflow.executors.InlineExecutor"}
    ):
        yield
