"""Checkpoints in the database, fenced by the run's epoch, and the lease a worker holds on a run."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db import close_old_connections, connection

from .conf import agentflow_settings
from .core.context import Checkpoint, StepRecord
from .core.errors import LeaseLost, RunCancelled
from .models import StepRun, WorkflowRun

logger = logging.getLogger("agentflow.store")


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _psycopg3(conn: Any) -> bool:
    """Prepared checkpoints need psycopg 3 (Django also supports psycopg2, which cannot prepare)."""
    return bool(getattr(conn, "is_psycopg3", False))


def load_checkpoints(run_id: str, *, include_failed: bool = True) -> dict[str, Checkpoint]:
    """All of a run's checkpoints in one query: replay is then a dictionary lookup."""
    rows = StepRun.objects.filter(run__pk=run_id).values_list(
        "step_id", "status", "output", "error", "attempts", "input_hash", "usage"
    )
    return {
        step_id: Checkpoint(status, output, error, attempts, input_hash or None, usage)
        for step_id, status, output, error, attempts, input_hash, usage in rows
        if include_failed or status == "completed"
    }


class DjangoRunStore:
    """Writes each checkpoint with one statement that is a no-op unless the run still has our epoch."""

    def __init__(self, run_id: str, epoch: int) -> None:
        self.run_id = str(run_id)
        self.epoch = epoch
        self._sql: str | None = None
        # Django refuses DB access from a thread running an event loop, so async workflows write from here.
        self._db_thread: concurrent.futures.ThreadPoolExecutor | None = None
        # Checkpoints of concurrent steps waiting for the DB thread: written together, in one statement.
        self._pending: list[tuple[StepRecord, concurrent.futures.Future[None]]] = []
        # Their statement parameters, made (and checked) in the thread that queued them: by id(record).
        self._pending_params: dict[int, list[Any]] = {}
        self._pending_lock = threading.Lock()
        self._drain_scheduled = False

    def _statement(self) -> str:
        if self._sql is None:
            steps, runs = StepRun._meta.db_table, WorkflowRun._meta.db_table
            postgresql = connection.vendor == "postgresql"
            json = "%s::jsonb" if postgresql else "%s"
            # FOR KEY SHARE: a claim holding the run row (FOR UPDATE, epoch bump) makes this statement wait and
            # then re-check the epoch, so a stale incarnation inserts nothing (without it the epoch is read
            # from the statement's snapshot). SQLite serialises writers, so it needs no lock clause.
            lock = "FOR KEY SHARE " if postgresql else ""
            self._sql = (
                f"INSERT INTO {steps} (run_id, step_id, parent_id, component, status, input, input_hash, output, "
                f"error, attempts, cached, started_at, finished_at, usage, epoch) "
                f"SELECT id, %s, %s, %s, %s, {json}, %s, {json}, {json}, %s, %s, %s, %s, {json}, epoch "
                f"FROM {runs} "
                f"WHERE id = %s AND epoch = %s {lock}"
                f"ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, input = excluded.input, "
                f"input_hash = excluded.input_hash, output = excluded.output, error = excluded.error, "
                f"attempts = excluded.attempts, cached = excluded.cached, started_at = excluded.started_at, "
                f"finished_at = excluded.finished_at, usage = excluded.usage, epoch = excluded.epoch"
            )
        return self._sql

    def _params(self, record: StepRecord) -> list[Any]:
        """The statement's parameters; ``SerializationError`` naming the field and the JSON path when the
        checkpoint holds what ``jsonb`` cannot (raised in the caller's thread, before anything is queued)."""
        input, output, error, usage = record.encoded()
        return [
            record.step_id,
            record.parent_id,
            record.component,
            record.status,
            input,
            record.input_hash,
            output,
            error,
            record.attempts,
            record.cached,
            _ts(record.started_at or record.finished_at),
            _ts(record.finished_at),
            usage,
            uuid.UUID(self.run_id),
            self.epoch,
        ]

    def _write(self, record: StepRecord, params: list[Any] | None = None) -> None:
        params = self._params(record) if params is None else params
        if (
            connection.vendor == "postgresql"
            and agentflow_settings.prepared_statements
            and _psycopg3(connection)
        ):
            rowcount = self._execute_prepared(params)
        else:
            ops = connection.ops
            params[10] = ops.adapt_datetimefield_value(params[10])
            params[11] = ops.adapt_datetimefield_value(params[11])
            params[13] = WorkflowRun._meta.pk.get_db_prep_value(params[13], connection)
            with connection.cursor() as cursor:
                cursor.execute(self._statement(), params)
                rowcount = cursor.rowcount
        if rowcount == 0:
            raise LeaseLost(
                f"run {self.run_id}: epoch {self.epoch} is stale, checkpoint {record.step_id!r} refused"
            )

    def _execute_prepared(self, params: list[Any]) -> int:
        # The checkpoint is the hot path of every step: as a server-side prepared statement PostgreSQL does not
        # parse and plan it again each time (measured: ~200 µs instead of ~320 µs a step). Django disables
        # prepared statements (prepare_threshold=None); a huge threshold keeps every other query unprepared.
        import psycopg

        connection.ensure_connection()
        raw = connection.connection
        if raw.prepare_threshold is None:
            raw.prepare_threshold = 1_000_000
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(self._statement(), params, prepare=True)
            return cursor.rowcount

    def _batch_statement(self, rows: int) -> str:
        """The checkpoint statement for ``rows`` checkpoints at once (PostgreSQL): one round trip, one fence."""
        steps, runs = StepRun._meta.db_table, WorkflowRun._meta.db_table
        row = (
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s::integer, %s::boolean, %s::timestamptz, %s::timestamptz, %s)"
        )
        return (
            f"INSERT INTO {steps} (run_id, step_id, parent_id, component, status, input, input_hash, output, "
            f"error, attempts, cached, started_at, finished_at, usage, epoch) "
            f"SELECT r.id, v.step_id, v.parent_id, v.component, v.status, v.input::jsonb, v.input_hash, "
            f"v.output::jsonb, v.error::jsonb, v.attempts, v.cached, v.started_at, v.finished_at, "
            f"v.usage::jsonb, r.epoch FROM {runs} r CROSS JOIN (VALUES {', '.join([row] * rows)}) AS v(step_id, "
            f"parent_id, component, status, input, input_hash, output, error, attempts, cached, started_at, "
            f"finished_at, usage) WHERE r.id = %s AND r.epoch = %s FOR KEY SHARE OF r "
            f"ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, input = excluded.input, "
            f"input_hash = excluded.input_hash, output = excluded.output, error = excluded.error, "
            f"attempts = excluded.attempts, cached = excluded.cached, started_at = excluded.started_at, "
            f"finished_at = excluded.finished_at, usage = excluded.usage, epoch = excluded.epoch"
        )

    def _write_many(self, records: list[StepRecord]) -> None:
        """Write checkpoints of concurrent steps together; all or none (``LeaseLost``)."""
        made = [self._pending_params.pop(id(record), []) or self._params(record) for record in records]
        latest = {record.step_id: (record, one) for record, one in zip(records, made, strict=True)}
        if len(latest) == 1 or connection.vendor != "postgresql":  # a step saved twice: its last record
            for record, one in latest.values():
                self._write(record, one)
            return
        params: list[Any] = []
        for _record, one in latest.values():
            params += one[:13]
        params += [uuid.UUID(self.run_id), self.epoch]
        with connection.cursor() as cursor:
            cursor.execute(self._batch_statement(len(latest)), params)
            rowcount = cursor.rowcount
        if rowcount == 0:
            raise LeaseLost(
                f"run {self.run_id}: epoch {self.epoch} is stale, {len(latest)} checkpoints refused"
            )

    def _drain(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._drain_scheduled = False
        try:
            self._write_many([record for record, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                future.set_exception(exc)
        else:
            for _, future in batch:
                future.set_result(None)

    def _in_db_thread(self, record: StepRecord) -> concurrent.futures.Future[None]:
        """Queue a checkpoint for the DB thread. Those queued while it writes are written next, together
        (group commit): a fan-out of hundreds of steps costs a few statements, not hundreds."""
        params = self._params(record)  # here: a checkpoint that cannot be stored fails its own step only
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._pending_lock:
            if self._db_thread is None:
                self._db_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentflow-db")
            self._pending.append((record, future))
            self._pending_params[id(record)] = params
            if not self._drain_scheduled:
                self._drain_scheduled = True
                self._db_thread.submit(self._drain)
        return future

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in this thread, or in the DB thread when this thread runs an event loop (Django forbids
        synchronous queries there): the wait service's queries of async workflows go through here."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn()
        with self._pending_lock:
            if self._db_thread is None:
                self._db_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentflow-db")
            pool = self._db_thread
        return pool.submit(fn).result()

    def save_step(self, record: StepRecord) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._write(record)
        else:
            self._in_db_thread(record).result()

    async def asave_step(self, record: StepRecord) -> None:
        await asyncio.wrap_future(self._in_db_thread(record))

    def close(self) -> None:
        if self._db_thread is not None:
            self._db_thread.submit(lambda: connection.close()).result()
            self._db_thread.shutdown()
            self._db_thread = None


class Lease:
    """Renews the worker's lease on a run from a thread, so it keeps beating while user code blocks.

    It also notices a cancellation request or a lost lease; :meth:`check` raises them at the engine's next
    boundary.
    """

    def __init__(self, run_id: str, epoch: int, interval_seconds: float) -> None:
        self.run_id = str(run_id)
        self.epoch = epoch
        self.interval_seconds = interval_seconds
        self.lost = False
        self.cancelled = False
        # The run's usage totals, written with each beat when they changed (for the API and the admin).
        self.usage: Callable[[], dict[str, Any]] | None = None
        self._usage_written: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"agentflow-lease-{run_id}", daemon=True)

    def start(self) -> Lease:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"run {self.run_id}: lease of epoch {self.epoch} lost")
        if self.cancelled:
            raise RunCancelled(f"run {self.run_id} was cancelled")

    def beat(self) -> None:
        """Renew the lease and read the cancellation flag in one statement (``UPDATE ... RETURNING``); no row
        means another incarnation has the run. The run's usage totals go along when they changed."""
        from django.utils import timezone

        table = WorkflowRun._meta.db_table
        sets = ["heartbeat_at = %s"]
        params: list[Any] = [connection.ops.adapt_datetimefield_value(timezone.now())]
        usage = self.usage() if self.usage is not None else None
        if usage and usage != self._usage_written:
            sets.append("usage = %s")
            params.append(WorkflowRun._meta.get_field("usage").get_db_prep_save(usage, connection))
        else:
            usage = None
        params += [WorkflowRun._meta.pk.get_db_prep_value(uuid.UUID(self.run_id), connection), self.epoch]
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET {', '.join(sets)} WHERE id = %s AND epoch = %s RETURNING cancel_requested",
                params,
            )
            row = cursor.fetchone()
        if row is None:
            self.lost = True
            return
        if usage is not None:
            self._usage_written = usage
        self.cancelled = bool(row[0])

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval_seconds):
                try:
                    close_old_connections()
                    self.beat()
                except Exception:  # a DB blip must not kill the heartbeat; the next beat tries again
                    logger.exception("run %s: heartbeat failed", self.run_id)
                if self.lost:
                    return
        finally:
            connection.close()
