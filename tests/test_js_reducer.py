"""agentflow.js's reducer, in Node's own test runner, against the committed recordings (``tests/js/fixtures/``)
and the fresh ones this session's ``tests/test_client_state_fixtures.py`` wrote (it runs first: modules run in
name order). Part of ``python -m pytest``, so the README's one test command covers both languages."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import IN_CI, ROOT


def test_the_javascript_reducer_passes_its_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        if IN_CI:
            raise RuntimeError("Node.js is required in CI for agentflow.js's tests")
        pytest.skip("Node.js is not installed")
    done = subprocess.run(
        [node, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout
