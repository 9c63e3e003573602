"""Settings of the ASGI server the API's event stream tests talk to: the test settings with the API's URLs."""

from tests.settings import *  # noqa: F403
from tests.settings import AGENTFLOW

ROOT_URLCONF = "tests.urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

AGENTFLOW = {
    **AGENTFLOW,
    "SSE_KEEPALIVE_SECONDS": 0.5,
    "SSE_RETRY_SECONDS": 0.5,
    "STREAM_IDLE_CHECK_SECONDS": 1.0,
}
