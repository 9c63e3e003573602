"""The OpenAPI schema (drf-spectacular): each registered workflow's input is a request body."""

from __future__ import annotations

import re
from typing import Literal

import pytest
from django.core.management import call_command
from django.test import override_settings
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.settings import patched_settings
from pydantic import BaseModel

from agentflow import registry, workflow
from agentflow.conf import agentflow_settings
from agentflow.exceptions import InvalidEventId
from agentflow.openapi import component_names, to_oas30
from agentflow.views import event_id_param
from tests.api.conftest import start_url

pytestmark = pytest.mark.django_db

START_PATHS = ["/api/workflows/{name}/runs/", "/api/workflows/{name}/run/"]


def schema(client) -> dict:
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def generated(hooks: list[str]) -> dict:
    """The schema, generated with these postprocessing hooks (the test settings have the split)."""
    with patched_settings({"POSTPROCESSING_HOOKS": hooks}):
        return SchemaGenerator().get_schema(request=None, public=True)


def test_every_registered_workflow_has_its_input_schema(anonymous):
    doc = schema(anonymous)
    components = doc["components"]["schemas"]
    names = component_names(registry.all())
    for wf in registry.all():
        component = components[names[wf.name]]
        expected = wf.input_schema()
        assert component["title"] == wf.name
        assert component["type"] == "object" and component["additionalProperties"] is False
        assert set(component["properties"]) == set(expected["properties"])
        assert component.get("required", []) == expected.get("required", [])
    assert components["ApiEchoInput"]["properties"]["times"] == {
        "default": 1,
        "title": "Times",
        "type": "integer",
    }


