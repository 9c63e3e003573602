"""Every exception agentflow raises, rooted in :class:`AgentflowError`.

Each class carries a stable ``code``; the REST API maps codes to HTTP statuses. Control flow that user code
must not swallow (cancellation, a lost lease) derives from ``BaseException`` so ``except Exception`` in a
component cannot hide it.
"""

from __future__ import annotations

from typing import Any


class AgentflowError(Exception):
    code = "agentflow_error"

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class ConfigurationError(AgentflowError):
    code = "configuration_error"


class WorkflowNotFound(AgentflowError):
    code = "workflow_not_found"


class WorkflowAlreadyRegistered(ConfigurationError):
    code = "workflow_already_registered"


class InvalidInput(AgentflowError):
    """The input of a run does not match the workflow's signature; ``details`` lists field errors."""

    code = "invalid_input"


class SerializationError(AgentflowError, TypeError):
    """A step's arguments or result cannot be stored as JSON."""

    code = "not_serializable"


class RunNotFound(AgentflowError):
    code = "run_not_found"


class IdempotencyKeyReused(AgentflowError):
    """An idempotency key that started a run came again with a different input: the earlier run is not what
    was asked for (``details``: ``{"run": <its id>}``). The REST API answers 422."""

    code = "idempotency_key_reused"


class RunTimeout(AgentflowError):
    """Waiting for a run's result took longer than allowed. The run itself goes on."""

    code = "run_timeout"


class RunNotResumable(AgentflowError):
    """Only a failed or cancelled run can be resumed (``details``: ``{"status": <its status>}``)."""

    code = "not_resumable"


class RunAlreadyFinished(AgentflowError):
    """The run has finished (completed, failed or cancelled): it takes no more answers."""

    code = "run_finished"


class InputNotFound(AgentflowError):
    """The run has not asked for input under this key (yet): nothing to answer."""

    code = "input_not_found"


class InvalidAnswer(AgentflowError):
    """An answer does not match the input's schema; ``details`` lists field errors. The run keeps waiting."""

    code = "invalid_answer"


class InputAlreadyAnswered(AgentflowError):
    """The input was answered already: a second answer changes nothing (double-clicks are harmless)."""

    code = "input_already_answered"


class InputTimeout(AgentflowError):
    """``wait_for_input`` got no answer within its ``timeout_seconds``; the workflow may catch it.

    Also what ``send_input`` raises for an answer that comes after the time-out (HTTP 409).
    """

    code = "input_timed_out"


class RunFailed(AgentflowError):
    """Raised by ``wait()`` when the awaited run ended failed or cancelled."""

    code = "run_failed"


class NotInWorkflow(AgentflowError):
    """An API that needs a running workflow (``status``, ``publish``, ...) was called outside one."""

    code = "not_in_workflow"


class WorkflowDivergence(AgentflowError):
    """Replaying a run met a step whose recorded arguments differ: the workflow code is not deterministic."""

    code = "workflow_divergence"


class StepError(AgentflowError):
    code = "step_error"


class StepTimeout(StepError, TimeoutError):
    """One attempt of a step ran longer than its ``.timeout()``; retried like any other error."""

    code = "step_timeout"


class StepFailed(StepError):
    """A step exhausted its retries (or gave up). Workflows may catch it and recover.

    ``error_type`` and ``error_message`` describe the last attempt's exception; ``cause`` holds the exception
    itself when the failure happened in this process (it is ``None`` when the failure is replayed from a
    checkpoint).
    """

    code = "step_failed"

    def __init__(
        self,
        step_id: str,
        *,
        attempts: int,
        error_type: str,
        error_message: str,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(
            f"step {step_id!r} failed after {attempts} attempt(s): {error_type}: {error_message}",
            details={"step": step_id, "attempts": attempts, "type": error_type, "error": error_message},
        )
        self.step_id = step_id
        self.attempts = attempts
        self.error_type = error_type
        self.error_message = error_message
        self.cause = cause


class Retry(AgentflowError):
    """Raise inside a component to ask for another attempt after ``delay_seconds``.

    The attempt still counts against ``max_attempts``. ``delay_seconds=None`` uses the policy's backoff.
    """

    code = "retry"
    # False for waits that are not failures (a local rate limit's capacity, a move to another provider):
    # they do not use up an attempt.
    consumes_attempt = True
    # Fields added to (or replacing those of) the ``step.retrying`` event this retry causes, e.g. a
    # ``reason``; None for none.
    event_data: dict[str, Any] | None = None

    def __init__(self, delay_seconds: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        if delay_seconds is not None and not 0 <= delay_seconds < float("inf"):  # NaN too
            raise ValueError(f"delay_seconds must be a finite number >= 0, not {delay_seconds!r}")
        self.delay_seconds = delay_seconds


class RunInterrupted(BaseException):
    """Base of control flow that stops a run's execution in this process; never swallow it."""

    code = "run_interrupted"


class RunCancelled(RunInterrupted):
    """The run was cancelled. Raised at the next step boundary or heartbeat."""

    code = "run_cancelled"


class LeaseLost(RunInterrupted):
    """This worker no longer owns the run (its epoch is stale): it must stop writing at once."""

    code = "lease_lost"


class RunSuspended(RunInterrupted):
    """The incarnation hands its run back: it continues later, in a new Celery task, on any worker.

    ``wake_at`` (epoch seconds) is when the run may continue (a long retry delay or ``agentflow.sleep``);
    ``None`` means at once, except for ``"input"`` and ``"child"``, where it means when whatever the run waits for
    happens (an answer, a child run's end). ``reason`` is ``"retry"``, ``"sleep"``, ``"slice"``, ``"drain"``,
    ``"input"`` or ``"child"``.
    """

    code = "run_suspended"

    def __init__(self, message: str = "", *, wake_at: float | None = None, reason: str = "") -> None:
        super().__init__(message or f"run suspended ({reason})")
        self.wake_at = wake_at
        self.reason = reason


class BudgetExceeded(RunInterrupted):
    """The run spent its budget (``AGENTFLOW`` price table, ``@workflow(budget=...)`` or ``start(budget=...)``).

    Raised before the next step or provider call once the run's usage reaches a limit; the run ends
    ``failed`` with this code, keeping every checkpoint, so it can be resumed with a larger budget.
    """

    code = "budget_exceeded"

    def __init__(self, message: str, *, limit: str, budget: dict[str, Any], usage: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit
        self.details = {"limit": limit, "budget": budget, "usage": usage}


class SliceEnded(RunSuspended):
    """The incarnation's time slice is over (or its worker is shutting down): continue in a new task now."""

    code = "slice_ended"
