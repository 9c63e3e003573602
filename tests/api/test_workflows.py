"""GET workflows/ and workflows/{name}/."""

from __future__ import annotations

import pytest

from agentflow import registry
from tests.api.conftest import url

pytestmark = pytest.mark.django_db


def test_list_has_every_registered_workflow_with_schemas_and_urls(api):
    response = api.get(url("workflow-list"))
    assert response.status_code == 200
    body = response.json()
    assert [wf["name"] for wf in body] == [wf.name for wf in registry.all()]
    echo = next(wf for wf in body if wf["name"] == "api-echo")
    assert echo["description"] == "Repeat a text: one step."
    assert echo["input_schema"]["required"] == ["text"]
    assert set(echo["input_schema"]["properties"]) == {"text", "times", "labels"}
    assert echo["output_schema"] == {"additionalProperties": True, "type": "object"}
    assert echo["urls"] == {
        "self": "http://testserver/api/workflows/api-echo/",
        "start": "http://testserver/api/workflows/api-echo/runs/",
        "run": "http://testserver/api/workflows/api-echo/run/",
        "runs": "http://testserver/api/runs/?workflow=api-echo",
    }


def test_detail(api):
    response = api.get(url("workflow-detail", "api-gated"))
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "api-gated"
    assert body["description"].startswith("Prepare, then pass a gate")
    assert body["input_schema"] == registry.get("api-gated").input_schema()


def test_unknown_workflow_is_404(api):
    response = api.get(url("workflow-detail", "no-such-workflow"))
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "workflow_not_found"
    assert body["message"].startswith("no workflow is named 'no-such-workflow'. Registered: 'api-echo', ")
    assert body["details"]["workflow"] == "no-such-workflow" and body["details"]["suggestions"] == []


def test_an_unknown_workflow_says_where_workflows_come_from_and_suggests_close_names(api):
    response = api.get(url("workflow-detail", "api_echo"))  # underscores, as in the function's name
    assert response.status_code == 404
    body = response.json()
    assert body["message"].startswith("no workflow is named 'api_echo'. Did you mean 'api-echo'? ")
    assert (
        "Workflows are registered when their module is imported: agentflow imports <app>/workflows.py of "
        "every installed app (" in body["message"]
    )
    assert body["message"].endswith(
        "found: tests.testapp.workflows). A workflow defined elsewhere is registered only once something "
        "imports its module."
    )
    assert body["details"]["suggestions"] == ["api-echo"]
    assert body["details"]["discovered_from"] == ["tests.testapp.workflows"]
    assert "Did you mean 'api-gated'?" in api.get(url("workflow-detail", "api-gatd")).json()["message"]


@pytest.mark.parametrize("path", [url("workflow-list"), url("workflow-detail", "api-echo")])
def test_unauthenticated_is_401_with_the_token_scheme(anonymous, path):
    response = anonymous.get(path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Token"
    assert response.json() == {
        "code": "not_authenticated",
        "message": "Authentication credentials were not provided.",
        "details": None,
    }


def test_token_authentication(alice, anonymous):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=alice)
    anonymous.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert anonymous.get(url("workflow-list")).status_code == 200
    anonymous.credentials(HTTP_AUTHORIZATION="Token wrong")
    response = anonymous.get(url("workflow-list"))
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_session_authentication(alice, anonymous):
    anonymous.force_login(alice)
    assert anonymous.get(url("workflow-list")).status_code == 200


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_other_methods_are_405(api, method):
    response = getattr(api, method)(url("workflow-list"))
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"


def test_not_acceptable_is_406(api):
    response = api.get(url("workflow-list"), HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 406
    assert response.json()["code"] == "not_acceptable"
