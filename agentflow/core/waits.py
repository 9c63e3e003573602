"""Waiting for people and for other runs: ``wait_for_input``, ``run_workflow``, ``run_workflows`` and their
async twins.

Waiting is suspension. A wait is a step whose checkpoint says ``waiting`` while it lasts: the request (an
input's key, prompt and JSON Schema; a child run's id) is checkpointed, an event announces it, and the
incarnation hands the run back (``run.waiting``) instead of blocking its worker. Whatever ends the wait (an
answer, the child run's end, the time-out) makes the run due again; the next incarnation replays up to the
wait, finds it settled, checkpoints the outcome (``completed`` or ``failed``) with one more event, and goes
on. Nothing (a worker slot, a DB connection, a rate-limit grant) is held while a run waits, for seconds or
for weeks.

Waits are called from the workflow body, never from inside a step: a hand-off never cuts a step short. An
async workflow waits until its concurrent steps' attempts are over before it hands the run back.

Each wait's events are emitted after its checkpoint (the DB is the source of truth); a worker that dies in
between leaves the event to the next incarnation, which appends it with ``"recovered": true``
(:func:`announcement` builds it from the checkpoint alone).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from . import events as ev
from .context import (
    COMPLETED,
    FAILED,
    WAITING,
    Checkpoint,
    Frame,
    RunContext,
    StepRecord,
    _frame,
    current_run,
)
from .errors import (
    ConfigurationError,
    InputTimeout,
    InvalidAnswer,
    NotInWorkflow,
    SerializationError,
    StepFailed,
    WorkflowDivergence,
)
from .serialization import adapter_for, check_storable, from_jsonable, stable_hash, to_jsonable, unstorable

if TYPE_CHECKING:
    from .usage import Budget
    from .workflow import Workflow

#: Component name of an input wait's checkpoint; its step id is ``input:<key>``.
INPUT = "input"
#: Prefix of a child run's step: component ``workflow:<name>``, step id ``workflow:<name>#<n>``.
CHILD_PREFIX = "workflow:"
#: Reasons of ``run.waiting`` that have no timer of their own: the run waits until something happens.
OPEN_ENDED_REASONS = frozenset({"input", "child"})
#: Every reason of ``run.waiting`` (and of ``WorkflowRun.wait_reason``).
WAIT_REASONS = ("input", "child", "sleep", "retry", "slice", "drain")

_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def input_step_id(key: str) -> str:
    return f"{INPUT}:{key}"


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise TypeError(
            f"an input key must be 1-100 letters, digits, '_', '.' or '-' (it is part of a URL), not {key!r}"
        )
    return key


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- what the engine needs from outside --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildResult:
    """A finished child run: its status (``completed``, ``failed`` or ``cancelled``), output, error, usage."""

    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


class WaitService(Protocol):
    """What waits need besides checkpoints and events: the runner's is ``agentflow.waits.DjangoWaits``."""

    def expire_input(self, record: StepRecord) -> Checkpoint:
        """Checkpoint ``record`` (an input's time-out) unless an answer was recorded meanwhile; return the
        checkpoint that stands (the answered one, or ``record``'s)."""

    def start_child(self, step_id: str, workflow: str, input: dict[str, Any], budget: Budget | None) -> str:
        """Start the child run of ``step_id`` (or find the one started before) and return its id."""

    def child_result(self, run_id: str) -> ChildResult | None:
        """The finished child's result; None while it is queued, running or waiting."""


# -- schemas of answers --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnswerSchema:
    """What an answer must look like: a JSON Schema, and the type it came from when there was one.

    ``ref`` is the ``module:qualname`` of a module-level type, so the API process (which has the same code)
    validates answers with the very model the workflow declared, validators and all; answers to a JSON Schema
    dict, or to a type defined inside a function, are validated against the JSON Schema.
    """

    json_schema: dict[str, Any]
    ref: str | None = None
    annotation: Any = None

    @classmethod
    def of(cls, schema: Any) -> AnswerSchema:
        if schema is None:
            return cls({})
        if isinstance(schema, dict):
            import jsonschema

            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise TypeError(f"schema is not a valid JSON Schema: {exc.message}") from None
            document = to_jsonable(schema, what="the schema")
            check_storable(document, what="the schema")  # it is checkpointed and sent in input.requested
            return cls(document)
        try:
            json_schema = adapter_for(schema).json_schema()
        except Exception as exc:
            raise TypeError(
                "schema must be a pydantic model, a type pydantic can validate, a JSON Schema dict or None, "
                f"not {schema!r} ({exc})"
            ) from None
        qualname = getattr(schema, "__qualname__", "")
        module = getattr(schema, "__module__", "")
        ref = f"{module}:{qualname}" if isinstance(schema, type) and "<locals>" not in qualname else None
        return cls(json_schema, ref, schema)


