"""Run streams in Redis: fenced, idempotent appends from workers, and history reads for clients.

Appends go through one Lua script that checks the run's epoch in its meta hash before ``XADD``, so a zombie
worker whose run moved on cannot write. Each event carries a per-run sequence number and the script skips
numbers already appended, so a batch retried after a lost reply is not written twice. A meta hash lost with
Redis's data is told apart from a stale epoch; the writer restores it once the DB confirms its epoch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

from .conf import agentflow_settings
from .core import events as ev
from .core import keys
from .core.errors import LeaseLost
from .core.serialization import dumps

logger = logging.getLogger("agentflow.redis")

# A missing epoch is not a stale one: the meta hash is gone (a Redis restarted without persistence, or a key
# evicted), and only the database can say whether this epoch still owns the run.
_APPEND = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  return redis.error_reply('AGENTFLOW_META_LOST')
end
if epoch ~= ARGV[1] then
  return redis.error_reply('AGENTFLOW_STALE_EPOCH ' .. tostring(epoch))
end
local last = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local ids = {}
for i = 4, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[i + 1])
    last = seq
  else
    ids[#ids + 1] = ''
  end
end
redis.call('HSET', KEYS[2], 'seq', last, 'wfc', ARGV[3])
return ids
"""

# After the meta hash was lost: make ARGV[1] the run's epoch again and continue its numbering (ARGV[2] is the
# last sequence number known appended, ARGV[3] the workflow content count with it), unless a newer epoch
# claimed the run meanwhile.
_RESTORE = """
local current = redis.call('HGET', KEYS[1], 'epoch')
if current and tonumber(current) > tonumber(ARGV[1]) then
  return redis.error_reply('AGENTFLOW_STALE_EPOCH ' .. current)
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'wfc', ARGV[3])
end
redis.call('PERSIST', KEYS[1])
return 1
"""

# Make ARGV[1] the only epoch allowed to append; never go back to an older one. A run that runs again
# (recovered, resumed) must not keep the expiry its stream got when it last finished.
_CLAIM = """
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '-1')
if current > tonumber(ARGV[1]) then
  return redis.error_reply('AGENTFLOW_STALE_EPOCH ' .. tostring(current))
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
return {redis.call('HGET', KEYS[1], 'seq') or '0', redis.call('HGET', KEYS[1], 'wfc') or '0',
        redis.call('HGET', KEYS[1], 'start') or ''}
"""

_clients: dict[tuple[int, str], redis.Redis] = {}
_clients_lock = threading.Lock()


def get_client() -> redis.Redis:
    """This process's client for the streams (one connection pool per process and URL)."""
    url = agentflow_settings.redis_url
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                # Time-outs, so a Redis that stops answering fails calls instead of hanging them; blocking
                # reads (XREAD BLOCK) in agentflow never block longer than a few seconds.
                client = redis.Redis.from_url(
                    url,
                    decode_responses=True,
                    health_check_interval=30,
                    socket_connect_timeout=5,
                    socket_timeout=30,
                    socket_keepalive=True,
                )
                _clients[key] = client
    return client


def reset_clients() -> None:
    with _clients_lock:
        _clients.clear()


def stream_key(run_id: str) -> str:
    return keys.events(agentflow_settings.key_prefix, str(run_id))


def meta_key(run_id: str) -> str:
    return keys.meta(agentflow_settings.key_prefix, str(run_id))


def parse_entry(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    event: dict[str, Any] = {"id": entry_id}
    event.update(json.loads(fields["d"]))
    return event


#: The largest stream id Redis knows: both parts are unsigned 64-bit integers.
LAST_ID = (2**64 - 1, 2**64 - 1)


def split_id(entry_id: str) -> tuple[int, int]:
    """``"1732390000000-5"`` as ``(1732390000000, 5)``; ``ValueError`` if malformed.

    Every id this accepts is one Redis accepts as the exclusive start of a range (``XRANGE key (<id> +``), so
    a client's ``after`` that passes here cannot make a Redis command fail: each part is below 2**64, and the
    largest id (after which nothing can follow, and which Redis refuses as an exclusive start) is refused.
    """
    ms, sep, seq = entry_id.partition("-") if isinstance(entry_id, str) else ("", "", "")
    # isascii: str.isdigit() also accepts other scripts' digits, which Redis would reject. The length bound
    # keeps int() cheap (2**64 has 20 digits; Redis accepts leading zeros).
    if not sep or len(entry_id) > 64 or not entry_id.isascii() or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"malformed event id {entry_id!r:.80}")
    parts = int(ms), int(seq)
    if max(parts) > LAST_ID[0]:
        raise ValueError(f"event id {entry_id!r} is out of range: each part must be below 2**64")
    if parts == LAST_ID:
        raise ValueError(f"event id {entry_id!r} is the largest there is: no event can follow it")
    return parts


