"""WebSocket routes of agentflow, for a Channels ``URLRouter``::

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter

import agentflow.routing

application = ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": AuthMiddlewareStack(URLRouter(agentflow.routing.websocket_urlpatterns)),
})
"""

from django.urls import path

from .consumers import RunEventsConsumer

websocket_urlpatterns = [
    # Any segment: the consumer parses the run id as the REST API does (any case, with or without hyphens), and
    # closes a socket whose id is not one with 4404. A route that does not match would be a 500 per handshake.
    path("ws/runs/<str:run_id>/", RunEventsConsumer.as_asgi(), name="agentflow-run-events"),
]