def validate_answer(request: dict[str, Any], value: Any, *, resolve: bool = True) -> Any:
    """``value`` checked against an input request's schema and normalised to JSON; ``InvalidAnswer`` with
    field errors ``[{"field", "code", "message"}]`` otherwise. ``request`` is the input's checkpointed
    ``input``. With ``resolve``, a schema that came from a module-level type is validated by that type.

    The rules are run input's (docs/topics/workflows.md): ``value`` is first turned into JSON (what a client
    would send), must be JSON the database can store (no U+0000, lone surrogate or infinity: codes
    ``null_character``, ``lone_surrogate``, ``non_finite_number``), and is then validated strictly, in JSON's
    terms: by the type itself as pydantic validates JSON in strict mode (``"5"`` is not an ``int``, ``1`` is
    not a ``bool``), or, where the type cannot be imported, by its JSON Schema with the same strictness
    (``1.0`` is not an integer; formats such as ``date-time`` checked where jsonschema can). A JSON Schema
    given as a ``dict`` is validated as JSON Schema says.
    """
    key = request.get("key")
    try:
        document = to_jsonable(value, what="the answer")
    except SerializationError as exc:
        raise _invalid(key, [{"field": "", "code": "not_serializable", "message": exc.message}]) from None
    problem = unstorable(document)
    if problem is not None:
        field, code, message = problem
        raise _invalid(key, [{"field": field, "code": code, "message": message}])
    annotation = _resolve(request.get("schema_ref")) if resolve else None
    if annotation is not None:
        adapter = adapter_for(annotation)
        try:
            return adapter.dump_python(adapter.validate_json(json.dumps(document), strict=True), mode="json")
        except ValidationError as exc:
            from .workflow import validation_details

            raise _invalid(key, validation_details(exc)) from None
    schema = request.get("schema") or {}
    if schema:
        errors = sorted(
            _schema_validator(schema, like_pydantic=bool(request.get("schema_ref"))).iter_errors(document),
            key=lambda e: list(e.absolute_path),
        )
        if errors:
            raise _invalid(
                key,
                [
                    {
                        "field": ".".join(str(part) for part in err.absolute_path),
                        "code": str(err.validator),
                        "message": err.message,
                    }
                    for err in errors
                ],
            )
    return document


def _invalid(key: Any, details: list[dict[str, Any]]) -> InvalidAnswer:
    return InvalidAnswer(f"invalid answer to input {key!r}", details=details)


