"""The README's first command works on a machine without Redis or an OpenAI key: embedded Redis, SQLite, a real
worker, and the fake OpenAI server in its own process behind the blog workflow's LLM calls."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def example_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without Redis, a database URL or an OpenAI key."""
    env = {
        key: value
        for key, value in os.environ.items()
        # No key: the launcher starts the fake OpenAI server (a real key would call the real API).
        if key
        not in {
            "DATABASE_URL",
            "DJANGO_SETTINGS_MODULE",
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "EXAMPLE_LLM_MODEL",
        }
    }
    env.update(
        REDIS_URL=f"redis://127.0.0.1:{unused_port()}/0",  # nothing listens: the launcher embeds a Redis
        AGENTFLOW_VAR_DIR=str(tmp_path),
        PYTHONPATH=str(ROOT),
    )
    return env


def run_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m example_project --no-serve --words 3``: one blog post, then stop."""
    return subprocess.run(
        [sys.executable, "-m", "example_project", "--no-serve", "--words", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_example_project_runs_the_blog_post_workflow_on_the_embedded_default(tmp_path):
    env = example_env(tmp_path)
    result = run_once(env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "started an embedded one" in out
    assert "Database: sqlite3" in out
    assert "started a fake OpenAI server" in out
    assert "[run.started]" in out and "[run.completed]" in out
    # The run asked for approval of its outline, waited without its worker, and went on once approved.
    assert "[input.requested] outline: Approve this outline? " in out and "Approving it" in out
    assert out.index("[input.requested]") < out.index("[run.waiting]") < out.index("[run.continued]")
    assert "[input.received]" in out and "/input/outline/" in out
    # The outline is one LLM call step; the five sections are drafted by agentflow.map, each draft step
    # holding its LLM call step, whose streamed tokens arrive as "section <n>" data events.
    assert "[step.completed] outline#0 (" in out
    assert len(re.findall(r"\[step\.completed\] draft#\d \(", out)) == 5
    assert len(re.findall(r"\[step\.completed\] draft#\d/openai\.chat#0 \(", out)) == 5
    assert all(f"[section {n}] " in out for n in range(1, 6))
    assert "Run completed" in out and "15 words" in out  # the fake server answers 3 words a call
    assert "Output: 'Durable AI Agents'" in out  # the topic's words capitalised, its acronym kept
    usage = re.search(r"LLM usage: (\d+) calls, (\d+) prompt \+ (\d+) completion tokens, \$([0-9.]+)", out)
    assert usage is not None, out
    calls, completion_tokens, cost = int(usage[1]), int(usage[3]), float(usage[4])
    assert calls == 6 and completion_tokens == 6 * 3 and cost > 0  # fake-model is priced in the settings
    assert "Budget: $0.05 a run" in out
    assert (tmp_path / "example.sqlite3").exists()


def children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
            if int(stat.rpartition(")")[2].split()[1]) == parent:
                found.append(int(entry))
    return found


def test_ctrl_c_stops_worker_then_llm_server_then_redis_quietly_and_logs_the_budget_once(tmp_path):
    """Driven in a pseudo-terminal, where Ctrl-C reaches the whole foreground process group."""
    port = unused_port()
    transcript = io.StringIO()
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "example_project",
            "--words",
            "3",
            "--budget-usd",
            "0.00002",
            "--approve",
            "yes",
            "--port",
            str(port),
        ],
        cwd=str(ROOT),
        env=example_env(tmp_path),
        encoding="utf-8",
        timeout=120,
        logfile=transcript,
    )
    try:
        child.expect(r"started an embedded one at 127\.0\.0\.1:(\d+)")
        redis_port = int(child.match.group(1))
        child.expect(r"Celery worker started \(pid (\d+)\)")
        worker_pid = int(child.match.group(1))
        child.expect("Ctrl-C to stop")

        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/admin/login/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(serving, 60, "the example project to serve the admin")
        # The API's schema and its pages list every workflow and its input: signed-in users only.
        base = f"http://127.0.0.1:{port}"
        for path in ("/api/schema/", "/api/docs/", "/api/redoc/"):
            assert httpx.get(base + path, timeout=10).status_code in (401, 403), path
        with httpx.Client(base_url=base, timeout=10) as browser:
            form = browser.get("/admin/login/")
            csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
            assert csrf is not None, form.text
            signed_in = browser.post(
                "/admin/login/?next=/admin/",
                data={"username": "admin", "password": "admin", "csrfmiddlewaretoken": csrf[1]},
            )
            assert signed_in.status_code == 302, signed_in.text
            assert browser.get("/api/schema/", params={"format": "json"}).json()["paths"]
            assert browser.get("/api/docs/").status_code == 200
        # Ctrl-C reaches the terminal's foreground process group: the launcher only, not Redis, the fake LLM
        # server or the worker, which the launcher stops itself, in order (Redis last).
        children = children_of(child.pid)
        assert len(children) == 3, children  # Redis, the fake LLM server, the worker
        assert all(os.getpgid(pid) != os.getpgid(child.pid) for pid in children)
        child.sendintr()
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close(force=True)
    out = transcript.getvalue()
    assert child.exitstatus == 0, out
    assert "Traceback" not in out and "Error" not in out.replace("Error: budget_exceeded", ""), out
    # The budget message reads as money and is logged once (plus the launcher's own "Error:" line).
    assert out.count("reaching its budget of $0.00002") == 2, out
    assert "e-05" not in out
    # Every child is gone: the worker (its process) and the embedded Redis (its port).
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", redis_port), timeout=1):
        pass


def test_example_project_on_postgresql_beside_a_running_redis(tmp_path, private_redis):
    # What a user with a database and a Redis of their own has: DATABASE_URL set, a Redis that answers. Nothing then
    # made the launcher's var directory, where beat keeps its schedule file: beat died at start (no
    # monitor, no schedules) with a traceback in the output.
    from django.conf import settings

    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql"):
        pytest.skip("the PostgreSQL deployment")
    import psycopg

    name = f"{os.environ.get('AGENTFLOW_TEST_DB_NAME', 'test_agentflow')}_example"
    server = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"]}
    with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    var_dir = tmp_path / "var"  # not there yet, as in a fresh checkout
    env = example_env(var_dir)
    env.update(
        REDIS_URL=private_redis.url, DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}"
    )
    try:
        result = run_once(env)
    finally:
        with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Database: postgresql" in result.stdout and "Run completed" in result.stdout
    assert "Traceback" not in output
    assert any(path.name.startswith("celerybeat-schedule") for path in var_dir.iterdir())
