"""One provider call inside a run: capacity, fallback, the HTTP request, streamed tokens, usage.

This is the body of the step every wrapped-client call becomes (:mod:`agentflow.llm.client`). Its result is
JSON (the response as the provider sent it, or a streamed call's chunks), which the step checkpoints and the
client turns back into the SDK's objects.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import openai

from ..conf import agentflow_settings
from ..core import events as ev
from ..core.context import RunContext, _frame, current_run
from ..core.errors import AgentflowError, Retry
from ..core.serialization import escaped, replaced, replaced_text
from ..core.usage import record_usage
from ..ratelimit import RateLimited, limiter
from . import tokens
from .breaker import breakers
from .providers import Provider
from .redaction import redact_error, secrets_of
from .slots import Slots
from .tokens import CHAT, EMBEDDINGS, RESPONSES, estimate_parts

logger = logging.getLogger("agentflow.llm")

__all__ = ["CHAT", "EMBEDDINGS", "RESPONSES", "estimate_parts"]  # also re-exported from .tokens


class IncompleteStream(AgentflowError):
    """A streamed response ended before its last event (the connection closed early): retried."""

    code = "incomplete_stream"


class ProviderQuotaExceeded(AgentflowError):
    """Every provider refused the call for an exhausted quota (``insufficient_quota``): not retried."""

    code = "provider_quota_exceeded"


class NoProvider(AgentflowError):
    code = "no_provider"


class ProviderFallback(Retry):
    """A provider failed after its stream had forwarded text: the call goes on with the next provider in a
    new attempt, so that the ``step.retrying`` of this one voids the forwarded text (rule 1 of
    docs/topics/events.md). Not a failure of the step: it does not use up an attempt, and waits for nothing.
    """

    code = "provider_fallback"
    consumes_attempt = False

    def __init__(self, provider: str, error: dict[str, Any]) -> None:
        super().__init__(
            0.0, f"provider {provider!r} failed after streaming part of its reply: {error['type']}"
        )
        self.event_data = {"reason": "fallback", "provider": provider, "error": error}


def _transport_errors() -> tuple[type[BaseException], ...]:
    # A stream cut mid-way surfaces as the HTTP library's error, not the SDK's; the SDK has used httpx and
    # its successor httpx2: catch whichever are installed.
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


# Worth another attempt, and worth trying the next provider right away.
TRANSIENT: tuple[type[BaseException], ...] = (
    openai.APIConnectionError,  # time-outs included
    openai.RateLimitError,
    openai.InternalServerError,
    openai.ConflictError,
    *_transport_errors(),
    IncompleteStream,
)
# Failures that move a call on to the next provider: the transient ones, and no capacity under our own limit.
FALLBACK_ON: tuple[type[BaseException], ...] = (*TRANSIENT, RateLimited)


def retry_after_seconds(response: Any) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    if response is None:
        return None
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _quota_exhausted(exc: BaseException) -> bool:
    body = getattr(exc, "body", None)
    code = body.get("code") if isinstance(body, dict) else getattr(exc, "code", None)
    return isinstance(exc, openai.RateLimitError) and code == "insufficient_quota"


def _describe(exc: BaseException) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:500]}
    status = getattr(exc, "status_code", None)
    if status is not None:
        error["status"] = status
    # Kept in the step's usage notes and its events: a message quoting U+0000 is stored escaped.
    return escaped(error, what="a provider's error")  # type: ignore[no-any-return]


# -- SDK clients -------------------------------------------------------------------------------------------

_sync_clients: dict[tuple[Provider, str], openai.OpenAI] = {}
_sync_lock = threading.Lock()
# Async clients hold connections of one event loop: per loop, dropped with it.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


def _client_options(provider: Provider, sdk_options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "api_key": provider.api_key or "unset",  # the SDK refuses None; the provider then answers 401
        "base_url": provider.base_url,
        "organization": provider.organization,
        "default_headers": provider.default_headers,
        **({"timeout": provider.timeout_seconds} if provider.timeout_seconds is not None else {}),
        **dict(sdk_options),
    }
    options["max_retries"] = 0  # the step retries, visibly, with backoff shared across fallbacks
    return options


def _key(provider: Provider, sdk_options: tuple[tuple[str, Any], ...]) -> tuple[Provider, str]:
    # Options may hold dicts (default_headers) or objects (http_client): their repr tells them apart.
    return provider, repr(sdk_options)


def sync_client(provider: Provider, sdk_options: tuple[tuple[str, Any], ...]) -> openai.OpenAI:
    key = _key(provider, sdk_options)
    with _sync_lock:
        client = _sync_clients.get(key)
        if client is None:
            client = _sync_clients[key] = openai.OpenAI(**_client_options(provider, sdk_options))
        return client


def async_client(
    ctx: RunContext, provider: Provider, sdk_options: tuple[tuple[str, Any], ...]
) -> openai.AsyncOpenAI:
    loop = asyncio.get_running_loop()
    clients = _async_clients.setdefault(loop, {})
    key = _key(provider, sdk_options)
    client = clients.get(key)
    if client is None:
        client = clients[key] = openai.AsyncOpenAI(**_client_options(provider, sdk_options))
        if "async_clients" not in ctx.resources:
            ctx.closers.append(lambda: close_async_clients(ctx))
        ctx.resources.setdefault("async_clients", []).append(client)
    return client


async def close_async_clients(ctx: RunContext) -> None:
    """Close the run's async SDK clients before its event loop closes (called when the workflow ends)."""
    clients = ctx.resources.pop("async_clients", [])
    loop = asyncio.get_running_loop()
    mine = _async_clients.pop(loop, {})
    for client in {id(c): c for c in [*clients, *mine.values()]}.values():
        try:
            await client.close()
        except Exception:  # closing is best effort
            logger.debug("closing an OpenAI client failed", exc_info=True)


