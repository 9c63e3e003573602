"""The browser tests' ASGI application: tests.asgi's, with static files served by it (as ``runserver`` does)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.browser.settings")

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

django_application = ASGIStaticFilesHandler(get_asgi_application())

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

import agentflow.routing  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": AuthMiddlewareStack(URLRouter(agentflow.routing.websocket_urlpatterns)),
    }
)
