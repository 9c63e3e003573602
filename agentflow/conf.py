"""agentflow's settings: one ``AGENTFLOW = {...}`` dict, read lazily so ``override_settings`` works.

    from agentflow.conf import agentflow_settings
    agentflow_settings.stream_maxlen

Every key, its default and its meaning is in docs/reference/settings.md; ``agentflow.checks`` validates them.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Redis holding the run streams. None: $REDIS_URL, else redis://127.0.0.1:6379/0.
    "REDIS_URL": None,
    # Prefix of every Redis key (streams, leases, cache entries of components).
    "KEY_PREFIX": "agentflow:",
    # Import path of the executor class that runs workflows ("...CeleryExecutor" or "...InProcessExecutor").
    "EXECUTOR": "agentflow.executors.CeleryExecutor",
    # Celery queue of run tasks, and of the monitor's task (its own, so a backlog of runs cannot starve it).
    "TASK_QUEUE": "agentflow",
    "MONITOR_QUEUE": "agentflow-monitor",
    # Django cache alias used by component.cache().
    "CACHE_ALIAS": "default",
    # Approximate cap on each run stream's length (XADD MAXLEN ~).
    "STREAM_MAXLEN": 100_000,
    # How long a finished run's stream stays in Redis; its events are archived to the DB before.
    "STREAM_TTL_SECONDS": 24 * 3600,
    # Copy a finished run's events into the DB (RunEvent), so history outlives the stream.
    "ARCHIVE_EVENTS": True,
    # Retention (agentflow.retention.prune, the agentflow.prune task, manage.py agentflow_prune): finished runs
    # older than RETENTION_DAYS are deleted with their steps and events; their archived events alone may go
    # earlier, after EVENT_RETENTION_DAYS. None keeps them forever.
    "RETENTION_DAYS": None,
    "EVENT_RETENTION_DAYS": None,
    # A worker renews its lease on a run every HEARTBEAT_INTERVAL_SECONDS; a run whose lease is older than
    # LEASE_SECONDS is taken over by the monitor.
    "HEARTBEAT_INTERVAL_SECONDS": 5.0,
    "LEASE_SECONDS": 30.0,
    # A run recovered more often than this is failed instead (a crash loop is not retried forever).
    "MAX_RECOVERIES": 5,
    # The monitor sends a run's message again when it was lost. With Celery it tells a lost message from one
    # waiting behind others by the queue itself; with an executor that keeps no queue it can read, a run still
    # waiting for a worker QUEUED_TIMEOUT_SECONDS after its message was sent is sent again.
    "QUEUED_TIMEOUT_SECONDS": 300.0,
    # How long start(), resume() and the runner wait for the broker to accept a run's message; a message it
    # did not accept stays owed (agentflow.dispatch) and is sent again every DISPATCH_RETRY_INTERVAL_SECONDS
    # (by the process that failed for a while, by every worker and by the monitor) until it is.
    "DISPATCH_TIMEOUT_SECONDS": 2.0,
    "DISPATCH_RETRY_INTERVAL_SECONDS": 1.0,
    # A worker hands a run back (re-enqueues it) at the first step boundary after SLICE_SECONDS, so no task
    # outlives the broker's visibility timeout and a deploy drains within one slice.
    "SLICE_SECONDS": 300.0,
    # A retry delay or agentflow.sleep() longer than this suspends the run (status waiting), freeing the
    # worker; shorter waits block in-process.
    "SUSPEND_THRESHOLD_SECONDS": 30.0,
    # On warm shutdown (SIGTERM) a worker hands its runs back at their next step boundary; a step still
    # running after DRAIN_SECONDS is abandoned (the process exits) and the monitor recovers its run.
    "DRAIN_SECONDS": 30.0,
    # Checkpoints as server-side prepared statements on PostgreSQL (faster). Turn off behind a connection
    # pooler that cannot keep prepared statements, such as PgBouncer in transaction mode before 1.21.
    "PREPARED_STATEMENTS": True,
    # Celery worker processes freeze the objects alive once they are ready (gc.freeze()), so the garbage
    # collector's full collections, triggered by what runs allocate, no longer scan the whole start-up heap.
    "WORKER_GC_FREEZE": True,
    # How long a run's stream token (for browsers' websockets and EventSource) stays valid.
    "STREAM_TOKEN_TTL_SECONDS": 3600.0,
    # Default bound of agentflow.wait() and of synchronous API runs.
    "WAIT_TIMEOUT_SECONDS": 300.0,
    # Server-sent events: a comment line every SSE_KEEPALIVE_SECONDS while a stream is idle (so proxies keep
    # the connection open), and the reconnection delay suggested to EventSource (the `retry:` field).
    "SSE_KEEPALIVE_SECONDS": 15.0,
    "SSE_RETRY_SECONDS": 3.0,
    # Websockets: a keep-alive message this often to clients that ask for it (?keepalive=1), by which they
    # notice a connection that died without a close (agentflow.keepalive).
    "WEBSOCKET_KEEPALIVE_SECONDS": 15.0,
    # Events a live subscriber (websocket or SSE) may fall behind before it is dropped; its client reconnects
    # with its last event id, while the other subscribers carry on undelayed.
    "SUBSCRIBER_QUEUE_SIZE": 1000,
    # When a watched run's stream shows no new event for this long, its status is re-read from the DB, so a
    # subscriber never waits forever on a run that finished without a terminal event in its stream.
    "STREAM_IDLE_CHECK_SECONDS": 10.0,
    # REST API (agentflow.urls): the largest request body accepted as a run's input (a bigger one is answered
    # 413), the page size of runs/, and the default and largest page (?limit=) of a run's events/.
    "MAX_INPUT_BYTES": 1024 * 1024,
    "RUNS_PAGE_SIZE": 50,
    "EVENTS_PAGE_SIZE": 100,
    "EVENTS_MAX_PAGE_SIZE": 1000,
    # Shared rate limits (agentflow.ratelimit): {"<provider>:<model>" or "<provider>:*" or "*":
    # {"requests_per_minute": N, "tokens_per_minute": M}}; a limit key takes the most specific pattern.
    "RATE_LIMITS": {},
    # The length of a rate limit's "minute". Only tests should shorten it.
    "RATE_LIMIT_WINDOW_SECONDS": 60.0,
    # How much the delays from a rate-limit grant to the request's arrival at the provider may differ: the
    # limiter's window spans RATE_LIMIT_WINDOW_SECONDS plus this, so the limit holds on the provider's clock.
    "RATE_LIMIT_JITTER_SECONDS": 1.0,
    # The LLM layer (agentflow.llm). LLM_PROVIDERS: the OpenAI-compatible providers a client built without
    # api_key/base_url uses, in fallback order: [{"name": "openai", "base_url": ..., "api_key": ...,
    # "models": {"<requested>": "<provider's model>"}}, ...]. None: one provider "openai" from the
    # OPENAI_API_KEY and OPENAI_BASE_URL environment variables, like the openai SDK.
    "LLM_PROVIDERS": None,
    # USD per million tokens: {"<model or glob>": {"input": 0.15, "output": 0.60}}; the most specific wins.
    "LLM_PRICES": {},
    # Provider calls in flight at once: per run, and per worker process (all runs of the process together).
    "LLM_MAX_CONCURRENCY_PER_RUN": 256,
    "LLM_MAX_CONCURRENCY_PER_WORKER": 1024,
    # Streamed tokens are forwarded to the run's stream at most once per this many seconds (coalesced).
    "LLM_STREAM_COALESCE_SECONDS": 0.05,
    # A provider failing this many times in a row (5xx, connection errors, time-outs; not 429s) is skipped by
    # the calls of this worker process for LLM_PROVIDER_COOLDOWN_SECONDS, when another provider serves them.
    "LLM_PROVIDER_FAILURE_THRESHOLD": 3,
    "LLM_PROVIDER_COOLDOWN_SECONDS": 30.0,
    # Schedules (agentflow.schedules) declared in settings: {"<name>": {"workflow": ..., "cron": "0 9 * * *"
    # or "every_seconds": 3600, "input": {...}, "catch_up": "latest" | "all" | "skip", "timezone": ...}}.
    "SCHEDULES": {},
    # Celery beat sends the agentflow.schedules task this often (agentflow.tasks.beat_schedule()); a tick starts
    # at most this long after its time.
    "SCHEDULER_INTERVAL_SECONDS": 5.0,
    # A tick due longer ago than this (no scheduler ran meanwhile) is "missed": its schedule's catch_up policy
    # decides whether it still gets a run. Ticks within it always do (a beat restart loses none).
    "SCHEDULE_GRACE_SECONDS": 300.0,
}

REMOVED: dict[str, str] = {}


class AgentflowSettings:
    """Attribute access to ``settings.AGENTFLOW`` merged over :data:`DEFAULTS` (``stream_maxlen`` ...)."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, "AGENTFLOW", {})
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        key = name.upper()
        if name.startswith("_") or key not in DEFAULTS:
            raise AttributeError(f"agentflow has no setting {name!r}")
        try:
            return self._cache[key]
        except KeyError:
            pass
        value = self.user_settings.get(key, DEFAULTS[key])
        if key == "REDIS_URL" and not value:
            value = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        self._cache[key] = value
        return value

    def reload(self) -> None:
        self._cache.clear()


agentflow_settings = AgentflowSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "AGENTFLOW":
        agentflow_settings.reload()
        from . import streams

        streams.reset_clients()


setting_changed.connect(_reload)
