"""A fake OpenAI-compatible HTTP server for tests, examples and benchmarks.

It speaks the OpenAI wire format (JSON and server-sent events) well enough for the real ``openai`` SDK,
sync and async, streaming and not::

    with FakeOpenAI(latency_ms=200, tokens_per_second=50) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k")
        server.fail({"status": 429, "retry_after": 1.5, "times": 2})
        ...
        assert server.stats()["by_key"]["k"]["completion_tokens"] == ...

or from the command line (prints its base URL, then serves until interrupted)::

    python -m agentflow.testing.fake_openai --port 0 --latency-ms 500 --tokens-per-second 40

Only the standard library is used: one asyncio event loop serves every connection (HTTP/1.1, keep-alive,
chunked responses), so hundreds of concurrent slow requests cost no threads. See docs/topics/testing.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._fake_server import Options, Server

__all__ = ["FakeOpenAI", "FakeOpenAIProcess", "main"]

# The server is local: an HTTP_PROXY in the environment must not see the control requests.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_OPTIONS = {
    "host", "port", "latency_ms", "tokens_per_second", "completion_tokens", "embedding_dimensions", "models",
}  # fmt: skip


class _Control:
    """Test-side control of a running fake server over HTTP (the same for a thread or a process)."""

    url: str  # http://host:port, without /v1

    @property
    def base_url(self) -> str:
        """What to pass as ``openai.OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with _NO_PROXY.open(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:  # closes the socket the error holds
                raise ValueError(f"the fake server refused {method} {path}: {exc.read().decode()}") from None

    def stats(self) -> dict[str, Any]:
        """Requests, faults and token counts: ``totals``, ``by_model`` and ``by_key`` (the API key)."""
        return dict(self._call("GET", "/_fake/stats"))

    def reset(self) -> None:
        """Forget every count and every pending fault."""
        self._call("POST", "/_fake/reset", {})

    def fail(self, *faults: dict[str, Any], model: str = "*") -> None:
        """Queue faults, consumed in order, one per matching request (``model`` is a glob), e.g.
        ``fail({"status": 429, "retry_after": 1.5, "times": 2}, {"drop_after_chunks": 3})``."""
        self._call("POST", "/_fake/faults", {"model": model, "fail": list(faults)})


class FakeOpenAI(_Control):
    """The fake server on its own event loop in a background thread; a context manager."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0,
        tokens_per_second: float = 0,
        completion_tokens: int = 20,
        embedding_dimensions: int = 16,
        models: Iterable[str] = ("fake-model", "fake-embedding"),
    ) -> None:
        self.host, self.port = host, port
        self.options = Options(
            latency_ms, tokens_per_second, completion_tokens, embedding_dimensions, tuple(models)
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None

    def start(self, timeout_seconds: float = 10) -> FakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("this fake OpenAI server is already running")
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop, self._server = loop, Server(self.options)
            try:
                self.port = loop.run_until_complete(self._server.start(self.host, self.port))
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            self.url = f"http://{self.host}:{self.port}"
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._server.stop())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        if not started.wait(timeout_seconds):
            raise RuntimeError("the fake OpenAI server did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout_seconds: float = 10) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_seconds)
            if self._thread.is_alive():
                raise RuntimeError("the fake OpenAI server did not stop")
        self._thread = self._loop = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @classmethod
    def spawn(cls, *, timeout_seconds: float = 30, **options: Any) -> FakeOpenAIProcess:
        """Run the server in a separate process (``python -m agentflow.testing.fake_openai``)."""
        return FakeOpenAIProcess(timeout_seconds=timeout_seconds, **options)


class FakeOpenAIProcess(_Control):
    """The fake server in a child process, for tests across processes (workers, benchmarks)."""

    def __init__(self, *, timeout_seconds: float = 30, **options: Any) -> None:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TypeError(f"unknown fake server options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
        args = [sys.executable, "-m", "agentflow.testing.fake_openai"]
        for name, value in {"port": 0, **options}.items():
            args += [f"--{name.replace('_', '-')}", ",".join(value) if name == "models" else str(value)]
        # The child imports agentflow from where this process did, installed or not.
        source = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
        }
        # Its own session: a Ctrl-C in the terminal is for the parent, which stops the server when it is done.
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        stdout = self.process.stdout
        assert stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_seconds)
        if not ready or not ready[0].startswith("http"):
            self.stop()
            raise RuntimeError(f"the fake OpenAI server did not start (exit code {self.process.returncode})")
        self.url = ready[0].strip().removesuffix("/v1")

    def stop(self, timeout_seconds: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_seconds)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> FakeOpenAIProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agentflow.testing.fake_openai",
        description="A fake OpenAI-compatible server; prints its base URL, then serves until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--latency-ms", type=float, default=0, help="delay before the first byte")
    parser.add_argument("--tokens-per-second", type=float, default=0, help="streaming pace; 0: no pacing")
    parser.add_argument("--completion-tokens", type=int, default=20, help="words in each reply")
    parser.add_argument("--embedding-dimensions", type=int, default=16)
    parser.add_argument("--models", default="fake-model,fake-embedding", help="listed by GET /v1/models")
    args = parser.parse_args(argv)
    options = Options(
        args.latency_ms, args.tokens_per_second, args.completion_tokens, args.embedding_dimensions,
        tuple(name for name in args.models.split(",") if name),
    )  # fmt: skip

    async def serve() -> None:
        server = Server(options)
        port = await server.start(args.host, args.port)
        print(f"http://{args.host}:{port}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
