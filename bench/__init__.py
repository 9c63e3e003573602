"""agentflow's benchmarks (see README). What every script shares lives here; the streaming benchmarks'
set-up is in bench/_streaming.py."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from typing import Any


class Deadline(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise Deadline("the benchmark ran past its deadline")


def arm_deadline(seconds: float) -> None:
    """Abort the benchmark (cleanups run: they are in ``finally`` blocks) after ``seconds``."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(seconds)))


def disarm_deadline() -> None:
    signal.alarm(0)


def event_time(ts: str) -> float:
    """An event's ``ts`` (ISO 8601, ``Z``) as a Unix time."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def wait_until(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.005) -> Any:
    """``predicate()``'s first true value, polled every ``poll_s``; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


BENCH_MARKER = "agentflow-bench:this-database-belongs-to-the-bench"


def claim_redis() -> None:
    """Stop unless ``BENCH_REDIS_URL``'s database is the bench's: empty (then marked) or marked already.

    The benchmarks delete keys by pattern (Celery's results and queues among them), so, like the test suite
    (tests/redisdb.py), they refuse a database holding keys they did not mark. Needs Django set up.
    """
    import redis
    from django.conf import settings

    from tests.redisdb import NotOurDatabase, claim

    try:
        claim(redis.Redis.from_url(settings.BENCH_REDIS_URL), marker=BENCH_MARKER, variable="BENCH_REDIS_URL")
    except NotOurDatabase as exc:
        raise SystemExit(str(exc)) from None
