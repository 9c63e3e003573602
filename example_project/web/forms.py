"""A Django form for a workflow's input, generated from its JSON Schema (what ``Workflow.input_schema()`` and
``GET /api/workflows/<name>/`` publish): a text box per string, a number box per integer or number, a
checkbox per boolean, a select per enum, and a JSON text area for anything else (objects, lists, unions).

The workflow validates the input again when the run starts (``agentflow.start``); its field errors are put
back on the form (``add_input_errors``).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms


def _unwrap(schema: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The schema without a ``null`` alternative (``Optional[X]``), and whether null was allowed."""
    if "$ref" in schema:
        schema = {
            **defs.get(schema["$ref"].rsplit("/", 1)[-1], {}),
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    options = schema.get("anyOf")
    if isinstance(options, list):
        kinds = [option for option in options if option.get("type") != "null"]
        if len(kinds) == 1 and len(options) == 2:
            inner = {**kinds[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
            return _unwrap(inner, defs)[0], True
    return schema, False


def field_for(schema: dict[str, Any], required: bool, defs: dict[str, Any]) -> forms.Field:
    prop, nullable = _unwrap(schema, defs)
    options: dict[str, Any] = {
        "label": prop.get("title"),
        "help_text": prop.get("description", ""),
        "required": required and not nullable,
    }
    if "default" in prop:
        options["initial"] = prop["default"]
    kind = prop.get("type")
    if "enum" in prop:
        choices = [(json.dumps(value), str(value)) for value in prop["enum"]]
        if "initial" in options:
            options["initial"] = json.dumps(options["initial"])
        return forms.TypedChoiceField(choices=choices, coerce=json.loads, **options)
    if kind == "string":
        return forms.CharField(min_length=prop.get("minLength"), max_length=prop.get("maxLength"), **options)
    if kind == "integer":
        return forms.IntegerField(min_value=prop.get("minimum"), max_value=prop.get("maximum"), **options)
    if kind == "number":
        return forms.FloatField(min_value=prop.get("minimum"), max_value=prop.get("maximum"), **options)
    if kind == "boolean":
        return forms.BooleanField(**{**options, "required": False})
    if "initial" in options:
        options["initial"] = json.dumps(options["initial"])
    options["help_text"] = (options["help_text"] + " (JSON)").strip()
    return forms.JSONField(widget=forms.Textarea(attrs={"rows": 3}), **options)


class WorkflowInputForm(forms.Form):
    def input(self) -> dict[str, Any]:
        """The run's input: the fields given (an empty optional field is left out, so its default applies)."""
        return {
            name: value
            for name, value in self.cleaned_data.items()
            if not (value in (None, "") and not self.fields[name].required)
        }

    def add_input_errors(self, details: Any, message: str) -> None:
        """Put the workflow's own validation errors (``InvalidInput.details``) on the fields they name."""
        placed = False
        for item in details if isinstance(details, list) else []:
            field = str(item.get("field") or "").split(".")[0]
            if field in self.fields:
                self.add_error(field, item.get("message") or message)
                placed = True
        if not placed:
            self.add_error(None, message)


def schema_form(schema: dict[str, Any]) -> type[WorkflowInputForm]:
    """A form class with one field per property of an object schema, in the schema's order."""
    required = set(schema.get("required") or ())
    defs = schema.get("$defs") or {}
    fields = {
        name: field_for(prop, name in required, defs)
        for name, prop in (schema.get("properties") or {}).items()
    }
    return type("WorkflowInputForm", (WorkflowInputForm,), fields)
