"""Settings of the uvicorn process the streaming tests talk to: the test settings, plus a URLconf with a
minimal SSE view, allowed hosts for HTTP, and short keep-alive and idle-check intervals."""

from tests.settings import *  # noqa: F403
from tests.settings import AGENTFLOW

ROOT_URLCONF = "tests.streaming.urls"
ASGI_APPLICATION = "tests.asgi.application"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

AGENTFLOW = {
    **AGENTFLOW,
    "SSE_KEEPALIVE_SECONDS": 0.3,
    "WEBSOCKET_KEEPALIVE_SECONDS": 0.3,
    "SSE_RETRY_SECONDS": 0.5,
    "STREAM_IDLE_CHECK_SECONDS": 1.0,
}
