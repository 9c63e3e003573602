"""Answering a run's requests for input: :func:`send_input`, and the requests as the API and admin show them.

A request is the checkpoint of an ``agentflow.wait_for_input`` call (component ``input``, step id
``input:<key>``). An answer is validated against the request's schema, then written into that checkpoint, in
the transaction that also makes the run due (:func:`agentflow.waits.wake`); the next incarnation replays up to
the wait and finds it. Every refusal changes nothing:

====================================  =====  ==============================================
refusal                               HTTP   when
====================================  =====  ==============================================
``RunNotFound``                       404    no such run, or not one the user may see
``InputNotFound``                     404    the run has not asked for this key
``InputAlreadyAnswered``              409    the key was answered already
``InputTimeout``                      409    the request timed out
``RunAlreadyFinished``                409    the run finished (cancelled, say) unanswered
``InvalidAnswer``                     400    the answer does not match the schema
====================================  =====  ==============================================
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from django.db import transaction

from .core.context import COMPLETED, FAILED
from .core.errors import InputAlreadyAnswered, InputNotFound, InputTimeout, RunAlreadyFinished
from .core.waits import INPUT, check_key, input_step_id, iso, validate_answer
from .models import FINISHED_STATUSES, StepRun, WorkflowRun

WAITING_FOR_ANSWER = "waiting"
ANSWERED = "answered"
TIMED_OUT = "timed_out"
#: The run finished (cancelled, failed) without the request being answered.
CLOSED = "closed"


@dataclass(frozen=True)
class InputRequest:
    """A run's request for input, as people see it."""

    key: str
    status: str  # waiting, answered, timed_out or closed
    prompt: str
    schema: dict[str, Any]
    requested_at: str | None
    timeout_at: str | None
    value: Any = None
    answered_by: str | None = None
    answered_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(row: StepRun, run_status: str) -> InputRequest:
    request, output = row.input or {}, row.output or {}
    if row.status == COMPLETED or "answer" in output:
        status = ANSWERED
    elif row.status == FAILED:
        status = TIMED_OUT
    elif run_status in FINISHED_STATUSES:
        status = CLOSED
    else:
        status = WAITING_FOR_ANSWER
    return InputRequest(
        key=request.get("key", row.step_id.partition(":")[2]),
        status=status,
        prompt=request.get("prompt", ""),
        schema=request.get("schema") or {},
        requested_at=iso(output.get("requested_at")),
        timeout_at=iso(output.get("timeout_at")),
        value=output.get("value", output.get("answer")),
        answered_by=output.get("answered_by"),
        answered_at=output.get("answered_at"),
    )


def list_inputs(run: WorkflowRun) -> list[InputRequest]:
    """The run's requests for input, in the order they were made."""
    rows = StepRun.objects.filter(run=run, component=INPUT).order_by("id")
    return [describe(row, run.status) for row in rows]


def get_input(run: WorkflowRun, key: str) -> InputRequest:
    row = _row(run, key)
    if row is None:
        raise InputNotFound(f"run {run.pk} has not asked for input {key[:100]!r}", details={"key": key[:100]})
    return describe(row, run.status)


def _row(run: WorkflowRun, key: str, *, lock: bool = False) -> StepRun | None:
    try:
        check_key(key)
    except TypeError:
        return None
    rows = StepRun.objects.filter(run=run, step_id=input_step_id(key), component=INPUT)
    return (rows.select_for_update() if lock else rows).first()


def send_input(run: Any, key: str, value: Any, *, user: Any = None) -> InputRequest:
    """Answer the run's request for input ``key`` with ``value``; the run continues on any worker.

    ``value`` is validated against the request's schema (``InvalidAnswer`` with field errors otherwise) and
    normalised (a pydantic model's defaults filled in). ``user`` is recorded as who answered. Raises
    ``RunNotFound``, ``InputNotFound``, ``InputAlreadyAnswered``, ``InputTimeout`` or ``RunAlreadyFinished``,
    changing nothing. Returns the answered request.
    """
    from .runs import get_run
    from .waits import wake

    current = get_run(run)
    with transaction.atomic():
        # The run's row lock orders this answer with the incarnation that hands the run back
        # (runner._suspend): whichever commits second sees the other, so the answer is never missed.
        locked = WorkflowRun.objects.select_for_update().get(pk=current.pk)
        row = _row(locked, key, lock=True)
        if row is None:
            raise InputNotFound(
                f"run {locked.pk} has not asked for input {str(key)[:100]!r}", details={"key": str(key)[:100]}
            )
        request = describe(row, locked.status)
        if request.status == ANSWERED:
            raise InputAlreadyAnswered(
                f"input {key!r} of run {locked.pk} was answered already",
                details={"key": key, "answered_by": request.answered_by, "answered_at": request.answered_at},
            )
        timeout_at = (row.output or {}).get("timeout_at")
        if request.status == TIMED_OUT or (timeout_at is not None and time.time() >= timeout_at):
            raise InputTimeout(
                f"input {key!r} of run {locked.pk} timed out at {request.timeout_at}",
                details={"key": key, "timeout_at": request.timeout_at},
            )
        if locked.status in FINISHED_STATUSES:
            raise RunAlreadyFinished(
                f"run {locked.pk} is {locked.status}: it takes no more answers",
                details={"status": locked.status},
            )
        answer = validate_answer(row.input or {}, value)
        who = user.get_username() if user is not None and getattr(user, "is_authenticated", False) else None
        row.output = {
            **(row.output or {}),
            "answer": answer,
            "answered_by": who,
            "answered_at": iso(time.time()),
        }
        row.save(update_fields=["output"])
        wake(locked.pk)
    return describe(row, locked.status)
