"""Shared by the streaming benchmarks (event_latency.py, replay.py, subscribers.py): Django setup on the bench
database, a uvicorn process serving agentflow's websockets, runs to stream, percentiles, and cleanup.

Settings ``bench.settings`` (BENCH_DB_NAME, BENCH_REDIS_URL; Redis db 14 by default). The benchmarks delete
only what they created (their runs' rows and keys), so they do not disturb bench/step_overhead.py's data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"


def setup_django() -> None:
    """Create and migrate the bench database, set Django up."""
    import django

    from bench.step_overhead import ensure_database

    ensure_database()
    django.setup()
    from django.core.management import call_command

    from bench import claim_redis

    claim_redis()

    call_command("migrate", verbosity=0, interactive=False)


class AsgiServer:
    """``uvicorn tests.asgi:application`` (Django + agentflow's websocket routes) on bench.settings, in its own
    process group, on a socket bound here (no race for a free port); its log goes to a temporary file. ``app``
    serves another application (``bench._bare_asgi:app``, the floors)."""

    def __init__(self, *extra_args: str, app: str = "tests.asgi:application") -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # uvicorn takes an --fd socket for a Unix one and leaves Nagle's algorithm on for the connections it
        # accepts (which inherit the listening socket's TCP_NODELAY on Linux): a response or frame written in
        # two parts then waited for the client's delayed ACK, ~40 ms (measured on bench/start_latency.py:
        # back-to-back requests took 44 ms instead of 3 ms). Servers binding their own port set it themselves.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        fd, name = tempfile.mkstemp(prefix="agentflow-bench-asgi-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["DJANGO_SETTINGS_MODULE"] = "bench.settings"
        from django.conf import settings

        env["BENCH_REDIS_URL"] = settings.BENCH_REDIS_URL  # for the bare application
        cmd = [
            sys.executable, "-m", "uvicorn", app, "--fd", str(sock.fileno()),
            "--lifespan", "off", "--no-access-log", "--log-level", "warning",
            "--timeout-graceful-shutdown", "2", *extra_args,
        ]  # fmt: skip
        try:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    cmd, cwd=ROOT, env=env, pass_fds=(sock.fileno(),), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        finally:
            sock.close()
        self.ws = f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_seconds: float = 30.0) -> float:
        """Seconds until the server answers HTTP."""
        import httpx

        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the ASGI server exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=2)
                return time.monotonic() - started
            if time.monotonic() - started > timeout_seconds:
                raise RuntimeError(f"the ASGI server did not answer within {timeout_seconds}s")
            time.sleep(0.05)

    def url(self, run_id: Any, token: str, after: str | None = None) -> str:
        return f"{self.ws}/ws/runs/{run_id}/?token={token}" + (f"&after={after}" if after else "")

    def hub_connections(self) -> dict[str, int]:
        """The server's hub connections to Redis, by role (``reader``, ``pool``), from ``CLIENT LIST``."""
        from agentflow import streams

        prefix = f"agentflow-hub:{socket.gethostname()}:{self.pid}:"
        roles: dict[str, int] = {}
        for client in streams.get_client().client_list():
            if client["name"].startswith(prefix):
                role = client["name"][len(prefix) :]
                roles[role] = roles.get(role, 0) + 1
        return roles

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, failed: bool = False) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left; print its log if asked."""
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if failed:
            print(f"\n--- ASGI server log ({self.log_path}) ---\n{self.log_tail()}", file=sys.stderr)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


class Runs:
    """Runs created by a benchmark (rows and Redis keys), deleted by :meth:`cleanup`."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def create(self, **fields: Any) -> tuple[str, str]:
        """A running run; returns its id and a stream token for it."""
        from agentflow.access import make_stream_token
        from agentflow.models import RunStatus, WorkflowRun

        fields.setdefault("status", RunStatus.RUNNING)
        run = WorkflowRun.objects.create(workflow="bench-streaming", **fields)
        self.ids.append(str(run.pk))
        return str(run.pk), make_stream_token(run.pk)

    def cleanup(self) -> None:
        from agentflow import streams
        from agentflow.models import WorkflowRun

        if not self.ids:
            return
        client = streams.get_client()
        client.delete(*(streams.stream_key(i) for i in self.ids), *(streams.meta_key(i) for i in self.ids))
        WorkflowRun.objects.filter(pk__in=self.ids).delete()  # cascades to archived events
        self.ids.clear()


def tear_down(server: AsgiServer | None, runs: Runs, failed: bool) -> None:
    """The end of every streaming benchmark, however it ends: no deadline, no server, no runs left."""
    from bench import disarm_deadline

    disarm_deadline()
    if server is not None:
        server.stop(failed=failed)
    runs.cleanup()


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summary_ms(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50) * 1e3:7.3f}  p90 {percentile(values, 90) * 1e3:7.3f}  "
        f"p99 {percentile(values, 99) * 1e3:7.3f}  max {max(values) * 1e3:7.3f}  "
        f"mean {statistics.fmean(values) * 1e3:7.3f} ms  (n={len(values)})"
    )


def environment() -> list[tuple[str, str]]:
    import platform

    import django
    import redis
    import uvicorn
    import websockets

    from agentflow import streams

    info = streams.get_client().info("server")
    return [
        ("Python", platform.python_version()),
        ("Django", django.get_version()),
        ("uvicorn", uvicorn.__version__),
        ("websockets", websockets.version.version),
        ("redis-py", redis.__version__),
        ("Redis server", str(info.get("redis_version"))),
        ("CPUs", str(os.cpu_count())),
        ("Load average", "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())),
    ]
