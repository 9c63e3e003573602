"""Rate limits shared by every worker through Redis: requests and tokens per minute, per provider/model/key.

    from agentflow.ratelimit import limit_key, limiter

    key = limit_key("openai", "gpt-4o", api_key)  # "openai:gpt-4o:<12 hex digits>", never the key itself
    limiter.wait_for_capacity(key, tokens=estimate)  # sleeps briefly, or raises RateLimited (a Retry)
    try:
        response = call_the_provider()
    except ProviderRateLimitError as exc:  # a 429
        limiter.penalize(key, exc.retry_after)  # every worker waits until then
        raise
    limiter.reconcile(key, estimate, response.usage.total_tokens)

Each limit key has a sliding-window log in a sorted set: one entry per acquisition, scored with the Redis
server's clock (``TIME``, so workers' clocks do not matter), holding its request and token counts, with the
totals beside it in a hash. One Lua script trims what left the window, then grants the acquisition (adds an
entry) or answers how long until enough of the window frees up (adds nothing). Unlike a token bucket, a log
never lets more than the limit through in *any* window, a burst included. A 429's ``Retry-After`` is a key
with a PX expiry that every acquisition checks first.

The limit exists for the provider, which counts arrivals on its own clock. A request arrives some time after
its grant (the Redis round trip, the event loop resuming the caller, the SDK building the request, a new
connection's handshake), and that delay varies: a grant log that holds the limit can still let two batches
arrive closer than a window apart. So the log's window is the limit's window plus ``jitter_seconds``
(``RATE_LIMIT_JITTER_SECONDS``): as long as grant-to-arrival delays differ by no more than that, no window
of arrivals at the provider holds more than the limit. Callers keep the delay short and bounded by setting
up before they acquire and sending at once after (:class:`Grant` says when the grant was asked).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from .conf import agentflow_settings
from .core import keys
from .core.context import current_run
from .core.errors import Retry

LIMIT_NAMES = ("requests_per_minute", "tokens_per_minute")

# KEYS: log (sorted set), totals (hash), block (string with PX expiry).
# ARGV: window (us), requests limit (0: none), tokens limit (0: none), requests, tokens.
# Returns {granted 0/1, wait (us), server time (us)}. Entries are "<unique>:<requests>:<tokens>".
_ACQUIRE = """
-- Lua would print a 16-digit number as 1.7e+15, losing microseconds: format times as integers.
local function int(n) return string.format('%.0f', n) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local blocked = redis.call('PTTL', KEYS[3])
if blocked > 0 then
  return {0, blocked * 1000, now}
end
local window, max_r, max_t = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local req, tok = tonumber(ARGV[4]), tonumber(ARGV[5])
if max_r == 0 and max_t == 0 then
  return {1, 0, now}
end
local function parse(member)
  local r, k = string.match(member, ':(%d+):(%d+)$')
  return tonumber(r), tonumber(k)
end
local r, k
if redis.call('EXISTS', KEYS[2]) == 1 then
  r = tonumber(redis.call('HGET', KEYS[2], 'r') or '0')
  k = tonumber(redis.call('HGET', KEYS[2], 'k') or '0')
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now - window))) do
    local er, ek = parse(member)
    r, k = r - er, k - ek
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - window))
else
  -- The totals are gone (evicted): count them again from the log.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - window))
  r, k = 0, 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local er, ek = parse(member)
    r, k = r + er, k + ek
  end
end
local function fits(r0, k0)
  return (max_r == 0 or r0 + req <= max_r) and (max_t == 0 or k0 + tok <= max_t)
end
local ttl = math.floor(window / 1000) + 1000
if fits(r, k) then
  local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  redis.call('ZADD', KEYS[1], int(now), seq .. '-' .. int(now) .. ':' .. req .. ':' .. tok)
  redis.call('HSET', KEYS[2], 'r', r + req, 'k', k + tok)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  return {1, 0, now}
end
-- The totals must never outlive the log they count: both expire together.
redis.call('HSET', KEYS[2], 'r', r, 'k', k)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local er, ek = parse(entries[i])
  r, k = r - er, k - ek
  if fits(r, k) then
    return {0, math.max(1, tonumber(entries[i + 1]) + window - now), now}
  end
