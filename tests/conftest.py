"""Fixtures for the suite: real Redis and PostgreSQL, and Celery workers in their own processes.

Integration tests need the services: they are skipped when one is missing on a developer's machine, and
fail in CI (CI=true), where a skipped integration test would hide a broken build.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from agentflow.core import events as ev
from tests import redisdb

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _require(what: str, check: Callable[[], object]) -> None:
    try:
        check()
    except Exception as exc:
        if IN_CI:
            raise RuntimeError(f"{what} is required in CI but unreachable: {exc}") from exc
        pytest.skip(f"{what} unreachable: {exc}")


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    _require("Redis", client.ping)
    return client


@pytest.fixture(scope="session", autouse=True)
def _clean_redis() -> Iterator[None]:
    """Start every session on an empty test Redis database: ``AGENTFLOW_TEST_REDIS_URL`` (tests/settings.py),
    flushed only if the suite marked it as its own (tests/redisdb.py), never ``REDIS_URL``."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        redisdb.reset(client)
    except redisdb.NotOurDatabase as exc:
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
    except redis.ConnectionError:
        pass  # the tests that need Redis skip (or fail in CI) through `redis_client`
    yield


@pytest.fixture
def private_redis(stopped_private_redis: redisdb.PrivateRedis) -> redisdb.PrivateRedis:
    """A redis-server of this test's own (any of its 16 databases), never the shared test server."""
    stopped_private_redis.start()
    return stopped_private_redis


@pytest.fixture
def stopped_private_redis() -> Iterator[redisdb.PrivateRedis]:
    """A redis-server of this test's own on a port of its own, not started yet: a Redis (or a broker) that
    is down until the test starts it."""
    binary = redisdb.redis_server_path()
    if binary is None:
        if IN_CI:
            raise RuntimeError("redis-server is required in CI")
        pytest.skip("no redis-server binary")
    server = redisdb.PrivateRedis(binary)
    try:
        yield server
    finally:
        server.cleanup()


#: The ASGI servers agentflow supports; streaming tests that depend on the server run under each.
ASGI_SERVERS = ("uvicorn", "daphne")


class AsgiServer:
    """``uvicorn tests.asgi:application`` (or ``daphne``) in its own process group, on a socket bound here (no
    port race), against the test database. Tests using it need ``transactional_db``: the server sees committed
    rows. ``env`` adds environment variables, such as ``AGENTFLOW_TEST_OVERRIDES`` (tests/settings.py)."""

    def __init__(
        self,
        db_name: str,
        settings_module: str,
        ready_path: str,
        *,
        server: str = "uvicorn",
        env: dict[str, str] | None = None,
        app: str = "tests.asgi:application",
        port: int = 0,
    ) -> None:
        """``app``: the ASGI application's import path; ``port``: 0 for a free one (a server started again
        after ``stop()`` can take its predecessor's)."""
        if server not in ASGI_SERVERS:
            raise ValueError(f"unknown ASGI server {server!r}: use one of {ASGI_SERVERS}")
        self.server = server
        self.log: list[str] = []
        self.ready_path = ready_path
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(512)
        self.port = sock.getsockname()[1]
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "DJANGO_SETTINGS_MODULE": settings_module,
            "PGDATABASE": db_name,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),  # e.g. AGENTFLOW_TEST_BROKER_URL, AGENTFLOW_TEST_OVERRIDES (tests/settings.py)
        }
        if server == "uvicorn":
            cmd = [
                sys.executable, "-m", "uvicorn", app, "--fd", str(sock.fileno()),
                "--lifespan", "off", "--no-access-log", "--log-level", "warning",
                "--timeout-graceful-shutdown", "2",
            ]  # fmt: skip
        else:  # verbosity 0: warnings and errors, no access log
            cmd = [
                sys.executable, "-m", "daphne", "--fd", str(sock.fileno()), "-v", "0",
                "--application-close-timeout", "2", app,
            ]  # fmt: skip
        try:
            self.process = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                pass_fds=(sock.fileno(),),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        finally:
            sock.close()  # the server has its own copy
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def wait_ready(self, timeout_seconds: float = 30) -> AsgiServer:
        import httpx

        deadline = time.monotonic() + timeout_seconds
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("the ASGI server exited:\n" + "".join(self.log[-40:]))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.http}{self.ready_path}", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the ASGI server did not answer:\n" + "".join(self.log[-40:]))
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