# -- the API plane's side --------------------------------------------------------------------------------------


# Open a run's stream with run.queued, once. KEYS: stream, meta; ARGV: maxlen, the event's JSON. Returns the
# event's id and JSON, also when an earlier call appended it; nothing when the run was claimed already.
_ANNOUNCE = """
local queued = redis.call('HGET', KEYS[2], 'queued')
if queued then
  local entry = redis.call('XRANGE', KEYS[1], queued, queued)
  if entry[1] then
    return {queued, entry[1][2][2]}
  end
  return {queued, false}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {false, false}
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'd', ARGV[2])
redis.call('HSET', KEYS[2], 'epoch', 0, 'seq', 1, 'queued', id)
return {id, ARGV[2]}
"""


def announce(run_id: str, event: dict[str, Any]) -> tuple[str, str] | None:
    """Open a run's stream with its first event (``run.queued``, epoch 0): idempotent, so a dispatch tried
    again appends it once. Returns the entry ``(id, JSON)`` (the one appended before, if any), or None when
    the run's stream already belongs to an incarnation (the event was not appended)."""
    entry_id, data = get_client().eval(
        _ANNOUNCE, 2, stream_key(run_id), meta_key(run_id), agentflow_settings.stream_maxlen, dumps(event)
    )  # type: ignore[misc]
    if not entry_id:
        return None
    return str(entry_id), str(data) if data else ""


def read_events(
    run_id: str, after: str | None = None, count: int | None = None, *, since: str | None = None
) -> list[dict[str, Any]]:
    """Events after id ``after`` (or from id ``since`` on, or all) from the stream, oldest first."""
    start = f"({after}" if after else (since or "-")
    entries: list[tuple[str, dict[str, str]]] = get_client().xrange(  # type: ignore[assignment]
        stream_key(run_id), min=start, max="+", count=count
    )
    return [parse_entry(entry_id, fields) for entry_id, fields in entries]


def tail_events(run_id: str, after: str, block_ms: int) -> list[dict[str, Any]]:
    """Events after ``after``, waiting up to ``block_ms`` for the first one."""
    result: Any = get_client().xread({stream_key(run_id): after or "0-0"}, block=block_ms)
    if not result:
        return []
    return [parse_entry(entry_id, fields) for entry_id, fields in result[0][1]]


def expire_run(run_id: str, ttl_seconds: float) -> None:
    pipe = get_client().pipeline(transaction=False)
    pipe.expire(stream_key(run_id), int(ttl_seconds))
    pipe.expire(meta_key(run_id), int(ttl_seconds))
    pipe.execute()


# -- the compute plane's side ----------------------------------------------------------------------------------


class Claim:
    """What a new incarnation learns from the run's meta hash when it takes the run over."""

    def __init__(self, seq: int, workflow_content: int, start: str) -> None:
        self.seq = seq
        self.workflow_content = workflow_content
        self.start = start


def claim(run_id: str, epoch: int) -> Claim:
    client = get_client()
    try:
        seq, wfc, start = client.eval(_CLAIM, 2, meta_key(run_id), stream_key(run_id), epoch)
    except redis.ResponseError as exc:
        if "AGENTFLOW_STALE_EPOCH" in str(exc):
            raise LeaseLost(f"run {run_id} is claimed by a newer epoch") from None
        raise
    return Claim(int(seq), int(wfc), start)


def mark_incarnation_start(run_id: str, event_id: str) -> None:
    get_client().hset(meta_key(run_id), "start", event_id)


