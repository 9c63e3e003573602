"""The exception handler of agentflow's views: every error as {"code", "message", "details"}."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.test import override_settings
from rest_framework import exceptions

from agentflow import ConfigurationError, InvalidInput, RunNotFound, WorkflowNotFound
from agentflow.exceptions import exception_handler
from agentflow.resuming import RunNotResumable
from tests.api.conftest import url


def handle(exc):
    response = exception_handler(exc, {})
    return None if response is None else (response.status_code, response.data, dict(response.headers))


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (WorkflowNotFound("no"), 404, "workflow_not_found"),
        (RunNotFound("no"), 404, "run_not_found"),
        (InvalidInput("bad", details=[{"field": "a"}]), 400, "invalid_input"),
        (RunNotResumable("no"), 409, "not_resumable"),
        (exceptions.NotAuthenticated(), 401, "not_authenticated"),
        (exceptions.AuthenticationFailed(), 401, "authentication_failed"),
        (exceptions.PermissionDenied(), 403, "permission_denied"),
        (exceptions.NotFound(), 404, "not_found"),
        (exceptions.MethodNotAllowed("PUT"), 405, "method_not_allowed"),
        (exceptions.NotAcceptable(), 406, "not_acceptable"),
        (exceptions.UnsupportedMediaType("text/plain"), 415, "unsupported_media_type"),
        (exceptions.ParseError(), 400, "malformed_json"),
        (exceptions.Throttled(wait=3), 429, "throttled"),
        (exceptions.APIException(), 500, "server_error"),
        (Http404("gone"), 404, "not_found"),
        (PermissionDenied("no"), 403, "permission_denied"),
    ],
)
def test_statuses_and_codes(exc, status, code):
    got_status, body, _headers = handle(exc)
    assert (got_status, body["code"]) == (status, code)
    assert set(body) == {"code", "message", "details"} and isinstance(body["message"], str)


def test_agentflow_errors_keep_their_message_and_details():
    assert handle(InvalidInput("bad input", details=[{"field": "a"}]))[1] == {
        "code": "invalid_input",
        "message": "bad input",
        "details": [{"field": "a"}],
    }


def test_throttled_says_when_to_come_back():
    _, body, headers = handle(exceptions.Throttled(wait=2.5))
    assert headers["Retry-After"] == "3" and body["details"] == {"wait_seconds": 3}


def test_a_serializer_validation_error_lists_its_fields():
    status, body, _ = handle(exceptions.ValidationError({"name": ["This field is required."]}))
    assert status == 400
    assert body == {
        "code": "invalid",
        "message": "Invalid request.",
        "details": {"name": ["This field is required."]},
    }


def test_unexpected_errors_are_left_to_django():
    assert handle(ConfigurationError("misconfigured")) is None
    assert handle(ValueError("bug")) is None


@pytest.mark.django_db
def test_without_an_authentication_scheme_to_name_not_authenticated_is_403(anonymous):
    session_only = {"DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"]}
    with override_settings(REST_FRAMEWORK=session_only):
        response = anonymous.get(url("workflow-list"))
    assert response.status_code == 403
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.django_db
def test_the_projects_throttles_apply(api, alice):
    throttled = {
        "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
        "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
        "DEFAULT_THROTTLE_RATES": {"user": "1/minute"},
    }
    from django.core.cache import cache

    with override_settings(REST_FRAMEWORK=throttled):
        try:
            assert api.get(url("workflow-list")).status_code == 200
            response = api.get(url("workflow-list"))
        finally:
            cache.delete(f"throttle_user_{alice.pk}")
    assert response.status_code == 429
    assert response.json()["code"] == "throttled" and int(response.headers["Retry-After"]) > 0


def test_the_handler_is_agentflows_own():
    from rest_framework.settings import api_settings

    # The project's REST_FRAMEWORK is left alone: the handler is set on agentflow's views only.
    assert api_settings.EXCEPTION_HANDLER.__module__ == "rest_framework.views"
