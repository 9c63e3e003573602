"""In-memory store and event sink: the engine without a database or Redis, for unit tests."""

from __future__ import annotations

import itertools
from typing import Any

from .context import Checkpoint, RunContext, StepRecord
from .errors import LeaseLost
from .usage import Budget, Pricer
from .workflow import Workflow


class MemoryStore:
    def __init__(self) -> None:
        self.records: dict[str, StepRecord] = {}
        self.stale = False

    def save_step(self, record: StepRecord) -> None:
        if self.stale:
            raise LeaseLost("stale epoch")
        self.records[record.step_id] = record

    def checkpoints(self) -> dict[str, Checkpoint]:
        return {
            r.step_id: Checkpoint(r.status, r.output, r.error, r.attempts, r.input_hash, r.usage)
            for r in self.records.values()
        }


class MemorySink:
    """Appends events to a list, giving them stream-like ids."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._fenced = False

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append({"id": f"0-{next(self._ids)}", **event})

    def flush(self) -> None:
        pass

    @property
    def fenced(self) -> bool:
        return self._fenced

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


class MemoryCache:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, timeout: float | None = None) -> None:
        self.data[key] = value


def run_in_memory(
    wf: Workflow[Any, Any],
    input: dict[str, Any] | None = None,
    *,
    store: MemoryStore | None = None,
    sink: MemorySink | None = None,
    cache: MemoryCache | None = None,
    epoch: int = 1,
    workflow_content_seen: int = 0,
    budget: Budget | None = None,
    pricer: Pricer | None = None,
) -> tuple[Any, RunContext]:
    """Execute ``wf`` once against memory backends; pass the same ``store`` again to replay.

    ``budget`` defaults to the workflow's; ``pricer`` prices recorded usage (default: no prices).
    """
    store = store if store is not None else MemoryStore()
    ctx = RunContext(
        run_id="memory-run",
        epoch=epoch,
        store=store,
        sink=sink if sink is not None else MemorySink(),
        checkpoints=store.checkpoints(),
        cache=cache,
        workflow_content_seen=workflow_content_seen,
        budget=budget if budget is not None else wf.budget,
        pricer=pricer,
    )
    return wf.execute(wf.validate_input(input or {}), ctx), ctx