def test_each_workflow_has_start_operations_with_its_own_body(anonymous):
    # One operation for all workflows could only say the body is one of all the inputs, whatever the name.
    paths = schema(anonymous)["paths"]
    names = component_names(registry.all())
    assert not set(START_PATHS) & set(paths)
    for wf in registry.all():
        for path in START_PATHS:
            operation = paths[path.replace("{name}", wf.name)]["post"]
            body = operation["requestBody"]
            assert body["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{names[wf.name]}"
            }
            # No body is an empty input, which is enough unless the workflow has required parameters.
            assert body["required"] is bool(wf.input_schema().get("required"))
            assert "name" not in {p["name"] for p in operation["parameters"]}
            assert "x-agentflow-start" not in operation
    operation_ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_without_the_hook_one_operation_takes_any_input():
    doc = generated(["drf_spectacular.hooks.postprocess_schema_enums"])
    names = component_names(registry.all())
    refs = {f"#/components/schemas/{names[wf.name]}" for wf in registry.all()}
    for path in START_PATHS:
        operation = doc["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert {option["$ref"] for option in body["oneOf"]} == refs
        (name,) = [p for p in operation["parameters"] if p["name"] == "name"]
        assert name["schema"]["enum"] == [wf.name for wf in registry.all()]


def test_the_api_is_documented(anonymous):
    doc = schema(anonymous)
    paths = doc["paths"]
    assert {
        "/api/workflows/",
        "/api/workflows/{name}/",
        "/api/workflows/api-echo/runs/",
        "/api/workflows/api-echo/run/",
        "/api/runs/",
        "/api/runs/{run_id}/",
        "/api/runs/{run_id}/events/",
        "/api/runs/{run_id}/cancel/",
        "/api/runs/{run_id}/resume/",
    } <= set(paths)
    assert paths["/api/runs/"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PaginatedRunList"
    }
    events = paths["/api/runs/{run_id}/events/"]["get"]
    assert {"agentflowStreamToken": []} in events["security"]
    assert set(events["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    # Only the events endpoint takes the stream token.
    assert {"agentflowStreamToken": []} not in paths["/api/runs/{run_id}/"]["get"]["security"]
    assert doc["components"]["schemas"]["RunStatus"]["enum"] == [
        "queued", "running", "waiting", "completed", "failed", "cancelled",
    ]  # fmt: skip


def test_the_schema_generates_without_warnings_and_validates(tmp_path):
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(tmp_path / "schema.yaml"))
    assert "ApiEchoInput" in (tmp_path / "schema.yaml").read_text()


def test_swagger_ui(anonymous):
    response = anonymous.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


class Address(BaseModel):
    city: str
    zip: str | None = None


@pytest.fixture
def rich_workflow():
    @workflow(name="api-test.rich_input")
    def rich(address: Address, mode: Literal["fast", "slow"] = "fast", limit: int | None = None) -> str:
        return ""

    yield rich
    registry.unregister("api-test.rich_input")


def test_nested_models_and_openapi_3_0_types(anonymous, rich_workflow, tmp_path):
    components = schema(anonymous)["components"]["schemas"]
    rich = components["ApiTestRichInputInput"]
    assert rich["properties"]["address"] == {"$ref": "#/components/schemas/ApiTestRichInputInput.Address"}
    # drf-spectacular names enums as components of their own.
    assert rich["properties"]["mode"]["allOf"] == [{"$ref": "#/components/schemas/ModeEnum"}]
    assert components["ModeEnum"] == {"enum": ["fast", "slow"], "type": "string"}
    assert rich["properties"]["limit"] == {
        "default": None,
        "title": "Limit",
        "type": "integer",
        "nullable": True,
    }
    address = components["ApiTestRichInputInput.Address"]
    assert address["properties"]["zip"]["nullable"] is True and address["required"] == ["city"]
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(tmp_path / "schema.yaml"))


def test_component_names_never_collide():
    class WF:
        def __init__(self, name):
            self.name = name

    assert component_names([WF("a-b"), WF("a_b"), WF("blog-post")]) == {  # type: ignore[list-item]
        "a-b": "ABInput",
        "a_b": "ABInput2",
        "blog-post": "BlogPostInput",
    }


def test_to_oas30():
    assert to_oas30({"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}) == {
        "type": "string",
        "default": None,
        "nullable": True,
    }
    assert to_oas30({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}) == {
        "anyOf": [{"type": "string"}, {"type": "integer"}],
        "nullable": True,
    }
    assert to_oas30({"const": "x", "examples": [1, 2]}) == {"enum": ["x"], "example": 1}
    # A nullable reference cannot carry siblings in 3.0 without allOf: kept as anyOf.
    assert to_oas30({"anyOf": [{"$ref": "#/x"}, {"type": "null"}]}) == {
        "anyOf": [{"$ref": "#/x"}],
        "nullable": True,
    }


# -- the schema says what the views do (issue 10) ---------------------------------------------------------------


def parameter(operation: dict, name: str) -> dict:
    (found,) = [p for p in operation["parameters"] if p["name"] == name]
    return found


def test_a_runs_error_is_nullable(anonymous):
    components = schema(anonymous)["components"]["schemas"]
    for name in ("Run", "RunDetail"):
        assert components[name]["properties"]["error"]["nullable"] is True


def test_parameters_have_the_bounds_the_views_enforce(anonymous):
    paths = schema(anonymous)["paths"]
    events = paths["/api/runs/{run_id}/events/"]["get"]
    assert parameter(events, "limit")["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "EVENTS_MAX_PAGE_SIZE": 50}):
        events = schema(anonymous)["paths"]["/api/runs/{run_id}/events/"]["get"]
    assert parameter(events, "limit")["schema"]["maximum"] == 50  # read when the schema is generated
    run = paths["/api/workflows/api-echo/run/"]["post"]
    assert parameter(run, "timeout")["schema"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    status = parameter(paths["/api/runs/"]["get"], "status")
    assert (status["style"], status["explode"], status["schema"]["minItems"]) == ("form", False, 1)
    assert status["schema"]["items"]["enum"] == [
        "queued",
        "running",
        "waiting",
        "completed",
        "failed",
        "cancelled",
    ]


def test_the_resume_body_has_the_budgets_bounds(anonymous):
    body = schema(anonymous)["components"]["schemas"]["ResumeRequest"]
    assert body["additionalProperties"] is False
    budget = body["properties"]["budget"]
    assert budget["nullable"] is True and budget["additionalProperties"] is False
    assert budget["properties"]["usd"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "nullable": True,
        "description": "Limit in USD (null: none).",
    }
    tokens = budget["properties"]["tokens"]
    assert (tokens["minimum"], tokens["maximum"]) == (1, 2**63 - 1)
    # At least one limit that is not null: {} and {"usd": null, "tokens": null} are 400.
    assert [option["required"] for option in budget["anyOf"]] == [["usd"], ["tokens"]]


def test_event_streams_are_declared_as_events(anonymous):
    paths = schema(anonymous)["paths"]
    components = schema(anonymous)["components"]["schemas"]
    for path, method in [("/api/runs/{run_id}/events/", "get"), ("/api/workflows/api-echo/run/", "post")]:
        responses = paths[path][method]["responses"]
        assert responses["200"]["content"]["text/event-stream"]["schema"] == {
            "$ref": "#/components/schemas/ServerSentEvent"
        }
        # An error answers an event-stream request with one `error` event.
        for status in ("400", "401", "404"):
            assert responses[status]["content"] == {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}},
                "text/event-stream": {"schema": {"$ref": "#/components/schemas/ServerSentError"}},
            }
    assert components["ServerSentEvent"]["required"] == ["data", "event"]
    assert components["ServerSentError"]["properties"]["event"] == {
        "$ref": "#/components/schemas/ServerSentErrorType"
    }
    assert components["ServerSentErrorType"]["enum"] == ["error"]


@pytest.mark.parametrize(
    "key", ["k", "a b", "k" * 255, "~!", "", " k", "k ", "k" * 256, "caf\u00e9", "a\tb", "a\nb", "\x7f"]
)
def test_the_idempotency_key_pattern_is_what_the_view_accepts(anonymous, api, key):
    operation = schema(anonymous)["paths"]["/api/workflows/api-echo/runs/"]["post"]
    declared = parameter(operation, "Idempotency-Key")["schema"]
    matches = bool(re.search(declared["pattern"], key)) and 1 <= len(key) <= declared["maxLength"]
    response = api.post(start_url("api-echo"), {"text": "a"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert (response.status_code == 202) is matches, (key, response.content)


@pytest.mark.parametrize(
    "value",
    [
        "", "0-0", "1732390000000-0", "007-01", "18446744073709551615-18446744073709551615",
        "18446744073709551616-0", "0-18446744073709551616", "99999999999999999999-0", "1844674407370955161-9",
        "1-", "-1", "1", "1-2-3", "1.5-0", "\u0661-\u0660", " 1-0", "1-0 ", "+1-0", "0" * 62 + "1-0",
        "0" * 61 + "1-0", "00018446744073709551615-18446744073709551615", "18446744073709551615-18446744073709551614",
    ],
)  # fmt: skip
def test_the_event_id_pattern_is_what_the_view_accepts(anonymous, value):
    operation = schema(anonymous)["paths"]["/api/runs/{run_id}/events/"]["get"]
    pattern = parameter(operation, "after")["schema"]["pattern"]
    assert parameter(operation, "Last-Event-ID")["schema"]["pattern"] == pattern
    try:
        accepted = event_id_param(value, "after") is not None or value == ""
    except InvalidEventId:
        accepted = False
    assert bool(re.fullmatch(pattern, value)) is accepted