def _method(client: Any, kind: str) -> Any:
    if kind == CHAT:
        return client.chat.completions.create
    if kind == RESPONSES:
        return client.responses.create
    return client.embeddings.create


# -- concurrency -----------------------------------------------------------------------------------------

_worker_slots: Slots | None = None
_worker_slots_lock = threading.Lock()


def worker_slots() -> Slots:
    global _worker_slots
    limit = agentflow_settings.llm_max_concurrency_per_worker
    with _worker_slots_lock:
        if _worker_slots is None or _worker_slots.limit != limit:
            _worker_slots = Slots(limit)
        return _worker_slots


def run_slots(ctx: RunContext) -> Slots:
    slots = ctx.resources.get("llm_slots")
    if slots is None:
        slots = ctx.resources.setdefault("llm_slots", Slots(agentflow_settings.llm_max_concurrency_per_run))
    return slots  # type: ignore[no-any-return]


# -- streamed tokens -------------------------------------------------------------------------------------


class Forwarder:
    """Sends a stream's text to the run's subscribers, coalesced: at most one event per ``interval``."""

    def __init__(self, ctx: RunContext, stream_to: str | None, label: str | None) -> None:
        self.ctx, self.stream_to, self.label = ctx, stream_to, label
        self.interval = float(agentflow_settings.llm_stream_coalesce_seconds)
        self.buffer: list[str] = []
        self.last = 0.0
        self.sent = False  # whether any text reached the run's stream (then abandoning it must void it)

    def add(self, text: str) -> None:
        if self.stream_to is None or not text:
            return
        # As the recorded chunks have it (_Attempt.storable): each chunk's text on its own.
        self.buffer.append(replaced_text(text))
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if not self.buffer:
            return
        text, self.buffer = "".join(self.buffer), []
        self.last = time.monotonic() if now is None else now
        self.sent = True
        if self.stream_to == "data":
            self.ctx.emit_content(ev.DATA, {"label": self.label, "value": text})
        else:
            self.ctx.emit_content(ev.OUTPUT_DELTA, {"text": text})