end
return {0, window, now}
"""

# KEYS: block. ARGV: milliseconds. Extends the block, never shortens it. Returns the block's milliseconds.
_PENALIZE = """
local current = redis.call('PTTL', KEYS[1])
local ms = tonumber(ARGV[1])
if current < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  return ms
end
return current
"""

# KEYS: log, totals. ARGV: estimated tokens, actual tokens, window (us).
# More tokens than estimated: a debit entry now. Fewer: the oldest entry in the window holding the estimate
# gives back the difference. It may be another caller's equal estimate: an older entry leaves the window
# sooner, so the refund errs on the cautious side.
_RECONCILE = """
local estimated, actual, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function int(n) return string.format('%.0f', n) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local has_totals = redis.call('EXISTS', KEYS[2]) == 1
if actual > estimated then
  local extra = actual - estimated
  local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  redis.call('ZADD', KEYS[1], int(now), seq .. '-' .. int(now) .. ':0:' .. extra)
  if has_totals then
    redis.call('HINCRBY', KEYS[2], 'k', extra)
  else
    redis.call('DEL', KEYS[2])  -- the next acquisition counts the totals from the log
  end
  local ttl = math.floor(window / 1000) + 1000
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  return extra
end
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. int(now - window), '+inf', 'WITHSCORES')
for i = 1, #entries, 2 do
  local head, er, ek = string.match(entries[i], '^(.*):(%d+):(%d+)$')
  if tonumber(ek) == estimated then
    redis.call('ZREM', KEYS[1], entries[i])
    redis.call('ZADD', KEYS[1], entries[i + 1], head .. ':' .. er .. ':' .. actual)
    if has_totals then
      redis.call('HINCRBY', KEYS[2], 'k', actual - estimated)
    end
    return actual - estimated
  end
end
return 0
"""


class RateLimited(Retry):
    """No capacity under a rate limit for longer than the caller would wait in-process.

    A :class:`~agentflow.Retry`: raised from a component with retries left, the step is attempted again after
    ``retry_after`` seconds, and a wait above ``SUSPEND_THRESHOLD_SECONDS`` suspends the run, freeing the
    worker. Waiting for capacity is not a failure: the attempt does not count against ``max_attempts``.
    """

    code = "rate_limited"
    consumes_attempt = False

    def __init__(self, key: str, retry_after: float) -> None:
        super().__init__(retry_after, f"rate limit {key!r}: capacity in {retry_after:.3f}s")
        self.key = key
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Grant:
    """Capacity granted by :meth:`RateLimiter.wait_for_grant`: ``waited_seconds`` before it, and
    ``asked_at``, the ``time.monotonic()`` at which the granting acquisition was sent: the grant is no older
    than that. A request sent more than ``jitter_seconds`` after it may arrive outside what the log allowed
    for (ask again)."""

    waited_seconds: float
    asked_at: float


@dataclass(frozen=True, slots=True)
class Acquisition:
    """One acquisition's answer: ``wait_seconds`` is 0 when granted (capacity consumed), else the time until
    it may succeed (nothing consumed). ``server_time`` is the Redis clock at the decision, in seconds."""

    granted: bool
    wait_seconds: float
    server_time: float


def fingerprint(api_key: str) -> str:
    """A short, stable hash of an API key, to tell keys apart without storing or logging them."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


def limit_key(provider: str, model: str, api_key: str | None = None) -> str:
    """``"provider:model"``, or ``"provider:model:<fingerprint>"`` when each API key has its own limits."""
    key = f"{provider}:{model}"
    return f"{key}:{fingerprint(api_key)}" if api_key else key


def _specificity(pattern: str, key: str) -> tuple[int, int] | None:
    """How closely ``pattern`` matches ``key`` (larger is closer), or None if it does not."""
    if pattern == "*":
        return (0, 0)
    if pattern.endswith(":*"):
        stem = pattern[:-1]
        return (len(stem), 0) if key.startswith(stem) else None
    # "openai:gpt-4o" covers "openai:gpt-4o" and each of its keys, "openai:gpt-4o:<fingerprint>".
    if key == pattern or key.startswith(pattern + ":"):
        return (len(pattern), 1)
    return None


