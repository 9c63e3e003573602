"""Workflows: plain functions composed of components, registered by name, with typed input and output.

The input of a run is a JSON object whose keys are the workflow function's parameters; its schema, and the
output's, come from the type hints through pydantic.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .context import RunContext, _frame, _run
from .errors import InvalidInput, SerializationError, WorkflowAlreadyRegistered, WorkflowNotFound
from .schedules import Schedule, parse_schedules
from .serialization import adapter_for, check_storable, to_jsonable, unstorable
from .usage import Budget

P = ParamSpec("P")
R = TypeVar("R")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors as stable, JSON-able field errors: ``[{"field": "a.b", "code", "message"}]``."""
    return [
        {"field": ".".join(str(part) for part in err["loc"]), "code": err["type"], "message": err["msg"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


class Workflow(Generic[P, R]):
    """A function wrapped by :func:`workflow`. Calling it runs the function directly (handy in tests)."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str,
        description: str,
        budget: Budget | dict[str, Any] | None = None,
        schedule: Schedule | list[Schedule] | None = None,
    ) -> None:
        if not _NAME_RE.match(name):
            raise TypeError(
                f"workflow name must be 1-100 lowercase letters, digits, '_', '.' or '-' "
                f"(it is part of URLs), not {name!r}"
            )
        self.fn = fn
        self.name = name
        self.description = description
        # The default spending limit of its runs (start(budget=...) overrides it).
        self.budget = Budget.parse(budget)
        # When runs start by themselves (agentflow.schedules); each named, by default after the workflow.
        self.schedules: tuple[Schedule, ...] = parse_schedules(schedule)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.input_model = self._build_input_model(fn)
        hints = get_type_hints(fn, include_extras=True)
        self.output_annotation: Any = hints.get("return", Any)

    def __repr__(self) -> str:
        return f"<Workflow {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @staticmethod
    def _build_input_model(fn: Callable[..., Any]) -> type[BaseModel]:
        # include_extras: Annotated[int, Field(le=3)] keeps its constraints (else they vanish from both the
        # validation and the published schema).
        hints = get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(
                    f"workflow {fn.__qualname__} takes *{param.name}: a workflow's input is a JSON object, so "
                    "every parameter needs a name"
                )
            if param.kind is param.POSITIONAL_ONLY:
                raise TypeError(
                    f"workflow {fn.__qualname__}: parameter {param.name!r} cannot be positional-only"
                )
            annotation = hints.get(param.name, Any)
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, default)
        model_name = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]", fn.__name__)) + "Input"
        return create_model(  # type: ignore[call-overload,no-any-return]
            model_name, __config__=ConfigDict(extra="forbid"), **fields
        )

    # -- input and output --------------------------------------------------------------------------------

    def validate_input(self, data: Any) -> dict[str, Any]:
        """``data`` checked and normalised to JSON; raises ``InvalidInput`` with field errors.

        Validation is strict, and in JSON's terms: ``data`` is first turned into JSON (datetimes, UUIDs,
        enums and models become what a client would send) and then validated as pydantic validates JSON in
        strict mode, so that it accepts exactly what the published JSON Schema describes: ``"5"`` or ``true``
        is not an ``int``, ``1`` is not a ``bool``, but ``"2024-01-01T00:00:00Z"`` is a ``datetime``. Values
        JSON or the database cannot hold (``\\u0000``, lone surrogates, infinities) are refused too.
        """
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InvalidInput(
                f"the input of workflow {self.name!r} must be a JSON object, not {type(data).__name__}",
                details=[{"field": "", "code": "object_type", "message": "Input should be an object"}],
            )
        self._check_storable(data)  # first: pydantic cannot even convert a key with a lone surrogate
        try:
            document = to_jsonable(data, what="the input")
        except SerializationError as exc:
            raise self._invalid([{"field": "", "code": "not_serializable", "message": exc.message}]) from None
        self._check_storable(document)  # what objects (models, dataclasses) became
        try:
            model = self.input_model.model_validate_json(json.dumps(document, allow_nan=False), strict=True)
        except ValidationError as exc:
            raise self._invalid(validation_details(exc)) from None
        validated = model.model_dump(mode="json")
        self._check_storable(validated)  # a validator of the workflow's own types may have made something new
        return validated

    def _check_storable(self, document: Any) -> None:
        problem = unstorable(document)
        if problem is not None:
            field, code, message = problem
            raise self._invalid([{"field": field, "code": code, "message": message}])

    def _invalid(self, details: list[dict[str, Any]]) -> InvalidInput:
        return InvalidInput(f"invalid input for workflow {self.name!r}", details=details)

    def bind(self, data: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the function, typed as its hints say, from stored (validated) input."""
        model = self.input_model.model_validate(data)
        return {name: getattr(model, name) for name in type(model).model_fields}

    def dump_output(self, value: Any) -> Any:
        """The run's output as JSON; ``SerializationError`` (the run fails) if it is not JSON, or holds what
        the database cannot store (naming the JSON path)."""
        what = f"the output of workflow {self.name!r}"
        document = to_jsonable(value, what=what)
        check_storable(document, what=what)
        return document

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        if self.output_annotation is Any:
            return {}
        return adapter_for(self.output_annotation).json_schema()

    # -- execution ---------------------------------------------------------------------------------------

    def execute(self, input: dict[str, Any], ctx: RunContext) -> Any:
        """Run the workflow body under ``ctx`` (replaying checkpointed steps) and return its JSON output."""
        kwargs = self.bind(input)
        run_token = _run.set(ctx)
        frame_token = _frame.set(ctx.root)
        try:
            fn: Callable[..., Any] = self.fn
            result = asyncio.run(self._main(fn, kwargs, ctx)) if self.is_async else fn(**kwargs)
        finally:
            _frame.reset(frame_token)
            _run.reset(run_token)
        return self.dump_output(result)

    @staticmethod
    async def _main(fn: Callable[..., Any], kwargs: dict[str, Any], ctx: RunContext) -> Any:
        try:
            return await fn(**kwargs)
        finally:
            # Resources bound to this event loop (the LLM layer's HTTP clients) close before it does.
            await ctx.aclose_resources()


class Registry:
    """Workflows by name. ``agentflow`` discovers ``workflows.py`` modules of installed apps into it."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._lock = threading.Lock()
        #: Where workflows were looked for, for the "not found" message: set by whoever discovers them
        #: (agentflow's AppConfig: the ``workflows`` modules of installed apps).
        self.discovery: Discovery | None = None

    def register(self, wf: Workflow[Any, Any]) -> None:
        with self._lock:
            existing = self._workflows.get(wf.name)
            if existing is not None and _qualified(existing.fn) != _qualified(wf.fn):
                raise WorkflowAlreadyRegistered(
                    f"two workflows are named {wf.name!r}: {_qualified(existing.fn)} and {_qualified(wf.fn)}"
                )
            self._workflows[wf.name] = wf

    def unregister(self, name: str) -> None:
        with self._lock:
            self._workflows.pop(name, None)

    def get(self, name: str) -> Workflow[Any, Any]:
        try:
            return self._workflows[name]
        except KeyError:
            raise self.not_found(name) from None

    def not_found(self, name: str) -> WorkflowNotFound:
        """The error for an unknown name: close names, and where workflows are discovered from."""
        names = sorted(self._workflows)
        wanted = str(name).strip().lower().replace("_", "-")
        close = [n for n in names if n == wanted] or difflib.get_close_matches(wanted, names, n=3, cutoff=0.6)
        message = f"no workflow is named {name!r}."
        if close:
            message += f" Did you mean {' or '.join(repr(n) for n in close)}?"
        elif names:
            listed = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
            message += f" Registered: {listed}."
        details: dict[str, Any] = {"workflow": name, "suggestions": close}
        if self.discovery is not None:
            message += f" {self.discovery.explain()}."
            details["discovered_from"] = list(self.discovery.modules)
        return WorkflowNotFound(message, details=details)

    def all(self) -> list[Workflow[Any, Any]]:
        return sorted(self._workflows.values(), key=lambda wf: wf.name)

    def __contains__(self, name: object) -> bool:
        return name in self._workflows


@dataclass(frozen=True)
class Discovery:
    """Where a registry's workflows were looked for: the modules imported, among how many places."""

    modules: tuple[str, ...]  # e.g. ("blog.workflows",)
    scanned: tuple[str, ...]  # e.g. the installed apps' names
    pattern: str = "<app>/workflows.py"

    def explain(self) -> str:
        found = ", ".join(self.modules) if self.modules else "none"
        return (
            f"Workflows are registered when their module is imported: agentflow imports {self.pattern} of "
            f"every installed app ({len(self.scanned)} scanned; found: {found}). A workflow defined "
            "elsewhere is registered only once something imports its module"
        )


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


registry = Registry()


@overload
def workflow(fn: Callable[P, R], /) -> Workflow[P, R]: ...


@overload
def workflow(
    *,
    name: str | None = None,
    description: str | None = None,
    budget: Budget | dict[str, Any] | None = None,
    schedule: Schedule | list[Schedule] | None = None,
) -> Callable[[Callable[P, R]], Workflow[P, R]]: ...


def workflow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    budget: Budget | dict[str, Any] | None = None,
    schedule: Schedule | list[Schedule] | None = None,
) -> Any:
    """Register ``fn`` as a workflow: ``@workflow`` or ``@workflow(name="blog-post", description=...)``.

    The name defaults to the function's name with ``_`` as ``-``; the description to its docstring.
    ``budget`` (``{"usd": 0.5, "tokens": 200_000}`` or a :class:`~agentflow.Budget`) stops each run once
    its usage reaches either limit. ``schedule`` (a :class:`~agentflow.Schedule` or a list of them) starts
    runs on a timetable through Celery beat (docs/topics/schedules.md).
    """

    def wrap(func: Callable[..., Any]) -> Workflow[Any, Any]:
        if isinstance(func, Workflow) or not callable(func):
            raise TypeError(f"@workflow needs a plain function, not {func!r}")
        wf: Workflow[Any, Any] = Workflow(
            func,
            name=name or func.__name__.replace("_", "-"),
            description=description if description is not None else inspect.cleandoc(func.__doc__ or ""),
            budget=budget,
            schedule=schedule,
        )
        registry.register(wf)
        return wf

    if fn is not None:
        return wrap(fn)
    return wrap