@dataclass(slots=True)
class StreamState:
    """A stream's items as they arrive, and whether its reply is complete.

    A reply is complete once its final event arrived: every chat choice seen has its ``finish_reason``, or
    a Responses stream sent ``response.completed`` (``.incomplete``, ``.failed``). What may follow it (the
    usage chunk asked for with ``stream_options.include_usage``, ``data: [DONE]``) is not needed: a stream
    ending without it, cleanly or not, is complete, with its usage estimated when none came. A stream ending
    before its final event is cut (:class:`IncompleteStream`, or the transport's error): the attempt fails.
    """

    kind: str
    strip_usage_chunk: bool
    chunks: list[dict[str, Any]]
    usage: Any = None
    responses_done: bool = False
    choices_seen: set[int] = field(default_factory=set)
    choices_finished: set[int] = field(default_factory=set)

    @property
    def done(self) -> bool:
        if self.kind == CHAT:
            return bool(self.choices_finished) and self.choices_seen <= self.choices_finished
        return self.responses_done

    def take(self, item: Any) -> str:
        """Record one streamed item; return its text."""
        data = item.to_dict()
        if self.kind == CHAT:
            if item.usage is not None:
                self.usage = item.usage
            choices = item.choices or []
            if not choices and item.usage is not None and self.strip_usage_chunk:
                return ""  # the usage chunk we asked for on the caller's behalf
            self.chunks.append(data)
            text = ""
            for choice in choices:
                self.choices_seen.add(choice.index)
                if choice.index == 0:
                    text = choice.delta.content or ""
                if choice.finish_reason is not None:
                    self.choices_finished.add(choice.index)
            return text
        self.chunks.append(data)
        kind = getattr(item, "type", "")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.responses_done = True
            self.usage = getattr(item.response, "usage", None)
        return str(getattr(item, "delta", "") or "") if kind == "response.output_text.delta" else ""

    def output(self) -> dict[str, Any]:
        if not self.done:
            raise IncompleteStream("the provider's stream ended before its final event")
        return {"stream": True, **pack(self.chunks)}


