"""ASGI entry point: Django for HTTP, agentflow's run event websockets (``/ws/runs/<id>/``) for websockets.

uvicorn example_project.asgi:application
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

from django.core.asgi import get_asgi_application

# Set Django up before anything imports models.
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

import agentflow.routing  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        # Session authentication; the consumer refuses sessions from cross-site pages (Origin not allowed) and
        # also accepts the run's stream token (?token=), which needs no cookie.
        "websocket": AuthMiddlewareStack(URLRouter(agentflow.routing.websocket_urlpatterns)),
    }
)