def _schema_validator(schema: dict[str, Any], *, like_pydantic: bool) -> Any:
    """A jsonschema validator of ``schema``; ``like_pydantic`` (the schema of a type this process cannot
    import) makes it as strict as pydantic's strict JSON mode, which validates the type elsewhere: integers
    are written without a fraction (JSON Schema counts ``1.0`` as one), and formats are asserted."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    if not like_pydantic:
        return cls(schema)
    strict = jsonschema.validators.extend(
        cls,
        type_checker=cls.TYPE_CHECKER.redefine(
            "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
        ),
    )
    return strict(schema, format_checker=cls.FORMAT_CHECKER)


def _resolve(ref: Any) -> Any:
    if not isinstance(ref, str) or ":" not in ref:
        return None
    import importlib

    module_name, qualname = ref.split(":", 1)
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None  # not importable here: the JSON Schema still validates
    return found


# -- the events of waits -------------------------------------------------------------------------------------


def announcement(
    component: str, status: str, input: Any, output: Any, error: dict[str, Any] | None
) -> tuple[str, dict[str, Any]] | None:
    """The event (type and data) that announces a wait's checkpoint in its current state; None for a
    checkpoint that is not a wait's."""
    input, output = input or {}, output or {}
    if component == INPUT:
        key = input.get("key")
        if status == WAITING:
            return ev.INPUT_REQUESTED, {
                "key": key,
                "prompt": input.get("prompt", ""),
                "schema": input.get("schema") or {},
                "timeout_at": iso(output.get("timeout_at")),
            }
        if status == COMPLETED:
            return ev.INPUT_RECEIVED, {
                "key": key,
                "value": output.get("value"),
                "answered_by": output.get("answered_by"),
                "answered_at": output.get("answered_at"),
            }
        return ev.INPUT_TIMED_OUT, {"key": key}
    if component.startswith(CHILD_PREFIX):
        data = {
            "run": output.get("run") or (error or {}).get("run"),
            "workflow": component[len(CHILD_PREFIX) :],
        }
        if status == WAITING:
            return ev.CHILD_STARTED, data
        if status == COMPLETED:
            return ev.CHILD_COMPLETED, {**data, "status": "completed"}
        error = error or {}
        public = {k: v for k, v in error.items() if k in ("type", "message", "code")}
        return ev.CHILD_FAILED, {**data, "status": error.get("status", "failed"), "error": public}
    return None


def _announce(ctx: RunContext, record: StepRecord) -> None:
    made = announcement(record.component, record.status, record.input, record.output, record.error)
    if made is not None:
        ctx.emit(made[0], made[1], step=record.step_id, attempt=None)


def _save(ctx: RunContext, record: StepRecord) -> Checkpoint:
    ctx.store.save_step(record)
    checkpoint = Checkpoint(
        record.status, record.output, record.error, record.attempts, record.input_hash or None, record.usage
    )
    ctx.checkpoints[record.step_id] = checkpoint
    if record.status != WAITING:
        ctx.steps_executed += 1
    return checkpoint


# -- common plumbing -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pending:
    """The wait is not over; the run may continue on its own at ``wake_at`` (epoch seconds; None: never)."""

    wake_at: float | None


def _body(what: str) -> tuple[RunContext, Frame]:
    ctx = current_run()
    if ctx is None:
        raise NotInWorkflow(f"{what} needs a running workflow")
    frame = _frame.get() or ctx.root
    if frame.step_id is not None:
        raise TypeError(
            f"{what} must be called from the workflow body, not inside step {frame.step_id!r}: a running step "
            "cannot hand its run back"
        )
    return ctx, frame


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _suspend_now(ctx: RunContext, pending: list[_Pending], reason: str) -> None:
    if _in_event_loop() and ctx.attempts_running:
        raise TypeError(
            f"an async workflow with steps running must wait with the async twin (await "
            f"agentflow.{'wait_for_input' if reason == 'input' else 'run_workflow'}_async(...)), so those "
            "steps end before the run is handed back"
        )
    ctx.suspend(_earliest(pending), reason)


async def _suspend_when_idle(ctx: RunContext, pending: list[_Pending], reason: str) -> None:
    # Handing the run back while sibling attempts run would cut them short: their content would then be
    # emitted again by the next incarnation, unvoided. Whatever ends the wait meanwhile is found by the
    # runner when it hands the run back, so nothing is missed by waiting here.
    while ctx.attempts_running:
        await asyncio.sleep(0.02)
        ctx.check_interrupt()
    ctx.suspend(_earliest(pending), reason)


def _earliest(pending: list[_Pending]) -> float | None:
    times = [p.wake_at for p in pending if p.wake_at is not None]
    return min(times) if times else None


# -- human input ---------------------------------------------------------------------------------------------


