"""agentflow: durable, streamable LLM and agent workflows for Django, executed on Celery workers.

Importing this package does not import Django, so components and workflows can be defined (and unit
tested) anywhere. The Django-side functions ``start``, ``get_run``, ``wait``, ``cancel``, ``resume`` and ``send_input`` are
imported lazily.
"""

from typing import Any

from .core.api import current_step, map, publish, sleep, status, stream_output
from .core.component import Component, component
from .core.errors import (
    AgentflowError,
    BudgetExceeded,
    ConfigurationError,
    IdempotencyKeyReused,
    InputAlreadyAnswered,
    InputNotFound,
    InputTimeout,
    InvalidAnswer,
    InvalidInput,
    LeaseLost,
    NotInWorkflow,
    Retry,
    RunAlreadyFinished,
    RunCancelled,
    RunFailed,
    RunInterrupted,
    RunNotFound,
    RunNotResumable,
    RunSuspended,
    RunTimeout,
    SerializationError,
    StepFailed,
    StepTimeout,
    WorkflowDivergence,
    WorkflowNotFound,
)
from .core.retry import RetryPolicy
from .core.schedules import Schedule
from .core.usage import Budget, record_usage
from .core.waits import (
    run_workflow,
    run_workflow_async,
    run_workflows,
    run_workflows_async,
    wait_for_input,
    wait_for_input_async,
)
from .core.workflow import Workflow, registry, workflow

__version__ = "0.1.0.dev0"

__all__ = [
    "AgentflowError",
    "Budget",
    "BudgetExceeded",
    "Component",
    "ConfigurationError",
    "IdempotencyKeyReused",
    "InputAlreadyAnswered",
    "InputNotFound",
    "InputTimeout",
    "InvalidAnswer",
    "InvalidInput",
    "LeaseLost",
    "NotInWorkflow",
    "Retry",
    "RetryPolicy",
    "RunAlreadyFinished",
    "RunCancelled",
    "RunFailed",
    "RunInterrupted",
    "RunNotFound",
    "RunNotResumable",
    "RunSuspended",
    "RunTimeout",
    "Schedule",
    "SerializationError",
    "StepFailed",
    "StepTimeout",
    "Workflow",
    "WorkflowDivergence",
    "WorkflowNotFound",
    "cancel",
    "component",
    "current_step",
    "get_run",
    "map",
    "publish",
    "record_usage",
    "registry",
    "resume",
    "run_workflow",
    "run_workflow_async",
    "run_workflows",
    "run_workflows_async",
    "send_input",
    "sleep",
    "start",
    "status",
    "stream_output",
    "wait",
    "wait_for_input",
    "wait_for_input_async",
    "workflow",
]

_LAZY = {name: "agentflow.runs" for name in ("start", "get_run", "wait", "cancel")} | {
    "resume": "agentflow.resuming",
    "send_input": "agentflow.inputs",
}


def __getattr__(name: str) -> Any:
    # Lazy, so `import agentflow` works before Django is configured.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentflow' has no attribute {name!r}")
