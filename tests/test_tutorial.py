"""docs/tutorial.md works as written: every code block runs, in order, in a fresh Django project.

The project is created by the tutorial's own commands in a temporary directory, with the agentflow this
suite runs (installed in the virtual environment, as `pip install -e` leaves it) and nothing of this
repository on the path. Its Redis is a private redis-server. A comment before a code block says how to run
it (``<!-- tutorial: ... -->``):

- none, for ``sh``: the commands run in one bash session (``set -e``), so ``cd`` and variables carry on;
- none, for ``pycon``, or ``shell`` for ``python``: in ``manage.py shell`` (doctest: the printed output must
  match, run ids aside); consecutive shell blocks share one session;
- ``write <path>`` / ``append <path>``: the block is (added to) that file of the project;
- ``background <text>``: a long-running command (a worker, a server), started apart until it prints <text>;
- ``output``: shown output, not run; ``skip (<why>)``: not run (installing the package, a real LLM).

Port 8000 in the blocks is replaced by a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT
from tests.redisdb import PrivateRedis

pytestmark = pytest.mark.integration

TUTORIAL = ROOT / "docs" / "tutorial.md"
DIRECTIVE = re.compile(r"<!-- tutorial: (\w+)(?: (.*?))? -->")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Block:
    lang: str
    code: str
    directive: str
    argument: str
    line: int

    def where(self) -> str:
        return f"docs/tutorial.md:{self.line}"


def blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        directive = DIRECTIVE.fullmatch(before.strip())
        found.append(
            Block(
                lang=match[1],
                code=match[2],
                directive=directive[1] if directive else "",
                argument=(directive[2] or "") if directive else "",
                line=text[: match.start()].count("\n") + 2,
            )
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Shell:
    """One bash session: each block's commands, then a marker line with the status."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.run("set -eo pipefail", "setup", 10)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, code: str, where: str, timeout_seconds: float = 60) -> str:
        marker = f"__tutorial_block_done_{time.monotonic_ns()}__"
        assert self.process.stdin is not None
        self.process.stdin.write(f"{code}\necho {marker}\n")
        self.process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{where} did not finish in {timeout_seconds}s:\n{''.join(output)}"
                ) from None
            if line is None:
                raise AssertionError(f"{where} failed (the shell exited, set -e):\n{''.join(output)}")
            if marker in line:  # after output without a final newline (curl's), on the same line
                return "".join(output) + line[: line.index(marker)]
            output.append(line)

    def cwd(self) -> Path:
        return Path(self.run("pwd", "pwd").strip())

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        _close_pipes(self.process)