class _InputWait:
    def __init__(
        self, key: Any, schema: Any, prompt: Any, timeout_seconds: Any, *, what: str = "wait_for_input"
    ) -> None:
        self.key = check_key(key)
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        check_storable(prompt, what="the prompt")
        if timeout_seconds is not None and (
            not isinstance(timeout_seconds, int | float)
            or isinstance(timeout_seconds, bool)
            or not 0 < timeout_seconds < math.inf
        ):
            raise TypeError(
                f"timeout_seconds must be a positive finite number or None, not {timeout_seconds!r}"
            )
        self.schema = AnswerSchema.of(schema)
        self.prompt = prompt
        self.timeout_seconds = timeout_seconds
        self.ctx, _ = _body(what)
        self.step_id = input_step_id(self.key)

    def settle(self) -> Any:
        ctx = self.ctx
        ctx.check_interrupt()
        checkpoint = ctx.checkpoints.get(self.step_id)
        if checkpoint is None:
            checkpoint = self._request()
        if checkpoint.status == COMPLETED:
            ctx.steps_replayed += 1
            return self._value((checkpoint.output or {}).get("value"))
        if checkpoint.status == FAILED:
            raise self._timeout((checkpoint.error or {}).get("message", ""))
        output = checkpoint.output or {}
        if "answer" in output:
            return self._receive(checkpoint)
        timeout_at = output.get("timeout_at")
        if timeout_at is not None and time.time() >= timeout_at:
            return self._expire(checkpoint)
        return _Pending(timeout_at)

    def _request_input(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "prompt": self.prompt,
            "schema": self.schema.json_schema,
            "schema_ref": self.schema.ref,
            "timeout_seconds": self.timeout_seconds,
        }

    def _record(self, status: str, request: Any, output: Any, error: dict[str, Any] | None) -> StepRecord:
        now = time.time()
        return StepRecord(
            step_id=self.step_id,
            parent_id=None,
            component=INPUT,
            status=status,
            input=request,
            input_hash="",
            output=output,
            error=error,
            attempts=0,
            started_at=now,
            finished_at=now,
        )

    def _request(self) -> Checkpoint:
        now = time.time()
        timeout_at = None if self.timeout_seconds is None else now + self.timeout_seconds
        record = self._record(
            WAITING, self._request_input(), {"requested_at": now, "timeout_at": timeout_at}, None
        )
        checkpoint = _save(self.ctx, record)
        _announce(self.ctx, record)
        return checkpoint

    def _receive(self, checkpoint: Checkpoint) -> Any:
        output = checkpoint.output or {}
        record = self._record(
            COMPLETED,
            self._request_input(),
            {
                "value": output["answer"],
                "answered_by": output.get("answered_by"),
                "answered_at": output.get("answered_at"),
                "requested_at": output.get("requested_at"),
            },
            None,
        )
        _save(self.ctx, record)
        _announce(self.ctx, record)
        return self._value(output["answer"])

    def _expire(self, checkpoint: Checkpoint) -> Any:
        message = f"no answer to input {self.key!r} within {self.timeout_seconds}s"
        record = self._record(
            FAILED,
            self._request_input(),
            checkpoint.output,
            {"type": "InputTimeout", "message": message, "code": InputTimeout.code},
        )
        waits = self.ctx.waits
        standing = waits.expire_input(record) if waits is not None else None
        if standing is not None and "answer" in (standing.output or {}):
            self.ctx.checkpoints[self.step_id] = standing
            return self._receive(standing)  # answered just before the time-out: the answer stands
        if waits is None:
            self.ctx.store.save_step(record)
        self.ctx.checkpoints[self.step_id] = Checkpoint(FAILED, record.output, record.error, 0, None)
        self.ctx.steps_executed += 1
        _announce(self.ctx, record)
        raise self._timeout(message)

    def _timeout(self, message: str) -> InputTimeout:
        return InputTimeout(
            message or f"no answer to input {self.key!r}",
            details={"key": self.key, "timeout_seconds": self.timeout_seconds},
        )

    def _value(self, value: Any) -> Any:
        if self.schema.annotation is None:
            return value
        try:
            return adapter_for(self.schema.annotation).validate_json(json.dumps(value), strict=True)
        except ValidationError as exc:
            # The API validated it against the JSON Schema (the type was not importable there): only
            # validators the schema cannot express reject it here.
            from .workflow import validation_details

            raise InvalidAnswer(
                f"the answer to input {self.key!r} does not validate in the workflow",
                details=validation_details(exc),
            ) from None


