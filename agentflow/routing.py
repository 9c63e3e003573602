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
    path("ws/runs/<uuid:run_id>/", RunEventsConsumer.as_asgi(), name="agentflow-run-events"),
]