class Background:
    """A long-running block: its own process group, its output kept for the test's messages."""

    def __init__(self, block: Block, cwd: Path, env: dict[str, str]) -> None:
        self.block = block
        self.log: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {block.code.strip()}"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            if self.block.argument in line:
                self.ready.set()

    def wait_ready(self, timeout_seconds: float = 30) -> None:
        if not self.ready.wait(timeout_seconds):
            raise AssertionError(
                f"{self.block.where()} did not print {self.block.argument!r}:\n{''.join(self.log)}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        _close_pipes(self.process)


def _close_pipes(process: subprocess.Popen[str]) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


# Runs in `manage.py shell`: the blocks of one session as doctests (pycon) or code (python), one namespace.
DRIVER = """
import doctest, json, os, re, sys

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Checker(doctest.OutputChecker):
    def check_output(self, want, got, optionflags):
        return super().check_output(UUID.sub("<id>", want), UUID.sub("<id>", got), optionflags)


namespace = {"__name__": "__main__"}
failed = 0
for block in json.load(open(os.environ["TUTORIAL_BLOCKS"])):
    if block["lang"] == "pycon":
        test = doctest.DocTestParser().get_doctest(block["code"], namespace, block["where"], block["where"], 0)
        runner = doctest.DocTestRunner(checker=Checker(), optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test, out=sys.stdout.write, clear_globs=False)
        failed += runner.failures
        namespace.update(test.globs)  # a DocTest runs on a copy
    else:
        exec(compile(block["code"], block["where"], "exec"), namespace)
print("TUTORIAL-SHELL-FAILURES", failed)
"""


class Tutorial:
    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DJANGO_", "AGENTFLOW_", "PYTHONPATH", "OPENAI_", "CELERY_"))
        }
        self.env.update(
            REDIS_URL=redis_url, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1"
        )
        self.shell = Shell(workdir, self.env)
        self.background: list[Background] = []
        self.pending_shell: list[Block] = []
        self.outputs: list[tuple[Block, str]] = []
        self.ran = 0

    def code(self, block: Block) -> str:
        return block.code.replace("8000", str(self.port))

    def execute(self, block: Block) -> None:
        print(f"{time.strftime('%H:%M:%S')} {block.where()} {block.lang} {block.directive}", flush=True)
        if block.directive in ("skip", "output"):
            return
        shell_block = block.lang == "pycon" or block.directive == "shell"
        if not shell_block:
            self.flush_shell()
        self.ran += 1
        if shell_block:
            self.pending_shell.append(block)
        elif block.directive in ("write", "append"):
            target = self.shell.cwd() / block.argument
            with target.open("w" if block.directive == "write" else "a") as file:
                file.write(("\n" if block.directive == "append" else "") + self.code(block))
        elif block.directive == "background":
            started = Background(
                Block(**{**block.__dict__, "code": self.code(block)}), self.shell.cwd(), self.env
            )
            self.background.append(started)
            started.wait_ready()
        elif block.lang == "sh" and not block.directive:
            self.outputs.append((block, self.shell.run(self.code(block), block.where())))
        else:
            raise AssertionError(f"{block.where()}: no way to run a {block.lang!r} block {block.directive!r}")

    def flush_shell(self) -> None:
        if not self.pending_shell:
            return
        pending, self.pending_shell = self.pending_shell, []
        blocks_file = self.workdir / "tutorial-shell-blocks.json"
        blocks_file.write_text(
            json.dumps([{"lang": b.lang, "code": self.code(b), "where": b.where()} for b in pending])
        )
        driver = self.workdir / "tutorial-driver.py"
        driver.write_text(DRIVER)
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", f"exec(open({str(driver)!r}).read())"],
            cwd=self.shell.cwd(), env={**self.env, "TUTORIAL_BLOCKS": str(blocks_file)},
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        where = f"the shell session of {pending[0].where()} to {pending[-1].where()}"
        assert result.returncode == 0, f"{where} failed:\n{result.stdout}{result.stderr}"
        assert "TUTORIAL-SHELL-FAILURES 0" in result.stdout, f"{where}: outputs differ:\n{result.stdout}"
        self.outputs.append((pending[-1], result.stdout))

    def output_of(self, fragment: str) -> str:
        (output,) = [out for block, out in self.outputs if fragment in block.code]
        return output

    def close(self) -> str:
        logs = []
        for process in reversed(self.background):
            process.stop()
            logs.append("".join(process.log))
        self.shell.close()
        return "\n".join(logs)


@pytest.fixture
def tutorial(tmp_path: Path) -> Iterator[Tutorial]:
    from tests.redisdb import redis_server_path

    binary = redis_server_path()
    if binary is None:
        if IN_CI:
            raise RuntimeError("redis-server is required in CI")
        pytest.skip("no redis-server binary")
    redis_server = PrivateRedis(binary)
    redis_server.start()
    run = Tutorial(tmp_path, redis_server.url)
    try:
        yield run
    finally:
        logs = run.close()
        redis_server.cleanup()
        assert "Traceback" not in logs, logs


@pytest.mark.timeout(300)
def test_every_code_block_of_the_tutorial_runs_in_a_fresh_project(tutorial: Tutorial) -> None:
    all_blocks = blocks(TUTORIAL.read_text())
    skipped = [b for b in all_blocks if b.directive == "skip"]
    assert len(skipped) <= 2, [b.where() for b in skipped]  # sparingly: installing, a real LLM
    for block in all_blocks:
        tutorial.execute(block)
    tutorial.flush_shell()
    assert tutorial.ran == len([b for b in all_blocks if b.directive not in ("skip", "output")])

    # The project sees agentflow as installed, and nothing else of this checkout.
    seen = tutorial.shell.run(
        'python -c \'import importlib.util as u; print(u.find_spec("tests"), u.find_spec("example_project"))\'',
        "the installed package",
    )
    assert seen.strip() == "None None"

    # What the REST, SSE and websocket steps printed.
    assert '"name":"blog-post"' in tutorial.output_of("curl -s http://127.0.0.1:8000/api/workflows/")
    sync = tutorial.output_of("blog-post/run/?timeout=60")
    assert json.loads(sync)["status"] == "completed" and json.loads(sync)["output"]["title"] == "River Otters"
    sse = tutorial.output_of('-H "Accept: text/event-stream"')
    event_types = [line.removeprefix("event: ") for line in sse.splitlines() if line.startswith("event: ")]
    assert (
        sse.startswith("retry: 3000")
        and event_types[0] == "run.queued"
        and event_types[-1] == "run.completed"
    )
    websocket = tutorial.output_of("python follow.py $RUN").splitlines()
    assert websocket[0].split()[1] == "run.queued" and websocket[-1].split()[1] == "run.completed"
    assert tutorial.output_of("static/admin/css/base.css").strip() == "200"
    doctor = tutorial.output_of("agentflow doctor")
    assert doctor.startswith("agentflow doctor: OK"), doctor
    assert "1 live worker(s) consume queue 'agentflow'" in doctor
