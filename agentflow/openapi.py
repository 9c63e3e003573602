"""OpenAPI (drf-spectacular) for agentflow's views: each registered workflow's input as a request body, the
per-run stream token as a security scheme, server-sent events as events, and parameters with the bounds the
views enforce.

Workflows are registered at run time, so their schemas are read when the schema is generated, never at import;
so are the settings that bound parameters (``EVENTS_MAX_PAGE_SIZE``). One thing a single operation cannot say
is that the body of ``workflows/{name}/runs/`` is the input of the workflow ``name`` names:
:func:`split_start_operations`, a drf-spectacular postprocessing hook, gives each workflow its own operations.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ComponentIdentity, ResolvedComponent
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.utils import OpenApiParameter

from .conf import agentflow_settings
from .core.usage import MAX_BUDGET_TOKENS
from .core.workflow import Workflow, registry

#: ``Idempotency-Key``: 1 to 255 printable ASCII characters; servers strip spaces around a header's value.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[!-~](?:[ -~]{0,253}[!-~])?$")


def _uint64_pattern() -> str:
    """A regular expression (ASCII digits only: ``\\d`` is any script's digit in Python) for a decimal
    number below 2**64, leading zeros allowed: what one half of a Redis stream id may be."""
    top = str(2**64 - 1)
    longest = [top]
    for i, digit in enumerate(top[1:], start=1):  # 20 digits: below the top at position i, any digits after
        if digit != "0":
            below = "0" if digit == "1" else f"[0-{int(digit) - 1}]"
            rest = len(top) - i - 1
            longest.append(top[:i] + below + (f"[0-9]{{{rest}}}" if rest else ""))
    return f"0*(?:[0-9]{{1,19}}|{'|'.join(longest)})"


#: An event id (``1732390000000-0``) as the views accept it (``streams.split_id``: at most 64 characters, each
#: part below 2**64, not the largest id there is), or nothing (the same as leaving it out).
EVENT_ID_PATTERN = (
    f"^(?:(?!0*{2**64 - 1}-0*{2**64 - 1}$)(?=.{{3,64}}$){_uint64_pattern()}-{_uint64_pattern()})?$"
)


class StreamTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[misc]
    """The stream token, in the query string (for ``EventSource``) or, better, in a header: either one."""

    target_class = "agentflow.authentication.StreamTokenAuthentication"
    name = ["agentflowStreamToken", "agentflowStreamTokenHeader"]

    def get_security_requirement(self, auto_schema: AutoSchema) -> list[dict[str, list[Any]]]:
        return [{name: []} for name in self.name]  # alternatives, not both

    def get_security_definition(self, auto_schema: AutoSchema) -> list[dict[str, Any]]:
        return [
            {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": "A run's `stream_token`: reads that run's events, nothing else. Lands in "
                "access logs: prefer the `Authorization: Stream <token>` header where the client can set it.",
            },
            {
                "type": "http",
                "scheme": "Stream",
                "description": "`Authorization: Stream <token>`: a run's `stream_token`, as a header.",
            },
        ]


class NamedChoiceFieldScheme(OpenApiSerializerFieldExtension):  # type: ignore[misc]
    """A ``NamedChoiceField``'s choices as one named enum component (``RunStatus``, ``StepStatus``), so that
    drf-spectacular does not have to name (and warn about) several choice sets of fields called ``status``."""

    target_class = "agentflow.serializers.NamedChoiceField"

    def map_serializer_field(self, auto_schema: AutoSchema, direction: str) -> dict[str, Any]:
        field = self.target
        component = ResolvedComponent(
            name=field.enum_name,
            type=ResolvedComponent.SCHEMA,
            schema={"type": "string", "enum": list(field.choices)},
            object=ComponentIdentity(("agentflow-enum", field.enum_name)),
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref  # type: ignore[no-any-return]


def component_names(workflows: list[Workflow[Any, Any]]) -> dict[str, str]:
    """Schema component name of each workflow's input: ``blog-post`` is ``BlogPostInput``."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for wf in workflows:
        base = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", wf.name) if part) + "Input"
        name, n = base, 1
        while name in taken:  # "a-b" and "a_b" would collide
            n += 1
            name = f"{base}{n}"
        taken.add(name)
        names[wf.name] = name
    return names


def to_oas30(schema: Any) -> Any:
    """pydantic's JSON Schema (draft 2020-12) in the dialect of OpenAPI 3.0: ``nullable`` instead of a
    ``null`` type, ``enum`` instead of ``const``, one ``example`` instead of ``examples``."""
    if isinstance(schema, list):
        return [to_oas30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: to_oas30(value) for key, value in schema.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [option for option in options if option != {"type": "null"}]
            del out[key]
            if len(rest) == 1 and "$ref" not in rest[0]:
                out = {**rest[0], **out}
            elif rest:
                out[key] = rest
            out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list):
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    return out


#: Marks the operations :func:`split_start_operations` splits (removed from the schema by it).
START_MARKER = "x-agentflow-start"


class WorkflowInputSchema(AutoSchema):  # type: ignore[misc]
    """Schema of the views that start a run: the body is one of the workflows' inputs, ``name`` one of
    their names. Each input is a component (``<Name>Input``) whose title is the workflow's name."""

    def get_operation(self, *args: Any, **kwargs: Any) -> Any:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None and registry.all():
            operation[START_MARKER] = True
        return operation

    def get_request_serializer(self) -> Any:
        workflows = registry.all()
        if not workflows:
            return {"application/json": {"type": "object", "additionalProperties": {}}}
        names = component_names(workflows)
        refs = [self._register_input(wf, names[wf.name]) for wf in workflows]
        # A dict maps media types to schemas for drf-spectacular.
        return {
            "application/json": {
                "oneOf": refs,
                "description": "The input of the workflow named in the path: a JSON object.",
            }
        }

    def get_override_parameters(self) -> list[Any]:
        return [
            *super().get_override_parameters(),
            OpenApiParameter(
                "name",
                str,
                OpenApiParameter.PATH,
                enum=[wf.name for wf in registry.all()] or None,
                description="The workflow's name.",
            ),
        ]

    def _register_input(self, wf: Workflow[Any, Any], name: str) -> dict[str, str]:
        oas30 = spectacular_settings.OAS_VERSION.startswith("3.0")
        schema = wf.input_model.model_json_schema(ref_template=f"#/components/schemas/{name}.{{model}}")
        for model, definition in schema.pop("$defs", {}).items():
            self._register(f"{name}.{model}", (wf.name, model), to_oas30(definition) if oas30 else definition)
        schema["title"] = wf.name
        schema["description"] = f"Input of workflow `{wf.name}`." + (
            f" {wf.description}" if wf.description else ""
        )
        return self._register(name, (wf.name, None), to_oas30(schema) if oas30 else schema)

    def _register(self, name: str, identity: Any, schema: dict[str, Any]) -> dict[str, str]:
        component = ResolvedComponent(
            name=name, type=ResolvedComponent.SCHEMA, schema=schema, object=ComponentIdentity(identity)
        )
        self.registry.register_on_missing(component)
        return component.ref  # type: ignore[no-any-return]


def exclusive_minimum(value: float) -> dict[str, Any]:
    """``> value`` in the schema's dialect: a flag in OpenAPI 3.0, a number in 3.1."""
    if spectacular_settings.OAS_VERSION.startswith("3.0"):
        return {"minimum": value, "exclusiveMinimum": True}
    return {"exclusiveMinimum": value}


class RunEventsSchema(AutoSchema):  # type: ignore[misc]
    """The parameters of a run's ``events/``, bounded as the view bounds them (settings read now)."""

    def get_override_parameters(self) -> list[Any]:
        event_id = {"type": "string", "pattern": EVENT_ID_PATTERN}
        return [
            *super().get_override_parameters(),
            OpenApiParameter(
                "after",
                event_id,
                description="Only events after this event id (e.g. 1732390000000-0); empty: from the start.",
            ),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": agentflow_settings.events_max_page_size},
                description=f"Events per page (JSON only); default {agentflow_settings.events_page_size}.",
            ),
            OpenApiParameter(
                "keepalive",
                {"type": "string", "enum": ["0", "1"]},
                description="Event stream only: `1` sends the keep-alives as `event: keepalive` frames "
                '(`{"type": "keepalive", "interval_seconds": s}`, no id), one at once, instead of comments, so '
                "a browser's EventSource sees them.",
            ),
            OpenApiParameter(
                "Last-Event-ID",
                event_id,
                OpenApiParameter.HEADER,
                description="Event stream only: resume after this id (wins over `after`).",
            ),
        ]