class RedisSink:
    """Appends a run incarnation's events in order, from a writer thread that batches whatever queued up
    while the previous append was in flight (low latency when idle, few round trips under load).

    Appended events are also copied to the DB as the run goes (see :class:`_Archiver`), so its history
    survives a Redis that loses its data. When the run's meta hash is gone, the writer asks the DB whether its
    epoch still owns the run before it restores the hash and carries on.
    """

    BATCH = 500

    def __init__(self, run_id: str, epoch: int, claim: Claim, *, archive: bool | None = None) -> None:
        self.run_id = str(run_id)
        self.epoch = epoch
        self._keys = [stream_key(run_id), meta_key(run_id)]
        self._maxlen = agentflow_settings.stream_maxlen
        self._client = get_client()
        self._script = self._client.register_script(_APPEND)
        self._queue: list[tuple[int, int, str]] = []  # (seq, workflow content count, json)
        self._cond = threading.Condition()
        self._seq = claim.seq
        self._appended_seq = claim.seq
        self._appended_wfc = claim.workflow_content
        self._wfc = claim.workflow_content
        self._fenced = False
        # Events appended by a try whose reply was lost have no id here: the archiver never gets them.
        self._archive_gap = False
        self._closed = False
        self.last_id: str | None = None
        self.first_id: str | None = None
        if archive is None:
            archive = agentflow_settings.archive_events
        self._archiver = _Archiver(self.run_id) if archive else None
        self._thread = threading.Thread(target=self._loop, name=f"agentflow-events-{run_id}", daemon=True)
        self._thread.start()

    @property
    def fenced(self) -> bool:
        return self._fenced

    def emit(self, event: dict[str, Any]) -> None:
        data = ev.encode(event)  # SerializationError here, never a writer stuck on an event Redis refuses
        with self._cond:
            if self._fenced:
                return  # the engine raises LeaseLost at its next boundary
            self._seq += 1
            if event["step"] is None and event["type"] in ev.CONTENT_TYPES:
                self._wfc += 1
            self._queue.append((self._seq, self._wfc, data))
            self._cond.notify()

    def flush(self, timeout_seconds: float | None = None) -> None:
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        with self._cond:
            target = self._seq
            while self._appended_seq < target and not self._fenced:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"events of run {self.run_id} not appended within {timeout_seconds}s")
                self._cond.wait(remaining)
        if self._fenced:
            raise LeaseLost(f"run {self.run_id}: epoch {self.epoch} is stale, events refused")

    def close(self, timeout_seconds: float | None = None) -> None:
        """Append what is queued, then stop; the archiver writes everything it was given. Idempotent."""
        try:
            self.flush(timeout_seconds)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join(timeout=5)
            if self._archiver is not None:
                self._archiver.close(timeout_seconds=10)

    @property
    def archived(self) -> bool:
        """After :meth:`close`: every event this sink appended, and every event before its first one, is in
        the archive; reading the stream again to archive it would add nothing."""
        return self._archiver is not None and not self._archive_gap and self._archiver.complete

    def _fence(self, dropped: int) -> None:
        logger.warning("run %s: epoch %s is stale; dropping %d events", self.run_id, self.epoch, dropped)
        with self._cond:
            self._fenced = True
            self._queue.clear()
            self._cond.notify_all()

    def _restore_meta(self) -> bool:
        """The meta hash is gone: restore it if the DB says this epoch still owns the run. False if not."""
        if not _epoch_is_current(self.run_id, self.epoch):
            return False
        with self._cond:
            seq, wfc = self._appended_seq, self._appended_wfc
        try:
            self._client.eval(_RESTORE, 1, self._keys[1], self.epoch, seq, wfc)
        except redis.ResponseError as exc:
            if "AGENTFLOW_STALE_EPOCH" in str(exc):
                return False
            raise
        logger.warning(
            "run %s: its stream's meta hash was lost (Redis restarted?); restored it for epoch %s at seq %s",
            self.run_id,
            self.epoch,
            seq,
        )
        return True

    def _loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._queue[: self.BATCH]
            args: list[Any] = [self.epoch, self._maxlen, batch[-1][1]]
            for seq, _wfc, data in batch:
                args.append(seq)
                args.append(data)
            try:
                ids = self._script(keys=self._keys, args=args)
            except Exception as exc:
                if isinstance(exc, redis.ResponseError) and "AGENTFLOW_STALE_EPOCH" in str(exc):
                    self._fence(len(batch))
                    continue
                if isinstance(exc, redis.ResponseError) and "AGENTFLOW_META_LOST" in str(exc):
                    try:
                        restored = self._restore_meta()
                    except Exception as restore_exc:
                        exc = restore_exc  # the DB or Redis failing in turn: retry as below
                    else:
                        if not restored:
                            self._fence(len(batch))
                        continue
                # Redis down, restarting or out of memory: retry. The sequence numbers make the retry
                # idempotent, so nothing is lost and nothing doubled.
                failures += 1
                delay = min(2.0, 0.05 * 2**failures)
                logger.warning(
                    "run %s: appending events failed (%s); retrying in %.2fs", self.run_id, exc, delay
                )
                time.sleep(delay)
                continue
            failures = 0
            # An empty id: that event was appended by an earlier try whose reply was lost.
            appended = [(entry_id, batch[i][2]) for i, entry_id in enumerate(ids) if entry_id]
            if len(appended) < len(batch):
                self._archive_gap = True
            if self._archiver is not None and appended:
                self._archiver.add(appended)
            with self._cond:
                del self._queue[: len(batch)]
                self._appended_seq = batch[-1][0]
                self._appended_wfc = batch[-1][1]
                if appended:
                    self.last_id = appended[-1][0]
                    if self.first_id is None:
                        self.first_id = appended[0][0]
                self._cond.notify_all()