class Worker:
    """A Celery worker process (its own process group, so a SIGKILL takes the whole worker down)."""

    def __init__(
        self,
        queue: str,
        db_name: str,
        pool: str = "solo",
        name: str = "w",
        env: dict[str, str] | None = None,
    ) -> None:
        self.queue = queue
        self.log: list[str] = []
        self._ready = threading.Event()
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PGDATABASE": db_name,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),  # e.g. AGENTFLOW_TEST_OVERRIDES: settings for this worker only (tests/settings.py)
        }
        if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
            env["AGENTFLOW_SQLITE"] = db_name
        cmd = [
            sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
            "-P", pool, "-c", "1" if pool == "solo" else "2", "-Q", queue, "-n", f"{name}-{queue}@%h",
            "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            if " ready." in line:
                self._ready.set()

    def wait_ready(self, timeout_seconds: float = 60) -> Worker:
        if not self._ready.wait(timeout_seconds):
            self.stop()
            raise RuntimeError("worker did not become ready:\n" + "".join(self.log[-40:]))
        return self

    def kill(self) -> None:
        """SIGKILL the whole worker: no warm shutdown, no acknowledgement, no cleanup."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def worker_factory(redis_client: redis.Redis, django_db_blocker: object) -> Iterator[Callable[..., Worker]]:
    from django.db import connection

    workers: list[Worker] = []

    def start(
        queue: str = "agentflow", pool: str = "solo", name: str = "w", env: dict[str, str] | None = None
    ) -> Worker:
        worker = Worker(queue, connection.settings_dict["NAME"], pool=pool, name=name, env=env)
        workers.append(worker)
        return worker.wait_ready()

    yield start
    for worker in workers:
        worker.stop()


@contextlib.contextmanager
def running_workers(
    queue: str, overrides: dict[str, Any], *, count: int = 1, pool: str = "solo", name: str = "w"
) -> Iterator[list[Worker]]:
    """``count`` workers on ``queue`` whose agentflow settings are the suite's with ``overrides``
    (``AGENTFLOW_TEST_OVERRIDES``), started together and ready; stopped on the way out. For a module's workers."""
    import json

    from django.db import connection

    env = {"AGENTFLOW_TEST_OVERRIDES": json.dumps(overrides)}
    db_name = connection.settings_dict["NAME"]
    names = [name] if count == 1 else [f"{name}{index}" for index in range(count)]
    workers = [Worker(queue, db_name, pool=pool, name=each, env=env) for each in names]
    try:
        for worker in workers:  # started together: they boot while we wait for the first
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture
def worker(worker_factory: Callable[..., Worker], transactional_db: None) -> Worker:
    """A fresh worker on the default queue for one test."""
    return worker_factory()


def wait_for(
    predicate: Callable[[], object], timeout_seconds: float, what: str, poll_seconds: float = 0.05
) -> object:
    """Poll ``predicate`` until it is truthy (bounded); for conditions no event announces."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds}s waiting for {what}")
        time.sleep(poll_seconds)


@pytest.fixture(scope="session", autouse=True)
def _flush_survives_a_deadlock() -> Iterator[None]:
    """Retry the flush that ends a ``transactional_db`` test when PostgreSQL broke a deadlock by aborting it.

    Worker processes of the suite outlive single tests (module-scoped workers, their dispatch and archive
    threads), so the flush's TRUNCATE can meet a worker's transaction that locks the same tables in another
    order; PostgreSQL then aborts one of the two. Only a test harness truncates tables under live workers, so
    the harness, not agentflow, absorbs it: the aborted flush is run again (bounded)."""
    from django.db.utils import OperationalError
    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown

    def teardown(self: TransactionTestCase) -> None:
        for attempt in range(5):
            try:
                return original(self)
            except Exception as exc:  # flush wraps the database error in a CommandError
                cause = exc if isinstance(exc, OperationalError) else exc.__cause__
                if attempt == 4 or not (isinstance(cause, OperationalError) and "deadlock" in str(cause)):
                    raise
                time.sleep(0.2)

    TransactionTestCase._fixture_teardown = teardown  # type: ignore[method-assign]
    try:
        yield
    finally:
        TransactionTestCase._fixture_teardown = original  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _shared_worker_settles(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module's shared worker outlives each test: before the test's tables are flushed, let it finish the
    runs that ended (a run's status commits before its events are archived), or its inserts and the flush's
    TRUNCATE deadlock. Bounded; only for tests that use the shared worker."""
    yield
    if "shared_worker" not in request.fixturenames:
        return
    from agentflow.models import FINISHED_STATUSES, WorkflowRun

    deadline = time.monotonic() + 10
    unsettled = WorkflowRun.objects.filter(status__in=FINISHED_STATUSES, last_event_id="")
    while unsettled.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def shared_worker(django_db_setup: None, redis_client: redis.Redis) -> Iterator[Worker]:
    """One worker on the default queue for a whole module (tests using it need ``transactional_db``)."""
    from django.db import connection

    worker = Worker("agentflow", connection.settings_dict["NAME"], pool="prefork", name="shared")
    try:
        yield worker.wait_ready()
    finally:
        worker.stop()


def apply_voiding(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's events (oldest first) without the void ones: the two rules of docs/topics/events.md."""
    kept: list[dict[str, Any]] = []
    for event in events:
        if event["type"] == "step.retrying":
            void = (event["step"], event["attempt"], event["epoch"])
            kept = [
                e
                for e in kept
                if not (e["type"] in ev.CONTENT_TYPES and (e["step"], e["attempt"], e["epoch"]) == void)
            ]
        elif event["type"] in ("run.recovered", "run.resumed"):
            steps, epoch = set(event["data"]["void_steps"]), event["epoch"]
            kept = [
                e
                for e in kept
                if not (e["type"] in ev.CONTENT_TYPES and e["step"] in steps and e["epoch"] < epoch)
            ]
        kept.append(event)
    return kept
