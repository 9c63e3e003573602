"""The ASGI application of the streaming tests (served by a real uvicorn process): Django for HTTP, agentflow's
websocket routes behind session authentication."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.core.asgi import get_asgi_application

# Set Django up before anything imports models.
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

import agentflow.routing  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": AuthMiddlewareStack(URLRouter(agentflow.routing.websocket_urlpatterns)),
    }
)
