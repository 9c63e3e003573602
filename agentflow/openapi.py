"""OpenAPI (drf-spectacular) for agentflow's views: each registered workflow's input as a request body, and
the per-run stream token as a security scheme.

Workflows are registered at run time, so their schemas are read when the schema is generated, never at import.
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ComponentIdentity, ResolvedComponent
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.utils import OpenApiParameter

from .core.workflow import Workflow, registry


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


class WorkflowInputSchema(AutoSchema):  # type: ignore[misc]
    """Schema of the views that start a run: the body is one of the workflows' inputs, ``name`` one of
    their names. Each input is a component (``<Name>Input``) whose title is the workflow's name."""

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
