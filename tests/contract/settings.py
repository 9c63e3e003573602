"""Settings of the server the contract tests (schemathesis) talk to: the test settings, with only this package's
workflows (small, quick and bounded, so that generated input cannot make a run long) executed in the server's
own threads, so that runs finish without a worker and event streams end."""

from tests.settings import *  # noqa: F403
from tests.settings import AGENTFLOW, INSTALLED_APPS

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "tests.testapp"] + ["tests.contract"]
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

AGENTFLOW = {
    **AGENTFLOW,
    "EXECUTOR": "agentflow.executors.InProcessExecutor",
    "WAIT_TIMEOUT_SECONDS": 5.0,
    "SSE_KEEPALIVE_SECONDS": 0.5,
    "STREAM_IDLE_CHECK_SECONDS": 1.0,
}