def wait_for_input(
    key: str, *, schema: Any = None, prompt: str = "", timeout_seconds: float | None = None
) -> Any:
    """Ask a person for input and wait for the answer, durably: the run is suspended until it comes.

    ``key`` names the question within the run (letters, digits, ``_ . -``; asking the same key again returns
    the same answer). ``schema`` is a pydantic model, any type pydantic validates, a JSON Schema dict, or None
    (any JSON); answers are validated against it before they are accepted, and a model comes back as an
    instance. ``prompt`` is shown to whoever answers. Past ``timeout_seconds`` it raises ``InputTimeout``,
    which the workflow may catch. Answers come through :func:`agentflow.send_input`, ``POST
    /api/runs/{id}/input/{key}/`` or the admin. Call it from the workflow body (not inside a step); in an
    async workflow use :func:`wait_for_input_async`.
    """
    wait = _InputWait(key, schema, prompt, timeout_seconds)
    result = wait.settle()
    if isinstance(result, _Pending):
        _suspend_now(wait.ctx, [result], "input")
    return result


async def wait_for_input_async(
    key: str, *, schema: Any = None, prompt: str = "", timeout_seconds: float | None = None
) -> Any:
    """The async twin of :func:`wait_for_input`: the run is handed back once its running steps are over."""
    wait = _InputWait(key, schema, prompt, timeout_seconds, what="wait_for_input_async")
    result = wait.settle()
    if isinstance(result, _Pending):
        await _suspend_when_idle(wait.ctx, [result], "input")
    return result


# -- child workflows -------------------------------------------------------------------------------------------


class _ChildWait:
    def __init__(self, ctx: RunContext, frame: Frame, workflow: Any, input: Any) -> None:
        from .workflow import Workflow, registry

        wf = registry.get(workflow) if isinstance(workflow, str) else workflow
        if not isinstance(wf, Workflow):
            raise TypeError(f"run_workflow needs a workflow or its name, not {workflow!r}")
        self.wf: Workflow[Any, Any] = wf
        self.ctx = ctx
        self.data = wf.validate_input(input)
        self.request = {"workflow": wf.name, "input": self.data}
        self.input_hash = stable_hash(self.request)
        self.component = CHILD_PREFIX + wf.name
        self.step_id = frame.next_child_id(self.component)

    def settle(self) -> Any:
        ctx = self.ctx
        ctx.check_interrupt()
        checkpoint = ctx.checkpoints.get(self.step_id)
        if checkpoint is not None and checkpoint.input_hash not in (None, self.input_hash):
            raise WorkflowDivergence(
                f"child workflow step {self.step_id!r} is replayed with another workflow or input than it was "
                "started with: the workflow code between steps must be deterministic",
                details={"step": self.step_id},
            )
        if checkpoint is None:
            checkpoint = self._start()
        if checkpoint.status == COMPLETED:
            ctx.steps_replayed += 1
            return from_jsonable((checkpoint.output or {}).get("output"), self.wf.output_annotation)
        if checkpoint.status == FAILED:
            raise self._failure(checkpoint.error or {})
        child_id = str((checkpoint.output or {}).get("run"))
        result = self._service().child_result(child_id)
        if result is None:
            return _Pending(None)
        return self._finish(child_id, result)

    def _service(self) -> WaitService:
        if self.ctx.waits is None:
            raise ConfigurationError(
                "child workflows need a wait service (the runner's, or agentflow.testing's)"
            )
        return self.ctx.waits

    def _record(
        self, status: str, output: Any, error: dict[str, Any] | None, usage: Any = None
    ) -> StepRecord:
        now = time.time()
        return StepRecord(
            step_id=self.step_id,
            parent_id=None,
            component=self.component,
            status=status,
            input=self.request,
            input_hash=self.input_hash,
            output=output,
            error=error,
            attempts=0 if status == WAITING else 1,
            started_at=now,
            finished_at=now,
            usage=usage,
        )

    def _start(self) -> Checkpoint:
        ctx = self.ctx
        ctx.check_budget()
        child_id = self._service().start_child(self.step_id, self.wf.name, self.data, ctx.remaining_budget())
        record = self._record(WAITING, {"run": child_id, "workflow": self.wf.name}, None)
        checkpoint = _save(ctx, record)
        _announce(ctx, record)
        return checkpoint

    def _finish(self, child_id: str, result: ChildResult) -> Any:
        ctx = self.ctx
        if result.status == COMPLETED:
            record = self._record(
                COMPLETED,
                {"run": child_id, "workflow": self.wf.name, "output": result.output},
                None,
                result.usage,
            )
        else:
            error = dict(result.error or {})
            cause = error.get("type") or ("RunCancelled" if result.status == "cancelled" else "Error")
            message = error.get("message") or f"the child run was {result.status}"
            record = self._record(
                FAILED,
                {"run": child_id, "workflow": self.wf.name},
                {"type": cause, "message": message, "run": child_id, "status": result.status}
                | ({"code": error["code"]} if error.get("code") else {}),
                result.usage,
            )
        _save(ctx, record)
        # The child's tokens and cost are the parent's too (its budget included) from now on.
        ctx.add_run_usage(result.usage)
        _announce(ctx, record)
        if record.status == FAILED:
            raise self._failure(record.error or {})
        return from_jsonable(result.output, self.wf.output_annotation)

    def _failure(self, error: dict[str, Any]) -> StepFailed:
        return StepFailed(
            self.step_id,
            attempts=1,
            error_type=error.get("type", "Error"),
            error_message=f"child run {error.get('run')} of {self.wf.name!r} {error.get('status', 'failed')}: "
            f"{error.get('message', '')}",
        )


