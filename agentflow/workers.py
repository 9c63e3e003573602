"""The worker registry: which Celery workers are alive, what they consume and what they hold.

Each worker's main process registers when it is ready (the ``worker_ready`` signal, wired in
:mod:`agentflow.tasks`) and a thread rewrites its registration every ``HEARTBEAT_INTERVAL_SECONDS``: one
pipelined ``SET ... EX`` and ``ZADD``. The registration expires ``LEASE_SECONDS`` after the last beat, like a
run's lease, so a killed worker disappears by itself; a warm shutdown removes it at once.

    {prefix}workers              sorted set: worker id -> last beat (epoch seconds)
    {prefix}worker:{worker id}   JSON of :class:`WorkerInfo`, expiring LEASE_SECONDS after the last beat

:func:`live` reads them (the health endpoint, ``manage.py agentflow doctor``, the admin, ``wait()``); a
worker that beat within the last hour but whose registration expired is reported as dead
(:func:`recently_dead`). Run counts come from Celery's own bookkeeping of the main process
(``celery.worker.state.active_requests``), which sees the tasks of every pool, prefork children included.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import redis

from .conf import agentflow_settings
from .core import keys

logger = logging.getLogger("agentflow.workers")

RUN_TASK = "agentflow.execute_run"
# Members of the sorted set older than this are dropped by the next beat: "recently dead" means this recent.
FORGET_SECONDS = 3600.0
# A registration lists at most this many of the runs it holds (the count is exact).
LISTED_RUNS = 50


@dataclass
class WorkerInfo:
    id: str
    name: str  # Celery's node name, "celery@host"
    host: str
    pid: int
    queues: list[str]
    version: str
    concurrency: int
    runs_held: int
    runs: list[str]
    free_slots: int
    started_at: str  # ISO 8601
    last_beat_at: float  # epoch seconds
    state: str = "running"  # or "draining" (warm shutdown begun)
    alive: bool = True
    seconds_since_beat: float = field(default=0.0, compare=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_beat_at"] = datetime.fromtimestamp(self.last_beat_at, tz=UTC).isoformat()
        data["seconds_since_beat"] = round(self.seconds_since_beat, 1)
        return data


def _prefix() -> str:
    return str(agentflow_settings.key_prefix)


def _ttl_seconds() -> float:
    return float(agentflow_settings.lease_seconds)


def read_all(client: redis.Redis) -> list[WorkerInfo]:
    """Every worker that beat within the last hour, live ones first; dead ones have ``alive=False``."""
    now = time.time()
    members = cast(
        list[tuple[Any, float]],
        client.zrangebyscore(keys.workers(_prefix()), now - FORGET_SECONDS, "+inf", withscores=True),
    )
    if not members:
        return []
    ids = [m.decode() if isinstance(m, bytes) else str(m) for m, _score in members]
    blobs = client.mget([keys.worker(_prefix(), worker_id) for worker_id in ids])
    found: list[WorkerInfo] = []
    for worker_id, (_member, score), blob in zip(ids, members, blobs, strict=True):
        if blob:
            data = json.loads(blob)
            data.pop("alive", None)
            data.pop("seconds_since_beat", None)
            info = WorkerInfo(**data)
        else:  # expired: its heartbeats stopped without a warm shutdown (killed, frozen, cut off)
            name, _, pid = worker_id.rpartition(":")
            info = WorkerInfo(
                id=worker_id, name=name, host=name.rpartition("@")[2], pid=int(pid or 0), queues=[],
                version="", concurrency=0, runs_held=0, runs=[], free_slots=0, started_at="",
                last_beat_at=float(score), state="dead", alive=False,
            )  # fmt: skip
        info.seconds_since_beat = max(0.0, now - info.last_beat_at)
        found.append(info)
    found.sort(key=lambda w: (not w.alive, w.name, w.pid))
    return found


def live(client: redis.Redis | None = None) -> list[WorkerInfo]:
    """The workers alive now (their registration has not expired)."""
    from .streams import get_client

    return [w for w in read_all(client or get_client()) if w.alive]


def recently_dead(client: redis.Redis | None = None) -> list[WorkerInfo]:
    """Workers whose heartbeats stopped within the last hour without a warm shutdown."""
    from .streams import get_client

    return [w for w in read_all(client or get_client()) if not w.alive]


def consuming(queue: str, workers: list[WorkerInfo]) -> list[WorkerInfo]:
    """The workers of ``workers`` that consume ``queue``."""
    return [w for w in workers if queue in w.queues and w.alive]


# -- the worker side -------------------------------------------------------------------------------------------


class Heartbeat:
    """Registers this worker process and keeps its registration alive (a daemon thread)."""

    def __init__(self, consumer: Any) -> None:
        import agentflow

        self.consumer = consumer
        controller = getattr(consumer, "controller", None)
        self.name = str(getattr(consumer, "hostname", None) or getattr(controller, "hostname", "celery"))
        self.pid = os.getpid()
        self.id = f"{self.name}:{self.pid}"
        self.concurrency = int(getattr(controller, "concurrency", None) or 1)
        self.version = agentflow.__version__
        self.started_at = datetime.now(UTC).isoformat()
        self.state = "running"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentflow-worker-heartbeat", daemon=True)

    def queues(self) -> list[str]:
        task_consumer = getattr(self.consumer, "task_consumer", None)
        queues = getattr(task_consumer, "queues", None)
        if queues is None:  # before the consumer started: what the app was told to consume (-Q)
            queues = list(self.consumer.app.amqp.queues.consume_from.values())
        return sorted({queue.name for queue in queues})

    def snapshot(self) -> WorkerInfo:
        from celery.worker import state

        requests = list(state.active_requests)
        runs = [str(r.args[0]) for r in requests if r.name == RUN_TASK and r.args]
        return WorkerInfo(
            id=self.id,
            name=self.name,
            host=socket.gethostname(),
            pid=self.pid,
            queues=self.queues(),
            version=self.version,
            concurrency=self.concurrency,
            runs_held=len(runs),
            runs=runs[:LISTED_RUNS],
            free_slots=max(0, self.concurrency - len(requests)),
            started_at=self.started_at,
            last_beat_at=time.time(),
            state=self.state,
        )

    def beat(self) -> None:
        from .streams import get_client

        info = self.snapshot()
        blob = json.dumps(info.as_dict() | {"last_beat_at": info.last_beat_at})
        prefix, ttl_ms = _prefix(), max(1, int(_ttl_seconds() * 1000))
        pipe = get_client().pipeline(transaction=False)
        pipe.set(keys.worker(prefix, self.id), blob, px=ttl_ms)
        pipe.zadd(keys.workers(prefix), {self.id: info.last_beat_at})
        pipe.zremrangebyscore(keys.workers(prefix), "-inf", info.last_beat_at - FORGET_SECONDS)
        pipe.execute()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        interval = float(agentflow_settings.heartbeat_interval_seconds)
        while True:
            try:
                self.beat()
            except Exception:  # Redis blip: the next beat tries again; the registration may expire meanwhile
                logger.warning("worker registry: heartbeat failed", exc_info=True)
            if self._stop.wait(interval):
                return

    def draining(self) -> None:
        """Warm shutdown began: say so at the next beat (no I/O here: this runs in a signal handler)."""
        self.state = "draining"

    def stop(self) -> None:
        """Stop beating and remove the registration: a worker that shut down warmly is not dead."""
        from .streams import get_client

        self._stop.set()
        self._thread.join(timeout=5)
        prefix = _prefix()
        try:
            pipe = get_client().pipeline(transaction=False)
            pipe.delete(keys.worker(prefix, self.id))
            pipe.zrem(keys.workers(prefix), self.id)
            pipe.execute()
        except Exception:  # it expires by itself
            logger.warning("worker registry: cannot remove this worker's registration", exc_info=True)


_heartbeat: Heartbeat | None = None


def start_heartbeat(consumer: Any) -> None:
    """In a worker's main process, once it is ready to consume (``worker_ready``)."""
    global _heartbeat
    if _heartbeat is not None:  # a consumer restarted after a broker reconnection: keep beating
        _heartbeat.consumer = consumer
        return
    _heartbeat = Heartbeat(consumer)
    _heartbeat.start()


def mark_draining() -> None:
    if _heartbeat is not None:
        _heartbeat.draining()


def stop_heartbeat() -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
