"""Is everything agentflow needs there? The database, Redis, the broker, the cache and live workers.

:func:`report` answers, for the health endpoint (``GET /api/health/``, details for staff only) and
``manage.py agentflow doctor``. Every check is bounded by a few seconds and none raises: an unreachable
service is a check in error, with what to do. :func:`worker_notice` is the one-line version the admin,
``wait()`` and the synchronous API use to say that runs wait for a worker.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from django.conf import settings
from django.utils.module_loading import import_string

from .conf import DEFAULTS, agentflow_settings
from .workers import WorkerInfo, consuming, read_all

OK, WARNING, ERROR = "ok", "warning", "error"
_RANK = {OK: 0, WARNING: 1, ERROR: 2}
TIMEOUT_SECONDS = 3.0


@dataclass
class Check:
    name: str
    status: str  # ok, warning or error
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "summary": self.summary, **self.details}


@dataclass
class Report:
    checks: list[Check]
    workers: list[WorkerInfo]
    settings: dict[str, Any]

    @property
    def status(self) -> str:
        return max((check.status for check in self.checks), key=_RANK.__getitem__, default=OK)

    def as_dict(self) -> dict[str, Any]:
        import agentflow

        return {
            "status": self.status,
            "version": agentflow.__version__,
            "checks": {check.name: check.as_dict() for check in self.checks},
            "workers": [worker.as_dict() for worker in self.workers],
            "settings": self.settings,
        }


# -- masking ---------------------------------------------------------------------------------------------------

# Names that end in one of these words: "api_key", "SECRET", "password"; not "KEY_PREFIX" or "TOKEN_TTL".
_SECRET_NAME = re.compile(
    r"(^|_)(api_?key|secret|secret_key|password|passwd|token|credentials?)$", re.IGNORECASE
)
MASK = "********"


def mask_url(url: Any) -> Any:
    """``redis://user:secret@host/0`` -> ``redis://user:********@host/0``."""
    if not isinstance(url, str) or "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def masked(value: Any, name: str = "") -> Any:
    """``value`` with secrets hidden: values under secret-looking names, passwords in URLs."""
    secret = bool(name and _SECRET_NAME.search(name))
    if secret and value not in (None, "") and not isinstance(value, bool | dict | list | tuple):
        return MASK
    if isinstance(value, dict):
        return {key: masked(item, str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [masked(item, name) for item in value]
    return mask_url(value)


def effective_settings() -> dict[str, Any]:
    """Every AGENTFLOW key with the value in force (defaults included), the Celery broker and the cache in
    use, secrets masked."""
    from .setup_checks import project_celery_app

    agentflow = {key: masked(getattr(agentflow_settings, key.lower()), key) for key in DEFAULTS}
    app = project_celery_app()
    cache = settings.CACHES.get(str(agentflow_settings.cache_alias), {})
    return {
        "AGENTFLOW": agentflow,
        "CELERY": {
            "app": app.main if app is not None else None,
            "broker_url": mask_url(app.conf.broker_url) if app is not None else None,
        },
        "CACHE": {"BACKEND": cache.get("BACKEND"), "LOCATION": masked(cache.get("LOCATION"))},
    }


# -- the checks ------------------------------------------------------------------------------------------------


def uses_workers() -> bool:
    """Whether runs execute on workers elsewhere (Celery), rather than in this process."""
    try:
        executor = import_string(agentflow_settings.executor)
    except ImportError:
        return False
    return bool(getattr(executor, "uses_workers", False))


def _redis_client() -> redis.Redis:
    # Not the streams' shared client: short time-outs, so a report never hangs on an unreachable server.
    return redis.Redis.from_url(
        agentflow_settings.redis_url,
        socket_connect_timeout=TIMEOUT_SECONDS,
        socket_timeout=TIMEOUT_SECONDS,
        decode_responses=True,
    )


def _problem(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def check_database() -> Check:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    where = f"{connection.vendor} database {connection.settings_dict.get('NAME')!s}"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:
        return Check("database", ERROR, f"{where}: unreachable ({_problem(exc)})")
    pending = sorted(f"{m.app_label}.{m.name}" for m, _backwards in plan if m.app_label == "agentflow")
    if pending:
        return Check(
            "database",
            ERROR,
            f"{where}: {len(pending)} agentflow migration(s) not applied; run `manage.py migrate`",
            {"pending_migrations": pending},
        )
    return Check("database", OK, f"{where}: reachable, agentflow's migrations applied")


def check_redis(client: redis.Redis) -> Check:
    where = mask_url(agentflow_settings.redis_url)
    try:
        version = client.info("server").get("redis_version", "?")
    except Exception as exc:
        return Check("redis", ERROR, f"{where}: unreachable ({_problem(exc)})", {"url": where})
    return Check("redis", OK, f"{where}: reachable (Redis {version})", {"url": where, "version": version})


def check_broker() -> Check:
    from .setup_checks import project_celery_app

    if not uses_workers():
        return Check("broker", OK, f"not used: {agentflow_settings.executor} runs workflows in-process")
    app = project_celery_app()
    if app is None:
        return Check(
            "broker",
            ERROR,
            "no Celery app is loaded in this process, so runs are sent with Celery's defaults, where no "
            "worker listens: create one and import it in your project's __init__.py (see the tutorial)",
        )
    where = mask_url(app.conf.broker_url or "amqp://localhost (Celery's default)")
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=TIMEOUT_SECONDS)
    except Exception as exc:
        return Check("broker", ERROR, f"{where} (Celery app {app.main!r}): unreachable ({_problem(exc)})")
    return Check("broker", OK, f"{where} (Celery app {app.main!r}): reachable", {"app": app.main})


def check_cache() -> Check:
    from django.core.cache import caches

    alias = str(agentflow_settings.cache_alias)
    key = f"{agentflow_settings.key_prefix}health:{uuid.uuid4().hex}"
    try:
        cache = caches[alias]
        cache.set(key, "1", timeout=10)
        found = cache.get(key)
        cache.delete(key)
    except Exception as exc:
        return Check("cache", ERROR, f"cache {alias!r}: unreachable ({_problem(exc)})")
    backend = settings.CACHES.get(alias, {}).get("BACKEND", "?")
    if found != "1" and not backend.endswith("DummyCache"):
        return Check("cache", ERROR, f"cache {alias!r} ({backend}) did not keep a value")
    return Check("cache", OK, f"cache {alias!r} ({backend}): reachable")


def no_worker_message(queue: str) -> str:
    return (
        f"no live worker consumes queue {queue!r}: start one, e.g. "
        f"`celery -A <your project> worker -Q {agentflow_settings.task_queue},{agentflow_settings.monitor_queue}`"
    )


def check_workers(found: list[WorkerInfo]) -> list[Check]:
    if not uses_workers():
        return [Check("workers", OK, f"not used: {agentflow_settings.executor} runs workflows in-process")]
    live = [w for w in found if w.alive]
    dead = [w for w in found if not w.alive]
    details = {"live": len(live), "dead": len(dead)}
    task_queue, monitor_queue = str(agentflow_settings.task_queue), str(agentflow_settings.monitor_queue)
    checks: list[Check] = []
    runners = consuming(task_queue, live)
    if runners:
        free = sum(w.free_slots for w in runners)
        checks.append(
            Check(
                "workers",
                OK,
                f"{len(runners)} live worker(s) consume queue {task_queue!r}, {free} free slot(s)",
                details,
            )
        )
    else:
        summary = no_worker_message(task_queue)
        if dead:
            summary += f" ({len(dead)} worker(s) stopped beating in the last hour)"
        checks.append(Check("workers", ERROR, summary, details))
    if not consuming(monitor_queue, live):
        checks.append(
            Check(
                "monitor",
                WARNING,
                f"no live worker consumes the monitor queue {monitor_queue!r}: the runs of dead workers are "
                "recovered only if Celery beat and such a worker run (or `manage.py agentflow_monitor`)",
            )
        )
    return checks


def report() -> Report:
    """Check everything; never raises."""
    client = _redis_client()
    checks = [check_database(), check_redis(client), check_broker(), check_cache()]
    workers: list[WorkerInfo] = []
    if checks[1].status == OK:
        try:
            workers = read_all(client)
        except Exception as exc:
            checks.append(Check("workers", ERROR, f"cannot read the worker registry ({_problem(exc)})"))
        else:
            checks.extend(check_workers(workers))
    elif uses_workers():
        checks.append(
            Check("workers", ERROR, "unknown: the worker registry is in Redis, which is unreachable")
        )
    client.close()
    return Report(checks=checks, workers=workers, settings=effective_settings())


#: How long a process reuses what the worker registry said for :func:`cached_worker_notice`, at most: never
#: longer than ``SSE_KEEPALIVE_SECONDS``, so that a notice is at most one keep-alive old.
NOTICE_CACHE_SECONDS = 5.0


def _notice_max_age_seconds() -> float:
    return min(NOTICE_CACHE_SECONDS, float(agentflow_settings.sse_keepalive_seconds))


_notices: dict[str, tuple[float, str | None]] = {}
_notices_lock = threading.Lock()


def cached_worker_notice(queue: str | None = None) -> str | None:
    """:func:`worker_notice`, from the registry at most once every ``NOTICE_CACHE_SECONDS`` (or
    ``SSE_KEEPALIVE_SECONDS``, if shorter) per process and queue: for what every open event stream of a
    queued run repeats (one read for all of them)."""
    queue = queue or str(agentflow_settings.task_queue)
    with _notices_lock:  # one refresh at a time: streams asking meanwhile get its answer
        known = _notices.get(queue)
        if known is None or time.monotonic() - known[0] >= _notice_max_age_seconds():
            known = _notices[queue] = (time.monotonic(), worker_notice(queue))
    return known[1]


def fresh_worker_notice(queue: str | None = None) -> tuple[bool, str | None]:
    """``(True, notice)`` when :func:`cached_worker_notice` would answer without reading Redis, else
    ``(False, None)``: async code then asks it in a thread."""
    known = _notices.get(queue or str(agentflow_settings.task_queue))
    if known is not None and time.monotonic() - known[0] < _notice_max_age_seconds():
        return True, known[1]
    return False, None


def worker_notice(queue: str | None = None) -> str | None:
    """``"no live worker consumes queue 'agentflow': ..."``, or None when one does, runs execute in-process,
    or the registry cannot be read (then nothing can be said)."""
    if not uses_workers():
        return None
    queue = queue or str(agentflow_settings.task_queue)
    client = _redis_client()
    try:
        live = [w for w in read_all(client) if w.alive]
    except Exception:
        return None
    finally:
        client.close()
    return None if consuming(queue, live) else no_worker_message(queue)
