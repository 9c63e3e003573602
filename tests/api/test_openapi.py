"""The OpenAPI schema (drf-spectacular): each registered workflow's input is a request body."""

from __future__ import annotations

from typing import Literal

import pytest
from django.core.management import call_command
from pydantic import BaseModel

from agentflow import registry, workflow
from agentflow.openapi import component_names, to_oas30

pytestmark = pytest.mark.django_db

START_PATHS = ["/api/workflows/{name}/runs/", "/api/workflows/{name}/run/"]


def schema(client) -> dict:
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


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
    refs = {f"#/components/schemas/{names[wf.name]}" for wf in registry.all()}
    for path in START_PATHS:
        operation = doc["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert {option["$ref"] for option in body["oneOf"]} == refs
        (name,) = [p for p in operation["parameters"] if p["name"] == "name"]
        assert name["schema"]["enum"] == [wf.name for wf in registry.all()]
    assert components["ApiEchoInput"]["properties"]["times"] == {
        "default": 1,
        "title": "Times",
        "type": "integer",
    }


def test_the_api_is_documented(anonymous):
    doc = schema(anonymous)
    paths = doc["paths"]
    assert {
        "/api/workflows/",
        "/api/workflows/{name}/",
        *START_PATHS,
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