def resolve_limits(limits: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, int]:
    """The limits of ``key``: those of the most specific pattern matching it (``{}``: no limit)."""
    best: tuple[int, int] | None = None
    found: Mapping[str, Any] = {}
    for pattern, values in limits.items():
        score = _specificity(pattern, key)
        if score is not None and (best is None or score > best):
            best, found = score, values
    return {name: int(found[name]) for name in LIMIT_NAMES if found.get(name)}


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, not {value!r}")
    return value


class RateLimiter:
    """Requests and tokens per minute per limit key, shared by every process using the same Redis.

    ``limits`` maps patterns to limits, like ``AGENTFLOW["RATE_LIMITS"]`` (read at each call when omitted).
    ``window_seconds`` is the length of "a minute" (default ``RATE_LIMIT_WINDOW_SECONDS``); shorter windows
    are for tests. ``jitter_seconds`` (default ``RATE_LIMIT_JITTER_SECONDS``) is how much the delays from
    grant to arrival at the provider may differ: the log spans the window plus that. ``client`` and
    ``key_prefix`` default to the streams' Redis client and ``KEY_PREFIX``.
    """

    def __init__(
        self,
        limits: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        window_seconds: float | None = None,
        jitter_seconds: float | None = None,
        client: redis.Redis | None = None,
        key_prefix: str | None = None,
    ) -> None:
        if window_seconds is not None and window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, not {window_seconds!r}")
        if jitter_seconds is not None and jitter_seconds < 0:
            raise ValueError(f"jitter_seconds must be >= 0, not {jitter_seconds!r}")
        self._limits = limits
        self._window_seconds = window_seconds
        self._jitter_seconds = jitter_seconds
        self._client = client
        self._key_prefix = key_prefix
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def window_seconds(self) -> float:
        """The length of "a minute": ``RATE_LIMIT_WINDOW_SECONDS`` unless given."""
        if self._window_seconds is not None:
            return self._window_seconds
        return float(agentflow_settings.rate_limit_window_seconds)

    @property
    def jitter_seconds(self) -> float:
        """The allowance for grant-to-arrival delays: ``RATE_LIMIT_JITTER_SECONDS`` unless given."""
        if self._jitter_seconds is not None:
            return self._jitter_seconds
        return float(agentflow_settings.rate_limit_jitter_seconds)

    def _log_window_us(self) -> int:
        # What the log spans: the limit's window plus the allowance for arrival jitter (module docstring).
        return round((self.window_seconds + self.jitter_seconds) * 1_000_000)

    # Lazily, so a limiter can be created at import time without settings or a connection.
    def _redis(self) -> redis.Redis:
        if self._client is not None:
            return self._client
        from . import streams

        return streams.get_client()

    def _keys(self, key: str) -> list[str]:
        prefix = self._key_prefix if self._key_prefix is not None else agentflow_settings.key_prefix
        return [keys.rate_limit(prefix, key, part) for part in ("log", "totals", "block")]

    def limits_for(self, key: str) -> dict[str, int]:
        limits = self._limits if self._limits is not None else agentflow_settings.rate_limits
        return resolve_limits(limits, key)

    def _acquisition(self, key: str, requests: int, tokens: int) -> tuple[list[str], list[int]]:
        """The acquire script's keys and arguments; a request larger than a whole window raises ValueError."""
        requests, tokens = _count(requests, "requests"), _count(tokens, "tokens")
        limits = self.limits_for(key)
        max_requests = limits.get("requests_per_minute", 0)
        max_tokens = limits.get("tokens_per_minute", 0)
        # More than a whole window's capacity would wait forever.
        if max_requests and requests > max_requests:
            raise ValueError(f"{requests} requests exceed {key!r}'s limit of {max_requests} per minute")
        if max_tokens and tokens > max_tokens:
            raise ValueError(f"{tokens} tokens exceed {key!r}'s limit of {max_tokens} per minute")
        return self._keys(key), [self._log_window_us(), max_requests, max_tokens, requests, tokens]

    def try_acquire(self, key: str, *, requests: int = 1, tokens: int = 0) -> Acquisition:
        """Take ``requests`` and ``tokens`` from ``key``'s capacity if all fit now; see :class:`Acquisition`."""
        script_keys, args = self._acquisition(key, requests, tokens)
        client = self._redis()
        return _answer(_script(client, _ACQUIRE)(keys=script_keys, args=args))

    def _acquire_many(self, calls: list[tuple[list[str], list[int]]]) -> list[Acquisition]:
        """Several acquisitions in one round trip: each is the same script call as :meth:`try_acquire`'s,
        run one after the other by Redis, so each is decided exactly as if it had come alone."""
        client = self._redis()
        script = _script(client, _ACQUIRE)
        with client.pipeline(transaction=False) as pipe:
            for script_keys, args in calls:
                script(keys=script_keys, args=args, client=pipe)
            return [_answer(result) for result in pipe.execute()]

    def acquire(self, key: str, *, requests: int = 1, tokens: int = 0) -> float:
        """0 if granted now (capacity consumed), else the seconds to wait before trying again."""
        return self.try_acquire(key, requests=requests, tokens=tokens).wait_seconds

    async def atry_acquire(self, key: str, *, requests: int = 1, tokens: int = 0) -> Acquisition:
        """:meth:`try_acquire` for async code. The acquisitions an event loop's tasks ask for while one is on
        its way go together in the next round trip (a pipeline, on one thread hop): a fan-out of hundreds
        of calls costs a few round trips, not one thread hop each (see :class:`_Batcher`)."""
        script_keys, args = self._acquisition(key, requests, tokens)
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _Batcher(self, loop)
        return await batcher.submit(script_keys, args)

    async def aacquire(self, key: str, *, requests: int = 1, tokens: int = 0) -> float:
        """:meth:`acquire` for async code (batched: see :meth:`atry_acquire`)."""
        return (await self.atry_acquire(key, requests=requests, tokens=tokens)).wait_seconds

    def penalize(self, key: str, retry_after_seconds: float) -> None:
        """Block ``key`` for every process for ``retry_after_seconds`` (a 429's ``Retry-After``). A block
        only ever grows: a shorter penalty does not end a longer one early."""
        if retry_after_seconds <= 0:
            return
        ms = max(1, round(retry_after_seconds * 1000))
        _script(self._redis(), _PENALIZE)(keys=self._keys(key)[2:], args=[ms])

    def reconcile(self, key: str, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the tokens taken by an acquisition of ``estimated_tokens`` once the call reports its usage."""
        estimated = _count(estimated_tokens, "estimated_tokens")
        actual = _count(actual_tokens, "actual_tokens")
        if estimated == actual or not self.limits_for(key).get("tokens_per_minute"):
            return
        window_us = self._log_window_us()
        _script(self._redis(), _RECONCILE)(keys=self._keys(key)[:2], args=[estimated, actual, window_us])

    def wait_for_capacity(
        self, key: str, *, requests: int = 1, tokens: int = 0, max_wait_seconds: float | None = None
    ) -> float:
        """Acquire, sleeping in-process while the wait is short; return the seconds waited.

        A wait that would take the total past ``max_wait_seconds`` (default: ``SUSPEND_THRESHOLD_SECONDS``)
        raises :class:`RateLimited` instead, so a step's retry frees the worker rather than holding it. In a
        run, sleeping wakes every half second to honour a cancellation.
        """
        return self.wait_for_grant(
            key, requests=requests, tokens=tokens, max_wait_seconds=max_wait_seconds
        ).waited_seconds

    async def await_for_capacity(
        self, key: str, *, requests: int = 1, tokens: int = 0, max_wait_seconds: float | None = None
    ) -> float:
        """:meth:`wait_for_capacity` for async code."""
        grant = await self.await_for_grant(
            key, requests=requests, tokens=tokens, max_wait_seconds=max_wait_seconds
        )
        return grant.waited_seconds

    def wait_for_grant(
        self, key: str, *, requests: int = 1, tokens: int = 0, max_wait_seconds: float | None = None
    ) -> Grant:
        """:meth:`wait_for_capacity`, telling when the grant was asked (:class:`Grant`)."""
        limit = self._max_wait(max_wait_seconds)
        started = time.monotonic()
        waited = 0.0  # stays 0 when granted at once
        while True:
            asked_at = time.monotonic()
            wait = self.acquire(key, requests=requests, tokens=tokens)
            if wait == 0:
                return Grant(waited, asked_at)
            waited = time.monotonic() - started
            if waited + wait > limit:
                raise RateLimited(key, wait)
            ctx = current_run()
            pause = wait + _spread()
            if ctx is not None:
                ctx.sleep(pause)
            else:
                time.sleep(pause)
            waited = time.monotonic() - started

    async def await_for_grant(
        self, key: str, *, requests: int = 1, tokens: int = 0, max_wait_seconds: float | None = None
    ) -> Grant:
        """:meth:`wait_for_grant` for async code."""
        limit = self._max_wait(max_wait_seconds)
        started = time.monotonic()
        waited = 0.0  # stays 0 when granted at once
        while True:
            asked_at = time.monotonic()
            wait = await self.aacquire(key, requests=requests, tokens=tokens)
            if wait == 0:
                return Grant(waited, asked_at)
            waited = time.monotonic() - started
            if waited + wait > limit:
                raise RateLimited(key, wait)
            ctx = current_run()
            pause = wait + _spread()
            if ctx is not None:
                await ctx.asleep(pause)
            else:
                await asyncio.sleep(pause)
            waited = time.monotonic() - started

    @staticmethod
    def _max_wait(max_wait_seconds: float | None) -> float:
        if max_wait_seconds is None:
            return float(agentflow_settings.suspend_threshold_seconds)
        return max_wait_seconds


def _answer(result: Any) -> Acquisition:
    granted, wait_us, now_us = result
    return Acquisition(bool(int(granted)), int(wait_us) / 1_000_000, int(now_us) / 1_000_000)


_scripts: weakref.WeakKeyDictionary[redis.Redis, dict[str, Any]] = weakref.WeakKeyDictionary()


def _script(client: redis.Redis, source: str) -> Any:
    """``client.register_script(source)``, once per client (it hashes the source each time)."""
    known = _scripts.get(client)
    if known is None:
        known = _scripts.setdefault(client, {})
    script = known.get(source)
    if script is None:
        script = known[source] = client.register_script(source)
    return script


class _Batcher:
    """One event loop's acquisitions, sent to Redis together: group commit, as the checkpoints do.

    An acquisition asked for while none is on its way goes at the end of the current turn of the loop, with
    every other one asked for in that turn (a fan-out's calls all reach the limiter in the same turn); those
    asked for meanwhile go together next. One thread hop and one pipeline per batch: the sync client keeps
    the loop free without a second, async, Redis client per loop. Redis runs the batch's scripts one after
    the other, so each grant is decided exactly as it would be alone; only the round trips are shared.
    """

    def __init__(self, limiter: RateLimiter, loop: asyncio.AbstractEventLoop) -> None:
        self.limiter = limiter
        self.loop = loop
        self.pending: list[tuple[list[str], list[int], asyncio.Future[Acquisition]]] = []
        self.busy = False  # a batch is scheduled or on its way
        self.task: asyncio.Task[None] | None = None

    def submit(self, script_keys: list[str], args: list[int]) -> asyncio.Future[Acquisition]:
        future: asyncio.Future[Acquisition] = self.loop.create_future()
        self.pending.append((script_keys, args, future))
        if not self.busy:
            self.busy = True
            self.loop.call_soon(self._start)
        return future

    def _start(self) -> None:
        self.task = self.loop.create_task(self._send())

    async def _send(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                live = [entry for entry in batch if not entry[2].done()]  # a cancelled caller needs nothing
                if not live:
                    continue
                try:
                    answers = await asyncio.to_thread(
                        self.limiter._acquire_many, [(script_keys, args) for script_keys, args, _ in live]
                    )
                except Exception as exc:  # Redis down: every caller of the batch gets the error
                    for _, _, future in live:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), answer in zip(live, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self.busy = False
            self.task = None


def _spread() -> float:
    # Waiters told the same moment would all come back at once and most be turned away again.
    return random.uniform(0, 0.01)


limiter = RateLimiter()
"""The limiter configured by ``AGENTFLOW["RATE_LIMITS"]``, on the streams' Redis."""
