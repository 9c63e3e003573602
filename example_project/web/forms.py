"""A Django form generated from a JSON Schema: a workflow's input (what ``Workflow.input_schema()`` and
``GET /api/workflows/<name>/`` publish) or the answer to a run's request for input (``input.requested``'s
``schema``): a text box per string, a number box per integer or number, a checkbox per boolean, a select per
enum, a text area with one line per item for a list of strings, and a JSON text area for anything else
(objects, other lists, unions).

The workflow validates the input again when the run starts (``agentflow.start``); its field errors are put
back on the form (``add_input_errors``). Each widget says which JSON its value is (``data-kind``), so the run
page's script (static/web/run.js) builds an answer from the form and posts it with agentflow.js.
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


class LinesField(forms.CharField):
    """A list of strings, one per line; blank lines are dropped."""

    widget = forms.Textarea(attrs={"rows": 4})

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(str(item) for item in value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value)
        return [line.strip() for line in str(text).splitlines() if line.strip()]


def field_for(schema: dict[str, Any], required: bool, defs: dict[str, Any]) -> forms.Field:
    """The form field for one property's schema, its widget marked with the kind of JSON it gives."""
    field = _field(schema, required, defs)
    field.widget.attrs["data-kind"] = field.json_kind  # type: ignore[attr-defined]
    return field


def _field(schema: dict[str, Any], required: bool, defs: dict[str, Any]) -> forms.Field:
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
        return _kind(forms.TypedChoiceField(choices=choices, coerce=json.loads, **options), "enum")
    if kind == "string":
        field = forms.CharField(min_length=prop.get("minLength"), max_length=prop.get("maxLength"), **options)
        return _kind(field, "string")
    if kind == "integer":
        field = forms.IntegerField(min_value=prop.get("minimum"), max_value=prop.get("maximum"), **options)
        return _kind(field, "integer")
    if kind == "number":
        field = forms.FloatField(min_value=prop.get("minimum"), max_value=prop.get("maximum"), **options)
        return _kind(field, "number")
    if kind == "boolean":
        return _kind(forms.BooleanField(**{**options, "required": False}), "boolean")
    items = prop.get("items")
    if kind == "array" and isinstance(items, dict) and items.get("type") == "string" and "enum" not in items:
        options["help_text"] = (options["help_text"] + " (one per line)").strip()
        return _kind(LinesField(**options), "lines")
    if "initial" in options:
        options["initial"] = json.dumps(options["initial"])
    options["help_text"] = (options["help_text"] + " (JSON)").strip()
    return _kind(forms.JSONField(widget=forms.Textarea(attrs={"rows": 3}), **options), "json")


def _kind(field: forms.Field, kind: str) -> forms.Field:
    field.json_kind = kind  # type: ignore[attr-defined]
    return field


class WorkflowInputForm(forms.Form):
    def input(self) -> dict[str, Any]:
        """The run's input: the fields given (an empty optional field is left out, so its default applies)."""
        return {
            name: value
            for name, value in self.cleaned_data.items()
            if not (value in (None, "", []) and not self.fields[name].required)
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


def answer_form(schema: dict[str, Any]) -> tuple[type[WorkflowInputForm], bool]:
    """The form for the answer to a request for input, and whether the answer is its one field ``answer``
    rather than the object of its fields (a schema that is not an object's: ``bool``, a list, any JSON)."""
    if schema.get("type") == "object" or "properties" in schema:
        return schema_form(schema), False
    return schema_form({"type": "object", "required": ["answer"], "properties": {"answer": schema}}), True
