"""One test per system check of how a project wires agentflow in (agentflow.setup_checks), and the clear answer
where a mistake cannot be checked (the browsable API without rest_framework)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from channels.generic.websocket import WebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings
from django.urls import path, reverse
from rest_framework.test import APIClient

from agentflow import setup_checks
from agentflow.conf import agentflow_settings

# ASGI applications for ASGI_APPLICATION to point at.
django_only = ASGIHandler()
other_websockets = ProtocolTypeRouter(
    {"http": django_only, "websocket": URLRouter([path("ws/chat/", WebsocketConsumer.as_asgi())])}
)


def ids(check: Callable[..., list[Any]]) -> list[str]:
    return [message.id for message in check()]


def test_the_test_project_is_wired_correctly() -> None:
    for check in (
        setup_checks.check_asgi,
        setup_checks.check_installed_apps,
        setup_checks.check_openapi,
        setup_checks.check_celery,
        setup_checks.check_cache_and_redis,
    ):
        assert check() == []


# -- ASGI ------------------------------------------------------------------------------------------------------


def test_e030_the_asgi_application_cannot_be_imported() -> None:
    with override_settings(ASGI_APPLICATION="tests.no_such_module.application"):
        (message,) = setup_checks.check_asgi()
    assert message.id == "agentflow.E030"
    assert "'tests.no_such_module.application' cannot be imported: ModuleNotFoundError" in message.msg


def test_w003_the_asgi_application_routes_no_websockets() -> None:
    with override_settings(ASGI_APPLICATION="tests.test_setup_checks.django_only"):
        (message,) = setup_checks.check_asgi()
    assert message.id == "agentflow.W003"
    assert (
        "routes no websockets" in message.msg
        and "Django can only handle ASGI/HTTP connections" in message.msg
    )
    assert "agentflow.routing.websocket_urlpatterns" in message.hint


def test_w004_websockets_routed_elsewhere_than_agentflow() -> None:
    with override_settings(ASGI_APPLICATION="tests.test_setup_checks.other_websockets"):
        assert ids(setup_checks.check_asgi) == ["agentflow.W004"]


def test_without_asgi_application_the_asgi_module_beside_wsgi_is_checked() -> None:
    with override_settings(ASGI_APPLICATION=None, WSGI_APPLICATION="tests.testapp.wsgi.application"):
        assert setup_checks._asgi_path() is None  # no tests/testapp/asgi.py
    with override_settings(ASGI_APPLICATION=None, WSGI_APPLICATION="tests.wsgi.application"):
        assert setup_checks._asgi_path() == "tests.asgi.application"


# -- installed apps --------------------------------------------------------------------------------------------


def test_e031_the_rest_api_without_rest_framework_installed() -> None:
    apps = [app for app in settings.INSTALLED_APPS if not app.startswith("rest_framework")]
    with override_settings(INSTALLED_APPS=apps):
        assert "agentflow.E031" in ids(setup_checks.check_installed_apps)


@pytest.mark.django_db
def test_without_rest_framework_installed_the_api_answers_json_not_a_template_error() -> None:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("alice")
    client = APIClient()
    client.force_authenticate(user)
    apps = [app for app in settings.INSTALLED_APPS if not app.startswith("rest_framework")]
    with override_settings(INSTALLED_APPS=apps):
        # What a browser asks for: DRF would pick its browsable API, whose templates are not installed.
        response = client.get(reverse("agentflow:workflow-list"), HTTP_ACCEPT="text/html,*/*;q=0.8")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"


def test_e032_token_authentication_without_the_authtoken_app() -> None:
    apps = [app for app in settings.INSTALLED_APPS if app != "rest_framework.authtoken"]
    with override_settings(INSTALLED_APPS=apps):
        assert ids(setup_checks.check_installed_apps) == ["agentflow.E032"]


def test_w013_drf_spectacular_without_agentflows_openapi_hook() -> None:
    for hooks in (None, ["drf_spectacular.hooks.postprocess_schema_enums"]):
        spectacular = {"TITLE": "x"} if hooks is None else {"POSTPROCESSING_HOOKS": hooks}
        with override_settings(SPECTACULAR_SETTINGS=spectacular):
            (message,) = setup_checks.check_openapi()
        assert message.id == "agentflow.W013"
        assert "does not include 'agentflow.openapi.split_start_operations'" in message.msg
    from agentflow.openapi import split_start_operations

    with override_settings(SPECTACULAR_SETTINGS={"POSTPROCESSING_HOOKS": [split_start_operations]}):
        assert setup_checks.check_openapi() == []  # the hook itself, not its path, counts too
    apps = [app for app in settings.INSTALLED_APPS if app != "drf_spectacular"]
    with override_settings(INSTALLED_APPS=apps, SPECTACULAR_SETTINGS={}):
        assert setup_checks.check_openapi() == []  # no drf-spectacular, no schema to get wrong


# -- Celery ----------------------------------------------------------------------------------------------------


@pytest.fixture
def celery_app(monkeypatch: pytest.MonkeyPatch) -> Celery:
    """A Celery app configured as the tests' is, standing in for the project's in the checks."""
    app = Celery("checked", set_as_current=False)
    app.conf.update(
        broker_url="redis://127.0.0.1:6379/15", accept_content=["json"], worker_prefetch_multiplier=1
    )
    monkeypatch.setattr(setup_checks, "project_celery_app", lambda: app)
    assert setup_checks.check_celery() == []
    return app


def test_e033_the_celery_app_accepts_pickle(celery_app: Celery) -> None:
    celery_app.conf.accept_content = ["json", "application/x-python-serialize"]
    (message,) = setup_checks.check_celery()
    assert message.id == "agentflow.E033" and "['x-python-serialize']" in message.msg


def test_e034_a_visibility_timeout_shorter_than_a_slice(celery_app: Celery) -> None:
    celery_app.conf.broker_transport_options = {"visibility_timeout": 300}
    (message,) = setup_checks.check_celery()
    assert message.id == "agentflow.E034"
    assert (
        "visibility timeout (300 s) is not longer than AGENTFLOW['SLICE_SECONDS'] + DRAIN_SECONDS"
        in message.msg
    )
    celery_app.conf.broker_url = "amqp://localhost"  # no visibility timeout there
    assert setup_checks.check_celery() == []


def test_w007_no_celery_app_in_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup_checks, "project_celery_app", lambda: None)
    (message,) = setup_checks.check_celery()
    assert message.id == "agentflow.W007" and "this process has no Celery app" in message.msg
    inline = {**agentflow_settings.user_settings, "EXECUTOR": "agentflow.executors.InProcessExecutor"}
    with override_settings(AGENTFLOW=inline):
        assert setup_checks.check_celery() == []  # no workers, no Celery needed


def test_the_tests_celery_app_is_the_one_found() -> None:
    app = setup_checks.project_celery_app()
    assert app is not None and app.main == "agentflow_tests"


def test_e035_queues_not_declared_and_not_created(celery_app: Celery) -> None:
    celery_app.conf.task_create_missing_queues = False
    (message,) = setup_checks.check_celery()
    assert message.id == "agentflow.E035" and "['agentflow', 'agentflow-monitor']" in message.msg


def test_w005_prefetching_workers(celery_app: Celery) -> None:
    celery_app.conf.worker_prefetch_multiplier = 4
    assert ids(setup_checks.check_celery) == ["agentflow.W005"]


def test_w006_eager_tasks(celery_app: Celery) -> None:
    celery_app.conf.task_always_eager = True
    assert ids(setup_checks.check_celery) == ["agentflow.W006"]


def test_w007_no_broker_url(celery_app: Celery) -> None:
    celery_app.conf.broker_url = None
    (message,) = setup_checks.check_celery()
    assert message.id == "agentflow.W007" and "the Celery app 'checked' has no broker_url" in message.msg


# -- caches and Redis ------------------------------------------------------------------------------------------


def test_w008_a_process_local_cache_with_workers() -> None:
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=caches):
        (message,) = setup_checks.check_cache_and_redis()
    assert message.id == "agentflow.W008" and "a LocMemCache" in message.msg


def test_w009_no_redis_url_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    without = {k: v for k, v in agentflow_settings.user_settings.items() if k != "REDIS_URL"}
    with override_settings(AGENTFLOW=without):
        assert ids(setup_checks.check_cache_and_redis) == ["agentflow.W009"]
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    with override_settings(AGENTFLOW=without):
        assert setup_checks.check_cache_and_redis() == []
