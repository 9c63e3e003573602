"""The README's first command works on a machine without Redis or an OpenAI key: embedded Redis, SQLite, a real
worker, and the fake OpenAI server in its own process behind the blog workflow's LLM calls."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_example_project_runs_the_blog_post_workflow_on_the_embedded_default(tmp_path):
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
    result = subprocess.run(
        [sys.executable, "-m", "example_project", "--no-serve", "--words", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    usage = re.search(r"LLM usage: (\d+) calls, (\d+) prompt \+ (\d+) completion tokens, \$([0-9.]+)", out)
    assert usage is not None, out
    calls, completion_tokens, cost = int(usage[1]), int(usage[3]), float(usage[4])
    assert calls == 6 and completion_tokens == 6 * 3 and cost > 0  # fake-model is priced in the settings
    assert "Budget: $0.05 a run" in out
    assert (tmp_path / "example.sqlite3").exists()
