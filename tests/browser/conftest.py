"""Browser tests: headless Chromium (the system's, driven by Playwright's Python API; no browser download)
against a live ASGI server (uvicorn, tests.browser.asgi), a Celery worker and the fake LLM server, all shared
by the session. What they check is read from the page as rendered, not from the page's own bookkeeping.

Screenshots go to ``artifacts/screenshots/`` (``$AGENTFLOW_SCREENSHOTS``), which CI keeps.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection
from django.test import override_settings

from agentflow.conf import agentflow_settings
from agentflow.testing.fake_openai import FakeOpenAI, FakeOpenAIProcess
from tests.conftest import IN_CI, ROOT, AsgiServer, Worker

QUEUE = "agentflow-browser"
SETTINGS = "tests.browser.settings"
CHROMIUM = os.environ.get("AGENTFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = Path(os.environ.get("AGENTFLOW_SCREENSHOTS") or ROOT / "artifacts" / "screenshots")
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def chromium(_playwright_and_django: None) -> Iterator[Any]:
    """The system's Chromium through Playwright's sync API: one browser per module, never a downloaded one.

    Not one per session: Playwright's sync API keeps an event loop running in this thread while it is
    started, and the suite's later tests call ``asyncio.run()``.

    (pytest-playwright's own fixtures are not used: they parametrize every test per browser and pull in
    pytest-base-url, whose session fixture pytest deprecates.)"""
    if not Path(CHROMIUM).exists():
        if IN_CI:
            raise RuntimeError(
                f"Chromium is required in CI but {CHROMIUM} is missing (apt-get install chromium)"
            )
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(chromium: Any) -> Iterator[Any]:
    """A fresh browser context (cookies, storage, network conditions) per test."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def _playwright_and_django() -> Iterator[None]:
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeOpenAIProcess]:
    # 20 words at 10 a second: a call streams for about two seconds, long enough to act mid-stream.
    with FakeOpenAI.spawn(completion_tokens=20, tokens_per_second=10) as server:
        yield server


@pytest.fixture(scope="session")
def browser_settings(fake_llm: FakeOpenAIProcess) -> dict[str, Any]:
    return {
        "TASK_QUEUE": QUEUE,
        "LLM_PROVIDERS": [{"name": "fake", "base_url": fake_llm.base_url, "api_key": "k"}],
        "LLM_PRICES": {"fake-*": {"input": 0.15, "output": 0.60}},
        "LLM_PROVIDER_FAILURE_THRESHOLD": 1000,
        # A page notices a connection that went silent after 2.5 intervals (agentflow.js).
        "WEBSOCKET_KEEPALIVE_SECONDS": 1.0,
    }


class Server(AsgiServer):
    """The browser tests' ASGI server, which a test may kill and start again on the same port."""

    def __init__(self, db_name: str, env: dict[str, str], port: int = 0) -> None:
        self.db_name, self.env = db_name, env
        super().__init__(
            db_name, SETTINGS, "/health/", app="tests.browser.asgi:application", port=port, env=env
        )

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, every connection cut."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: every connection stays open and says nothing, as over a network that died silently."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def restart(self) -> Server:
        self.kill()
        self.stop()
        fresh = Server(self.db_name, self.env, port=self.port).wait_ready()
        self.__dict__.update(fresh.__dict__)
        return self


@pytest.fixture(scope="session")
def live_server_env(
    django_db_setup: None, redis_client: redis.Redis, browser_settings: dict[str, Any]
) -> dict[str, str]:
    return {"DJANGO_SETTINGS_MODULE": SETTINGS, "AGENTFLOW_TEST_OVERRIDES": json.dumps(browser_settings)}


@pytest.fixture(scope="session")
def asgi(live_server_env: dict[str, str]) -> Iterator[Server]:
    server = Server(connection.settings_dict["NAME"], live_server_env)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser_worker(live_server_env: dict[str, str]) -> Iterator[Worker]:
    worker = Worker(
        QUEUE, connection.settings_dict["NAME"], pool="prefork", name="browser", env=live_server_env
    )
    try:
        yield worker.wait_ready()
    finally:
        worker.stop()


@pytest.fixture
def live(
    asgi: Server,
    browser_worker: Worker,
    browser_settings: dict[str, Any],
    fake_llm: FakeOpenAIProcess,
    transactional_db: None,
) -> Iterator[Server]:
    """The live server for one test, with this process using the worker's queue and the fake LLM reset."""
    if asgi.process.poll() is not None:  # a test that killed it failed before starting it again
        asgi.restart()
    fake_llm.reset()
    start = len(asgi.log)
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **browser_settings}):
        yield asgi
    # A request that made the server log an error fails the test that made it.
    errors = [line for line in asgi.log[start:] if "Traceback" in line or "ERROR" in line]
    assert not errors, "the server logged errors:\n" + "".join(asgi.log[start:])


@pytest.fixture
def demo_user(transactional_db: None) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("admin", "admin@example.com", "admin")


@pytest.fixture
def logged_in(context: Any, live: Server, demo_user: Any) -> Any:
    """A browser context with the demo user's session (made here, as a login would)."""
    from django.test import Client

    client = Client()
    client.force_login(demo_user)
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live.http}])
    return context


def screenshot(page: Any, name: str, selector: str | None = None) -> Path:
    """The whole page, or the part of it that ``selector`` matches, to ``<SCREENSHOTS>/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if selector:
        page.locator(selector).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    return path
