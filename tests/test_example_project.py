"""The README's first command works on a machine without Redis: embedded Redis, SQLite, a real worker."""

from __future__ import annotations

import os
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
        if key not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE"}
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
    assert "[run.started]" in out and "[run.completed]" in out
    assert out.count("[step.completed] draft#") == 5
    assert "Run completed" in out and "15 words" in out
    assert (tmp_path / "example.sqlite3").exists()
