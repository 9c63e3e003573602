"""System checks of how a project wires agentflow in: its ASGI application, installed apps, Celery app and
caches. (:mod:`agentflow.checks` validates the ``AGENTFLOW`` setting itself.) The ids are stable:
docs/reference/checks.md lists them.

These catch the mistakes of a first week that otherwise surface as generic errors far from their cause: an
ASGI application without agentflow's websocket route (an HTTP 500, "Django can only handle ASGI/HTTP
connections"), the REST API without ``rest_framework`` installed (a ``TemplateDoesNotExist``), a Celery app
that is missing or would redeliver runs still running.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .conf import agentflow_settings

# Transports whose unacknowledged messages come back after a visibility timeout (acks_late tasks).
_VISIBILITY_TRANSPORTS = ("redis", "rediss", "sqs", "sentinel")
_DEFAULT_VISIBILITY_SECONDS = 3600.0
_PROCESS_LOCAL_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


def project_celery_app() -> Any:
    """The Celery app this process created (the project's), or None when it created none.

    Celery falls back to an app named "default" with its own defaults (an AMQP broker on localhost) when a
    process created none: agentflow's tasks would then be sent where no worker listens.
    """
    from celery import _state

    app = _state._tls.current_app or _state.default_app
    if app is None or app.main == "default":
        return None
    return app


def _uses_workers() -> bool:
    from .health import uses_workers

    return uses_workers()


# -- ASGI ------------------------------------------------------------------------------------------------------


def _asgi_path() -> str | None:
    """ASGI_APPLICATION, or ``<project>.asgi.application`` beside WSGI_APPLICATION when that module exists."""
    path = getattr(settings, "ASGI_APPLICATION", None)
    if path:
        return str(path)
    wsgi = getattr(settings, "WSGI_APPLICATION", None)
    if not wsgi or "." not in str(wsgi):
        return None
    package = str(wsgi).rsplit(".", 2)[0]
    try:
        found = importlib.util.find_spec(f"{package}.asgi")
    except (ImportError, ValueError):
        return None
    return f"{package}.asgi.application" if found else None


def _children(app: Any) -> Iterator[Any]:
    """What an ASGI application wraps: middleware's inner application, a URLRouter's route callbacks..."""
    for name in ("inner", "application", "app"):
        inner = getattr(app, name, None)
        if inner is not None and inner is not app:
            yield inner
    for route in getattr(app, "routes", None) or ():
        callback = getattr(route, "callback", None)
        if callback is not None:
            yield callback
        yield from (getattr(route, "url_patterns", None) or ())


def _walk(app: Any, depth: int = 0) -> Iterator[Any]:
    yield app
    if depth < 12:
        for child in _children(app):
            yield from _walk(child, depth + 1)


def _websocket_app(app: Any) -> Any:
    """The application a ProtocolTypeRouter inside ``app`` gives websockets, or None."""
    for node in _walk(app):
        mapping = getattr(node, "application_mapping", None)
        if isinstance(mapping, dict) and "websocket" in mapping:
            return mapping["websocket"]
    return None


def _routes_agentflow(app: Any) -> bool:
    from .consumers import RunEventsConsumer

    for node in _walk(app):
        consumer = getattr(node, "consumer_class", None)
        if isinstance(consumer, type) and issubclass(consumer, RunEventsConsumer):
            return True
    return False


@register(Tags.compatibility)
def check_asgi(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    path = _asgi_path()
    if path is None:
        return []  # a WSGI-only project: its event streams answer "needs ASGI" (agentflow.sse)
    try:
        application = import_string(path)
    except Exception as exc:
        return [
            Error(
                f"The ASGI application {path!r} cannot be imported: {type(exc).__name__}: {exc}",
                hint="Fix ASGI_APPLICATION (or your project's asgi.py): agentflow's websockets and "
                "server-sent events are served by it.",
                id="agentflow.E030",
            )
        ]
    websocket = _websocket_app(application)
    hint = (
        'Serve websockets with channels: ProtocolTypeRouter({"http": get_asgi_application(), "websocket": '
        "AuthMiddlewareStack(URLRouter(agentflow.routing.websocket_urlpatterns))}); see docs/tutorial.md."
    )
    if websocket is None:
        return [
            Warning(
                f"The ASGI application {path!r} routes no websockets: a run's websocket (/ws/runs/<id>/) "
                "answers an HTTP 500 ('Django can only handle ASGI/HTTP connections').",
                hint=hint,
                id="agentflow.W003",
            )
        ]
    if not _routes_agentflow(websocket):
        return [
            Warning(
                f"The websockets of the ASGI application {path!r} are not routed to agentflow: a run's "
                "websocket (/ws/runs/<id>/) is not found.",
                hint="Add agentflow.routing.websocket_urlpatterns to its websocket URLRouter. " + hint,
                id="agentflow.W004",
            )
        ]
    return []


# -- installed apps --------------------------------------------------------------------------------------------


def _includes_agentflow_urls(patterns: Any, depth: int = 0) -> bool:
    for pattern in patterns or ():
        module = getattr(pattern, "urlconf_name", None)
        if module is not None:
            if getattr(module, "__name__", module) == "agentflow.urls":
                return True
            if depth < 8 and _includes_agentflow_urls(getattr(pattern, "url_patterns", ()), depth + 1):
                return True
    return False


def _api_mounted() -> bool:
    from django.urls import get_resolver

    try:
        return _includes_agentflow_urls(get_resolver().url_patterns)
    except Exception:  # a broken URLconf is reported by Django's own URL checks
        return False


@register(Tags.compatibility)
def check_installed_apps(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.apps import apps

    if not _api_mounted():
        return []
    errors: list[CheckMessage] = []
    if not apps.is_installed("rest_framework"):
        errors.append(
            Error(
                "agentflow's REST API (agentflow.urls) is mounted but 'rest_framework' is not in "
                "INSTALLED_APPS: its browsable pages fail with TemplateDoesNotExist.",
                hint="Add 'rest_framework' to INSTALLED_APPS.",
                id="agentflow.E031",
            )
        )
    from rest_framework.settings import api_settings

    token_auth = any(
        getattr(cls, "__name__", "") == "TokenAuthentication"
        for cls in api_settings.DEFAULT_AUTHENTICATION_CLASSES
    )
    if token_auth and not apps.is_installed("rest_framework.authtoken"):
        errors.append(
            Error(
                "REST_FRAMEWORK authenticates with TokenAuthentication but 'rest_framework.authtoken' is not "
                "in INSTALLED_APPS: every request with a token fails.",
                hint="Add 'rest_framework.authtoken' to INSTALLED_APPS and run manage.py migrate.",
                id="agentflow.E032",
            )
        )
    return errors


# -- OpenAPI ---------------------------------------------------------------------------------------------------

_SPLIT_HOOK = "agentflow.openapi.split_start_operations"


def _has_split_hook(hooks: Any) -> bool:
    for hook in hooks if isinstance(hooks, list | tuple) else ():
        if hook == _SPLIT_HOOK or getattr(hook, "__module__", "") + "." + getattr(hook, "__name__", "") == (
            _SPLIT_HOOK
        ):
            return True
    return False


@register(Tags.compatibility)
def check_openapi(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """drf-spectacular publishes agentflow's API only rightly with agentflow's postprocessing hook: without it,
    the start operations' body is "one of all the workflows' inputs", whatever the path names."""
    from django.apps import apps

    if not apps.is_installed("drf_spectacular") or not _api_mounted():
        return []
    user = getattr(settings, "SPECTACULAR_SETTINGS", {})
    # drf-spectacular's default, when the key is not set, is its enum hook alone.
    hooks = user.get("POSTPROCESSING_HOOKS") if isinstance(user, dict) else None
    if _has_split_hook(hooks):
        return []
    return [
        Warning(
            f"SPECTACULAR_SETTINGS['POSTPROCESSING_HOOKS'] does not include '{_SPLIT_HOOK}': the published "
            "OpenAPI schema gives POST workflows/{name}/runs/ (and .../run/) one body for every workflow, so "
            "clients and contract tests see inputs the API refuses for the workflow they name.",
            hint=(
                "SPECTACULAR_SETTINGS = {'POSTPROCESSING_HOOKS': ["
                f"'drf_spectacular.hooks.postprocess_schema_enums', '{_SPLIT_HOOK}']}} "
                "(keep any hooks of your own)."
            ),
            id="agentflow.W013",
        )
    ]


# -- Celery ----------------------------------------------------------------------------------------------------


@register(Tags.compatibility)
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not _uses_workers():
        return []
    app = project_celery_app()
    if app is None or not app.conf.broker_url:
        # A warning, not an error: a project is set up step by step, and `migrate` must not wait for Celery.
        problem = (
            "this process has no Celery app"
            if app is None
            else f"the Celery app {app.main!r} has no broker_url"
        )
        return [
            Warning(
                f"AGENTFLOW['EXECUTOR'] is {agentflow_settings.executor!r} but {problem}: runs would be sent "
                "with Celery's defaults (AMQP on localhost), where no worker listens.",
                hint="Create a Celery app (celery.py) configured from the CELERY_* settings, with "
                "CELERY_BROKER_URL, and import it in your project's __init__.py, as docs/tutorial.md shows.",
                id="agentflow.W007",
            )
        ]
    conf = app.conf
    messages: list[CheckMessage] = []
    accepted = {str(name).split("/")[-1] for name in (conf.accept_content or [])}
    if accepted - {"json"}:
        messages.append(
            Error(
                f"The Celery app {app.main!r} accepts {sorted(accepted - {'json'})} messages: whoever can write "
                "to the broker can run code in the workers.",
                hint="agentflow's tasks are JSON: set CELERY_ACCEPT_CONTENT = ['json'].",
                id="agentflow.E033",
            )
        )
    broker = str(conf.broker_url or "")
    if broker.split(":", 1)[0].split("+")[0] in _VISIBILITY_TRANSPORTS:
        options = conf.broker_transport_options or {}
        visibility = options.get("visibility_timeout", _DEFAULT_VISIBILITY_SECONDS)
        slice_seconds = agentflow_settings.slice_seconds
        drain_seconds = agentflow_settings.drain_seconds
        numbers = all(isinstance(v, int | float) for v in (visibility, slice_seconds, drain_seconds))
        if numbers and visibility <= slice_seconds + drain_seconds:
            messages.append(
                Error(
                    f"The broker's visibility timeout ({visibility:g} s) is not longer than "
                    f"AGENTFLOW['SLICE_SECONDS'] + DRAIN_SECONDS ({slice_seconds:g} + {drain_seconds:g} s): "
                    "the broker would hand a run that is still running to a second worker.",
                    hint="Raise CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'] or lower SLICE_SECONDS.",
                    id="agentflow.E034",
                )
            )
    if not conf.task_create_missing_queues:
        declared = {queue.name for queue in (conf.task_queues or [])}
        missing = [
            q for q in (agentflow_settings.task_queue, agentflow_settings.monitor_queue) if q not in declared
        ]
        if missing:
            messages.append(
                Error(
                    f"The Celery app {app.main!r} does not create missing queues and does not declare "
                    f"{missing}: agentflow's tasks cannot be sent.",
                    hint="Add them to CELERY_TASK_QUEUES, or leave CELERY_TASK_CREATE_MISSING_QUEUES on.",
                    id="agentflow.E035",
                )
            )
    if conf.worker_prefetch_multiplier != 1:
        messages.append(
            Warning(
                f"The Celery app {app.main!r} has worker_prefetch_multiplier = {conf.worker_prefetch_multiplier}: "
                "a busy worker reserves runs that an idle one could start, and the monitor's task can wait "
                "behind them.",
                hint="Set CELERY_WORKER_PREFETCH_MULTIPLIER = 1.",
                id="agentflow.W005",
            )
        )
    if conf.task_always_eager:
        messages.append(
            Warning(
                f"The Celery app {app.main!r} runs tasks eagerly (task_always_eager): runs execute inside "
                "the process that starts them, such as a web request, not on workers.",
                hint="Turn CELERY_TASK_ALWAYS_EAGER off; in tests use agentflow.testing.inline_executor().",
                id="agentflow.W006",
            )
        )
    return messages


# -- caches and Redis ------------------------------------------------------------------------------------------


@register(Tags.compatibility)
def check_cache_and_redis(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    alias = agentflow_settings.cache_alias
    backend = settings.CACHES.get(alias, {}).get("BACKEND") if isinstance(alias, str) else None
    if backend in _PROCESS_LOCAL_CACHES and _uses_workers():
        messages.append(
            Warning(
                f"AGENTFLOW['CACHE_ALIAS'] is {alias!r}, a {backend.rsplit('.', 1)[-1]}: each worker process "
                "has its own, so component.cache() entries are not shared between workers.",
                hint="Point CACHE_ALIAS at a shared cache, such as django_redis's RedisCache.",
                id="agentflow.W008",
            )
        )
    user = getattr(settings, "AGENTFLOW", {})
    if isinstance(user, dict) and not user.get("REDIS_URL") and not os.environ.get("REDIS_URL"):
        messages.append(
            Warning(
                "AGENTFLOW['REDIS_URL'] is not set, nor the REDIS_URL environment variable: run streams go to "
                "redis://127.0.0.1:6379/0, whatever the broker and the cache use.",
                hint="Set AGENTFLOW['REDIS_URL'] in your settings, the same in web processes and workers.",
                id="agentflow.W009",
            )
        )
    return messages
