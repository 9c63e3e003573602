"""In-memory store and event sink: the engine without a database or Redis, for unit tests."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from typing import Any

from . import events as ev
from .context import WAITING, Checkpoint, RunContext, StepRecord
from .errors import LeaseLost, RunSuspended
from .usage import Budget, Pricer
from .waits import INPUT, ChildResult, validate_answer
from .workflow import Workflow, registry


class MemoryStore:
    def __init__(self) -> None:
        self.records: dict[str, StepRecord] = {}
        self.stale = False

    def save_step(self, record: StepRecord) -> None:
        if self.stale:
            raise LeaseLost("stale epoch")
        record.encoded()  # refused as the database refuses it
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
        ev.encode(event)  # refused as the Redis sink refuses it
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


class MemoryWaits:
    """Waits without a database: ``answers`` answer inputs by key; a child run executes at once, in memory
    (in a thread of its own, so an async child can run under an async parent)."""

    def __init__(self, store: MemoryStore, *, answers: Mapping[str, Any] | None = None) -> None:
        self.store = store
        self.answers = dict(answers or {})
        self.children: dict[str, ChildResult | None] = {}
        self.child_runs: dict[str, MemoryRun] = {}

    def expire_input(self, record: StepRecord) -> Checkpoint:
        self.store.save_step(record)
        return self.store.checkpoints()[record.step_id]

    def answer_pending(self) -> bool:
        """Record the answers given for the inputs the run waits for; whether any was."""
        answered = False
        for record in self.store.records.values():
            key = (record.input or {}).get("key")
            output = record.output or {}
            pending = record.component == INPUT and record.status == WAITING and "answer" not in output
            if pending and key in self.answers:
                # Validated as send_input() validates it: InvalidAnswer for an answer a worker would not get.
                answer = validate_answer(record.input or {}, self.answers[key])
                record.output = {**output, "answer": answer, "answered_at": time.time()}
                answered = True
        return answered

    def start_child(self, step_id: str, workflow: str, input: dict[str, Any], budget: Budget | None) -> str:
        child_id = f"memory-child:{step_id}"
        if child_id in self.children:
            return child_id
        child = MemoryRun(registry.get(workflow), input, answers=self.answers, budget=budget)
        thread = threading.Thread(target=child.drive, name=f"agentflow-memory-{step_id}")
        thread.start()
        thread.join()
        self.child_runs[child_id] = child
        self.children[child_id] = child.result
        return child_id

    def child_result(self, run_id: str) -> ChildResult | None:
        return self.children.get(run_id)


class MemoryRun:
    """A run driven to its end in memory: each time it waits for input that ``answers`` has, the answer is
    recorded and the run replays, as a new incarnation would."""

    def __init__(
        self,
        wf: Workflow[Any, Any],
        input: dict[str, Any] | None,
        *,
        answers: Mapping[str, Any] | None = None,
        cache: MemoryCache | None = None,
        budget: Budget | None = None,
        pricer: Pricer | None = None,
    ) -> None:
        self.wf, self.input = wf, input
        self.store, self.sink = MemoryStore(), MemorySink()
        self.waits = MemoryWaits(self.store, answers=answers)
        self.cache, self.budget, self.pricer = cache, budget, pricer
        self.output: Any = None
        self.ctx: RunContext | None = None
        self.result: ChildResult | None = None

    def run(self) -> Any:
        """Drive the run; exceptions propagate (``RunSuspended`` when it waits for an input nobody answers)."""
        epoch = 1
        while True:
            content = sum(1 for e in self.sink.events if e["step"] is None and e["type"] in ev.CONTENT_TYPES)
            try:
                self.output, self.ctx = run_in_memory(
                    self.wf,
                    self.input,
                    store=self.store,
                    sink=self.sink,
                    cache=self.cache,
                    epoch=epoch,
                    workflow_content_seen=content,
                    budget=self.budget,
                    pricer=self.pricer,
                    waits=self.waits,
                )
                return self.output
            except RunSuspended as exc:
                if exc.reason != "input" or not self.waits.answer_pending():
                    raise
            epoch += 1

    def drive(self) -> None:
        """Run as a child: the outcome goes to ``result`` instead of raising."""
        try:
            output = self.run()
        except RunSuspended:
            self.result = None  # waits for input nobody answers: it never ends
        except BaseException as exc:  # the child's failure is its parent's StepFailed
            status = "cancelled" if type(exc).__name__ == "RunCancelled" else "failed"
            self.result = ChildResult(
                status, None, {"type": type(exc).__name__, "message": str(exc)}, self._usage()
            )
        else:
            self.result = ChildResult("completed", output, None, self._usage())

    def _usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {}
        from .usage import merge

        for record in self.store.records.values():
            merge(usage, record.usage)
        return usage


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
    waits: MemoryWaits | None = None,
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
        waits=waits if waits is not None else MemoryWaits(store),
    )
    return wf.execute(wf.validate_input(input or {}), ctx), ctx