def run_workflow(workflow: Any, input: dict[str, Any] | None = None) -> Any:
    """Run another registered workflow as a step of this one and return its output.

    The child is a run of its own (its own stream, admin page and REST representation), linked to this run
    both ways, owned by this run's owner and limited to what is left of this run's budget; its usage counts in
    this run's once it ends. This run is handed back while the child runs, and continues on any worker when
    the child ends. A child that fails or is cancelled raises ``StepFailed``, which the workflow may catch.
    Cancelling this run cancels its children. Call it from the workflow body; in an async workflow use
    :func:`run_workflow_async`.
    """
    ctx, frame = _body("run_workflow")
    result = _ChildWait(ctx, frame, workflow, input).settle()
    if isinstance(result, _Pending):
        _suspend_now(ctx, [result], "child")
    return result


async def run_workflow_async(workflow: Any, input: dict[str, Any] | None = None) -> Any:
    """The async twin of :func:`run_workflow`."""
    ctx, frame = _body("run_workflow_async")
    result = _ChildWait(ctx, frame, workflow, input).settle()
    if isinstance(result, _Pending):
        await _suspend_when_idle(ctx, [result], "child")
    return result


def _settle_all(waits: list[_ChildWait]) -> tuple[list[Any], list[_Pending]]:
    results: list[Any] = []
    pending: list[_Pending] = []
    for wait in waits:  # every child is started (and every finished one recorded) before the run waits
        try:
            result = wait.settle()
        except StepFailed as exc:
            result = exc
        if isinstance(result, _Pending):
            pending.append(result)
        results.append(result)
    return results, pending


def _outcome(results: list[Any]) -> list[Any]:
    for result in results:
        if isinstance(result, StepFailed):
            raise result
    return results


def run_workflows(workflow: Any, inputs: Iterable[dict[str, Any] | None]) -> list[Any]:
    """Fan out: run ``workflow`` once per input, all at once, as child runs; their outputs in input order.

    Every child runs to its end; if any failed, the first failure (in input order) is raised as
    ``StepFailed`` once all have ended.
    """
    ctx, frame = _body("run_workflows")
    waits = [_ChildWait(ctx, frame, workflow, data) for data in list(inputs)]
    results, pending = _settle_all(waits)
    if pending:
        _suspend_now(ctx, pending, "child")
    return _outcome(results)


async def run_workflows_async(workflow: Any, inputs: Iterable[dict[str, Any] | None]) -> list[Any]:
    """The async twin of :func:`run_workflows`."""
    ctx, frame = _body("run_workflows_async")
    waits = [_ChildWait(ctx, frame, workflow, data) for data in list(inputs)]
    results, pending = _settle_all(waits)
    if pending:
        await _suspend_when_idle(ctx, pending, "child")
    return _outcome(results)