class WorkflowRunSchema(WorkflowInputSchema):
    """The synchronous start: a workflow's input, and how long to wait for the run."""

    def get_override_parameters(self) -> list[Any]:
        return [
            *super().get_override_parameters(),
            OpenApiParameter(
                "timeout",
                {"type": "number", **exclusive_minimum(0)},
                description="Seconds to wait for the run to finish (JSON only); longer than "
                f"WAIT_TIMEOUT_SECONDS ({agentflow_settings.wait_timeout_seconds:g}, the default) is that.",
            ),
        ]


def split_start_operations(result: dict[str, Any], generator: Any, **kwargs: Any) -> dict[str, Any]:
    """A drf-spectacular postprocessing hook: ``POST workflows/{name}/runs/`` and ``.../run/``, whose body is
    the input of the workflow the path names, become one operation per workflow, each with its own body:

        SPECTACULAR_SETTINGS = {"POSTPROCESSING_HOOKS": [
            "drf_spectacular.hooks.postprocess_schema_enums", "agentflow.openapi.split_start_operations"]}

    A single operation can only say that the body is one of all the inputs, whatever ``name`` is.
    """
    workflows = registry.all()
    names = component_names(workflows)
    paths: dict[str, Any] = {}
    for path, item in result.get("paths", {}).items():
        if START_MARKER not in item.get("post", {}):
            paths[path] = item
            continue
        for wf in workflows:
            operation = copy.deepcopy(item["post"])
            del operation[START_MARKER]
            operation["operationId"] += "_" + re.sub(r"[^A-Za-z0-9]+", "_", wf.name)
            operation["parameters"] = [p for p in operation.get("parameters", []) if p["name"] != "name"]
            body = operation["requestBody"]["content"]["application/json"]
            body["schema"] = {"$ref": f"#/components/schemas/{names[wf.name]}"}
            # No body is an empty input: allowed unless the input has required fields.
            operation["requestBody"]["required"] = bool(wf.input_schema().get("required"))
            paths[path.replace("{name}", wf.name)] = {**item, "post": operation}
    result["paths"] = paths
    return result