def _epoch_is_current(run_id: str, epoch: int) -> bool:
    """Whether the DB (the source of truth) still gives the run to ``epoch``; from a sink's writer thread,
    whose DB connection is closed again at once (the thread rarely needs one)."""
    from django.db import connection

    from .models import WorkflowRun

    try:
        return WorkflowRun.objects.filter(id=run_id, epoch=epoch).exists()
    finally:
        connection.close()


class _Archiver:
    """Copies a run's appended events into the DB (``RunEvent``) while the run goes on, so its history
    survives a Redis that loses its data (a restart without persistence, an eviction, a failover).

    Its own thread, off the append path: it writes at most every ``INTERVAL_SECONDS`` (one statement per
    batch), from the events the writer already has in memory (no read from Redis), and ignores events already
    archived. When the sink closes it writes what is left, also when the run just ended: those events may be
    gone from the stream already (Redis lost its data since they were appended), so it never leaves them to
    a later read of the stream. ``finalize_stream`` reads the whole stream only when this thread could not
    write everything (:attr:`complete`). Its DB connection is closed when it goes idle and when the sink
    closes.
    """

    INTERVAL_SECONDS = 0.5
    IDLE_SECONDS = 5.0
    BATCH = 1000
    MAX_PENDING = 100_000  # while the DB is down, keep at most this many events to retry

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._pending: list[tuple[str, dict[str, str]]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._caught_up = False
        self._lost = False  # some events will not be archived by this thread
        self._thread = threading.Thread(target=self._loop, name=f"agentflow-archive-{run_id}", daemon=True)
        self._thread.start()

    def add(self, entries: list[tuple[str, str]]) -> None:
        with self._cond:
            self._pending.extend((entry_id, {"d": data}) for entry_id, data in entries)
            self._cond.notify()

    def close(self, timeout_seconds: float) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout_seconds)

    @property
    def complete(self) -> bool:
        """Closed, and everything it was given is in the DB, with what preceded it in the stream."""
        return self._closed and not self._thread.is_alive() and not self._lost and not self._pending

    def _loop(self) -> None:
        from django.db import connection

        # The first write waits an interval too: a short run is archived in one write, when the sink closes.
        last_write = time.monotonic()
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        if not self._cond.wait(self.IDLE_SECONDS) and not self._pending:
                            connection.close()  # idle: give the connection back
                    if not self._pending:
                        return
                    # Gather what comes within the interval: one INSERT for many events.
                    deadline = last_write + self.INTERVAL_SECONDS
                    while not self._closed and (remaining := deadline - time.monotonic()) > 0:
                        self._cond.wait(remaining)
                    batch, self._pending = self._pending, []
                    closing = self._closed
                last_write = time.monotonic()
                if not self._write(batch):
                    if closing:
                        self._lost = True  # finalize_stream reads the stream instead
                        continue
                    with self._cond:
                        self._lost = self._lost or len(batch) > self.MAX_PENDING
                        self._pending[:0] = batch[-self.MAX_PENDING :]
        finally:
            connection.close()

    def _write(self, batch: list[tuple[str, dict[str, str]]]) -> bool:
        from .archive import archive_events, last_archived_id, store_entries

        try:
            if not self._caught_up:
                # Once per incarnation: what others appended before it (run.queued from the API, or what an
                # earlier incarnation left unarchived), so the archive has no hole either.
                archive_events(self.run_id, after=last_archived_id(self.run_id), before=batch[0][0])
                self._caught_up = True
            for i in range(0, len(batch), self.BATCH):
                store_entries(self.run_id, batch[i : i + self.BATCH])
        except Exception as exc:
            from django.db import DataError, IntegrityError, connection

            connection.close()
            if isinstance(exc, DataError):
                # Refused for what it holds (archive.store_entries already tried each event alone): a retry
                # would be refused again, forever. finalize_stream tries once more when the run ends.
                logger.error("run %s: %d events not archived: %s", self.run_id, len(batch), exc)
                return True
            if isinstance(exc, IntegrityError):
                # The run's row is gone (deleted) or not visible: nothing to archive these events under.
                logger.warning("run %s: %d events not archived: %s", self.run_id, len(batch), exc)
                return True
            logger.warning("run %s: archiving %d events failed, will retry: %s", self.run_id, len(batch), exc)
            return False
        return True


def iter_all(run_id: str, page: int = 1000) -> Iterator[dict[str, Any]]:
    """Every event in the run's stream, oldest first, in pages."""
    after: str | None = None
    while True:
        batch = read_events(run_id, after=after, count=page)
        yield from batch
        if len(batch) < page:
            return
        after = batch[-1]["id"]