def pack(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Chunks without the fields they all share (id, model, created...), which are kept once."""
    if not chunks:
        return {"common": {}, "chunks": []}
    common = {
        key: value for key, value in chunks[0].items() if all(c.get(key, ...) == value for c in chunks[1:])
    }
    if len(chunks) == 1:
        common = {}
    return {"common": common, "chunks": [{k: v for k, v in c.items() if k not in common} for c in chunks]}


def unpack(output: dict[str, Any]) -> Iterator[dict[str, Any]]:
    common = output.get("common") or {}
    for chunk in output.get("chunks") or ():
        yield {**common, **chunk}


def _usage_counts(kind: str, usage: Any) -> tuple[int, int] | None:
    if usage is None:
        return None
    if kind == RESPONSES:
        return int(usage.input_tokens or 0), int(usage.output_tokens or 0)
    return int(usage.prompt_tokens or 0), int(getattr(usage, "completion_tokens", 0) or 0)


@dataclass(frozen=True, slots=True)
class Counted:
    """A call's tokens: as its provider reported them, or ``estimated`` when it reported none."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def count_usage(kind: str, request: dict[str, Any], output: dict[str, Any], usage: Any) -> Counted:
    """The tokens of an answered call. A provider that ignores ``stream_options.include_usage``, a stream
    that ended before its usage chunk, a reply without ``usage``: the call still counts, with its prompt
    estimated from the request and its completion from the text it sent (:mod:`agentflow.llm.tokens`)."""
    counts = _usage_counts(kind, usage)
    if counts is not None:
        return Counted(counts[0], counts[1], estimated=False)
    streamed = output.get("stream") is True
    items = list(unpack(output)) if streamed else [output]
    return Counted(
        tokens.prompt_tokens(kind, request), tokens.completion_tokens(kind, items, streamed), estimated=True
    )


# -- the call --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallSpec:
    """What a client call needs besides its request: set by the client, the same for all its calls."""

    kind: str
    providers: tuple[Provider, ...]
    stream_to: str | None
    label: str | None
    sdk_options: tuple[tuple[str, Any], ...]


@dataclass(slots=True)
class _Pending:
    """Where a call that moved on to the next provider (:class:`ProviderFallback`) resumes in its next
    attempt: the providers left, and the notes so far. Kept per step in ``RunContext.resources``."""

    candidates: list[Provider]
    fallbacks: list[dict[str, Any]]
    skipped: list[str]


@dataclass(slots=True)
class Prepared:
    """One provider's request of an attempt, and what it is expected to cost."""

    provider: Provider
    model: str
    request: dict[str, Any]
    key: str  # the rate-limit key
    estimate: int  # tokens held against the budget and the rate limit
    usd: float
    state: StreamState | None


class _Attempt:
    """Bookkeeping of one attempt across providers: notes on the step, fallbacks, usage."""

    def __init__(self, spec: CallSpec, request: dict[str, Any]) -> None:
        ctx = current_run()
        if ctx is None:  # pragma: no cover - the client only runs this inside a run
            raise RuntimeError("a provider call step runs inside a workflow")
        self.ctx, self.spec, self.request = ctx, spec, request
        self.step_id = ctx.current_step().step_id
        self.secrets = secrets_of(spec.providers)
        requested = request.get("model")
        if not isinstance(requested, str) or not requested:
            raise TypeError(f"the call needs a model name (model=...), not {requested!r}")
        pending: _Pending | None = ctx.resources.get("llm_fallbacks", {}).pop(self.step_id, None)
        if pending is not None:  # the previous attempt moved on to the next provider: go on from there
            self.candidates, self.fallbacks, self.skipped = (
                pending.candidates,
                pending.fallbacks,
                pending.skipped,
            )
        else:
            serving = [p for p in spec.providers if p.serves(requested)]
            if not serving:
                raise NoProvider(
                    f"no provider serves model {requested!r}: "
                    + ", ".join(f"{p.name} ({', '.join(p.models or ())})" for p in spec.providers)
                )
            # Providers whose breaker is open are skipped while another one serves the model.
            ready = [p for p in serving if not breakers.is_open(p.name)]
            self.candidates = ready or serving
            self.skipped = [p.name for p in serving if p not in self.candidates]
            self.fallbacks = []
        self.stream = bool(request.get("stream"))

    def prepare(self, provider: Provider) -> Prepared:
        """The request for ``provider``, with its token estimate and its stream's state."""
        model = provider.model_for(self.request["model"])
        request = {**self.request, "model": model}
        state = None
        if self.stream:
            strip = False
            if self.spec.kind == CHAT:
                options = dict(request.get("stream_options") or {})
                if not options.get("include_usage"):
                    options["include_usage"], strip = True, True
                request["stream_options"] = options
            state = StreamState(self.spec.kind, strip, [])
        prompt, completion = estimate_parts(self.spec.kind, request)
        pricer = self.ctx.pricer
        usd = (pricer(model, prompt, completion) if pricer is not None else None) or 0.0
        return Prepared(provider, model, request, provider.limit_key(model), prompt + completion, usd, state)

    def redact(self, exc: BaseException) -> None:
        """The one place provider errors enter agentflow: scrub configured keys and credential-shaped text
        from ``exc`` (agentflow.llm.redaction) before anything logs, stores or shows it."""
        redact_error(exc, self.secrets)

    def failed(self, provider: Provider, model: str, exc: BaseException, last: bool, forwarded: bool) -> None:
        """Note a provider's failure; if it was the last provider, raise what fails the attempt; if it had
        forwarded text, raise :class:`ProviderFallback`, which goes on with the next one in a new attempt."""
        if not isinstance(exc, openai.RateLimitError | RateLimited) and breakers.failed(provider.name):
            logger.warning(
                "provider %s failed %s times in a row: skipped for %ss where another provider serves",
                provider.name,
                agentflow_settings.llm_provider_failure_threshold,
                agentflow_settings.llm_provider_cooldown_seconds,
            )
        retry_after = retry_after_seconds(getattr(exc, "response", None))
        if retry_after is not None:
            exc.retry_after = retry_after  # type: ignore[attr-defined]  # the step's retry waits that long
        if not last:  # the last provider's failure fails the attempt: the step's retry records it
            error = _describe(exc)
            self.fallbacks.append({"provider": provider.name, "model": model, "error": error})
            self.note()
            logger.warning(
                "step %s: provider %s failed (%s); trying the next one",
                self.step_id,
                provider.name,
                type(exc).__name__,
            )
            if forwarded:
                rest = self.candidates[self.candidates.index(provider) + 1 :]
                pending = _Pending(rest, self.fallbacks, self.skipped)
                self.ctx.resources.setdefault("llm_fallbacks", {})[self.step_id] = pending
                raise ProviderFallback(provider.name, error) from None
            return
        if _quota_exhausted(exc):
            raise ProviderQuotaExceeded(f"provider {provider.name!r}: {exc}") from exc
        raise exc from None

    def storable(self, provider: Provider, output: Any) -> Any:
        """The reply as it is recorded, returned and replayed: U+0000 and lone surrogates replaced by U+FFFD,
        an infinity or NaN by ``null`` (docs/topics/llm.md says why), said in a warning and in the step's
        usage notes (``"replaced": {"count", "path", "code"}``). The reply itself when it is storable."""
        output, found = replaced(output)
        if found:
            path, code = found[0]
            logger.warning(
                "step %s: the reply of provider %s held %d value(s) the database cannot store (first: %s at "
                "%r); replaced by U+FFFD (text) or null (numbers)",
                self.step_id,
                provider.name,
                len(found),
                code,
                path,
            )
            self.note(replaced={"count": len(found), "path": path, "code": code})
        return output

    def succeeded(self, provider: Provider, model: str, counted: Counted) -> None:
        breakers.succeeded(provider.name)
        record_usage(
            model,
            prompt_tokens=counted.prompt_tokens,
            completion_tokens=counted.completion_tokens,
            estimated=counted.estimated,
        )
        self.note(provider=provider.name, model=model)

    def note(self, **notes: Any) -> None:
        frame = _frame.get()
        if frame is None:
            return
        usage = frame.usage if frame.usage is not None else {}
        usage.update(notes)
        if self.skipped:
            usage["skipped"] = list(self.skipped)
        if self.fallbacks:
            usage["fallbacks"] = list(self.fallbacks)
        frame.usage = usage


def _penalize(key: str, exc: BaseException) -> None:
    if isinstance(exc, openai.RateLimitError) and not _quota_exhausted(exc):
        wait = retry_after_seconds(exc.response)
        try:
            limiter.penalize(key, wait if wait is not None else 1.0)
        except Exception:  # Redis down: the retry still waits
            logger.warning("rate limit %s: cannot share a 429's Retry-After", key, exc_info=True)


def _tracks_tokens(key: str) -> bool:
    # Settings only, no Redis: skip the reconcile round trip (and its thread hop) when no token limit applies.
    return bool(limiter.limits_for(key).get("tokens_per_minute"))


def _reconcile(key: str, estimate: int, counted: Counted) -> None:
    try:
        limiter.reconcile(key, estimate, counted.total)
    except Exception:
        logger.debug("rate limit %s: reconcile failed", key, exc_info=True)


# A grant older than the limiter's jitter allowance when its request goes out is asked for again (the old
# one just expires from the window), at most this many times; then the request goes anyway, with a warning.
_REGRANTS = 3


def _stale(key: str, asked_at: float, regrants: int) -> bool:
    late = time.monotonic() - asked_at
    if late <= limiter.jitter_seconds:
        return False
    if regrants < _REGRANTS:
        return True
    logger.warning(
        "rate limit %s: requests go out %.3fs after their grant, more than RATE_LIMIT_JITTER_SECONDS (%ss): "
        "the provider may see more than the limit in a window",
        key,
        late,
        limiter.jitter_seconds,
    )
    return False


def _grant(key: str, estimate: int) -> None:
    """Capacity for one request under ``key``, fresh enough to send it now (see ``_stale``)."""
    regrants = 0
    while _stale(key, limiter.wait_for_grant(key, tokens=estimate).asked_at, regrants):
        regrants += 1


async def _agrant(key: str, estimate: int) -> None:
    regrants = 0
    while _stale(key, (await limiter.await_for_grant(key, tokens=estimate)).asked_at, regrants):
        regrants += 1


def execute(spec: CallSpec, request: dict[str, Any]) -> Any:
    """The step body of a sync client's call."""
    attempt = _Attempt(spec, request)
    ctx = attempt.ctx
    for index, provider in enumerate(attempt.candidates):
        last = index == len(attempt.candidates) - 1
        call = attempt.prepare(provider)
        # Set up before asking for capacity: a grant is sent at once, whatever the client's state.
        method = _method(sync_client(provider, spec.sdk_options), spec.kind)
        forward = Forwarder(ctx, spec.stream_to, spec.label)
        release = ctx.reserve_budget(call.estimate, call.usd)
        try:
            with run_slots(ctx).held(ctx.check_interrupt), worker_slots().held(ctx.check_interrupt):
                _grant(call.key, call.estimate)
                output, usage = _request(method, call, forward)
            output = attempt.storable(provider, output)
            counted = count_usage(spec.kind, call.request, output, usage)
            attempt.succeeded(provider, call.model, counted)  # counted before the reservation is released
        except Exception as exc:
            attempt.redact(exc)
            if not isinstance(exc, FALLBACK_ON):
                raise
            _penalize(call.key, exc)
            attempt.failed(provider, call.model, exc, last, forward.sent)
            continue
        finally:
            release()
        if _tracks_tokens(call.key):
            _reconcile(call.key, call.estimate, counted)
        return output
    raise AssertionError("unreachable")  # pragma: no cover


def _request(method: Any, call: Prepared, forward: Forwarder) -> tuple[Any, Any]:
    state = call.state
    if state is None:
        response = method(**call.request)
        return response.to_dict(), getattr(response, "usage", None)
    try:
        with method(**call.request) as stream:
            for item in stream:
                forward.add(state.take(item))
    except _CUT as exc:
        _unless_complete(state, exc)
    forward.flush()
    return state.output(), state.usage


async def aexecute(spec: CallSpec, request: dict[str, Any]) -> Any:
    """The step body of an async client's call."""
    attempt = _Attempt(spec, request)
    ctx = attempt.ctx
    for index, provider in enumerate(attempt.candidates):
        last = index == len(attempt.candidates) - 1
        call = attempt.prepare(provider)
        # Set up before asking for capacity: a grant is sent at once, whatever the client's state.
        method = _method(async_client(ctx, provider, spec.sdk_options), spec.kind)
        forward = Forwarder(ctx, spec.stream_to, spec.label)
        release = await ctx.areserve_budget(call.estimate, call.usd)
        try:
            async with run_slots(ctx), worker_slots():
                await _agrant(call.key, call.estimate)
                output, usage = await _arequest(method, call, forward)
            output = attempt.storable(provider, output)
            counted = count_usage(spec.kind, call.request, output, usage)
            attempt.succeeded(provider, call.model, counted)  # counted before the reservation is released
        except Exception as exc:
            attempt.redact(exc)
            if not isinstance(exc, FALLBACK_ON):
                raise
            if isinstance(exc, openai.RateLimitError):  # else _penalize does nothing: spare the thread hop
                await asyncio.to_thread(_penalize, call.key, exc)
            attempt.failed(provider, call.model, exc, last, forward.sent)
            continue
        finally:
            release()
        if _tracks_tokens(call.key):
            await asyncio.to_thread(_reconcile, call.key, call.estimate, counted)
        return output
    raise AssertionError("unreachable")  # pragma: no cover


async def _arequest(method: Any, call: Prepared, forward: Forwarder) -> tuple[Any, Any]:
    state = call.state
    if state is None:
        response = await method(**call.request)
        return response.to_dict(), getattr(response, "usage", None)
    try:
        async with await method(**call.request) as stream:
            async for item in stream:
                forward.add(state.take(item))
    except _CUT as exc:
        _unless_complete(state, exc)
    forward.flush()
    return state.output(), state.usage


# A connection lost mid-stream: the SDK's error, or the HTTP library's.
_CUT: tuple[type[BaseException], ...] = (openai.APIConnectionError, *_transport_errors())


def _unless_complete(state: StreamState, exc: BaseException) -> None:
    """Re-raise a stream's transport error, unless the reply was complete already: then only what follows
    the final event was lost (the usage chunk, ``[DONE]``), and the call counts with estimated usage."""
    if not state.done:
        raise exc
    logger.info(
        "a provider's stream broke after its final event (%s): its reply is complete", type(exc).__name__
    )


Executor = Callable[[CallSpec, dict[str, Any]], Any]