class RunResumeSchema(AutoSchema):  # type: ignore[misc]
    """The body of a resume, as ``views._resume_options`` and ``Budget.parse`` take it: nothing, ``{}``, or
    ``{"budget": null}`` or a budget with at least one limit, each finite and above zero."""

    def get_request_serializer(self) -> Any:
        oas30 = spectacular_settings.OAS_VERSION.startswith("3.0")

        def nullable(schema: dict[str, Any]) -> dict[str, Any]:
            if oas30:
                return {**schema, "nullable": True}
            return {**schema, "type": [schema["type"], "null"]}

        usd = {"type": "number", **exclusive_minimum(0), "description": "Limit in USD (null: none)."}
        tokens = {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_BUDGET_TOKENS,
            "description": "Limit in tokens (null: none).",
        }
        budget = {
            "type": "object",
            "properties": {"usd": nullable(usd), "tokens": nullable(tokens)},
            "additionalProperties": False,
            # At least one limit that is not null.
            "anyOf": [
                {"required": ["usd"], "properties": {"usd": {"type": "number"}}},
                {"required": ["tokens"], "properties": {"tokens": {"type": "integer"}}},
            ],
            "description": "Replaces the run's budget (null: no limit); omitted: the run keeps its own.",
        }
        component = ResolvedComponent(
            name="ResumeRequest",
            type=ResolvedComponent.SCHEMA,
            schema={
                "type": "object",
                "properties": {
                    "budget": nullable(budget) if oas30 else {"anyOf": [budget, {"type": "null"}]}
                },
                "additionalProperties": False,
            },
            object=ComponentIdentity("agentflow-resume-request"),
        )
        self.registry.register_on_missing(component)
        return {"application/json": component.ref}
