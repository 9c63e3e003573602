"""The suite never empties a Redis database it did not mark as its own (tests/redisdb.py).

Each test runs the suite's own fixtures (tests/conftest.py) in a pytest subprocess on a tiny test, against a
private redis-server, with ``REDIS_URL`` pointing at a database that holds a user's key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT
from tests.redisdb import MARKER, PrivateRedis

pytestmark = pytest.mark.integration

TINY_TEST = """
def test_writes_to_the_test_redis(redis_client):
    redis_client.set("agentflow-tests:tiny", "1")
"""


def run_suite_fixtures(
    tmp_path: Path, *, redis_url: str, test_redis_url: str
) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_tiny.py"
    test_file.write_text(TINY_TEST)
    env = {**os.environ, "REDIS_URL": redis_url, "AGENTFLOW_TEST_REDIS_URL": test_redis_url, "CI": "true"}
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", str(ROOT / "pyproject.toml"),
            "--rootdir", str(ROOT), "-p", "no:cacheprovider", "-q", str(test_file),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_suite_flushes_only_its_own_database_never_redis_url(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    users = redis.Redis.from_url(private_redis.db_url(0))
    users.set("precious", "user data")
    ours = redis.Redis.from_url(private_redis.db_url(1))

    result = run_suite_fixtures(
        tmp_path, redis_url=private_redis.db_url(0), test_redis_url=private_redis.db_url(1)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert users.get("precious") == b"user data"  # REDIS_URL's database is left alone
    assert ours.get("agentflow-tests:tiny") == b"1"  # the suite used AGENTFLOW_TEST_REDIS_URL's
    assert ours.exists(MARKER)  # ... and marked it, empty as it was

    # The next session flushes what the last one left in its own (marked) database.
    ours.set("left-over", "1")
    result = run_suite_fixtures(
        tmp_path, redis_url=private_redis.db_url(0), test_redis_url=private_redis.db_url(1)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not ours.exists("left-over")
    assert users.get("precious") == b"user data"


def test_the_suite_refuses_a_non_empty_database_it_did_not_mark(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    theirs = redis.Redis.from_url(private_redis.db_url(2))
    theirs.set("precious", "user data")

    result = run_suite_fixtures(
        tmp_path, redis_url=private_redis.db_url(0), test_redis_url=private_redis.db_url(2)
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert f"127.0.0.1:{private_redis.port}/2 holds 1 keys and is not marked as a test database" in output
    assert "Point AGENTFLOW_TEST_REDIS_URL at an empty Redis database" in output
    assert theirs.get("precious") == b"user data"
    assert not theirs.exists(MARKER)
