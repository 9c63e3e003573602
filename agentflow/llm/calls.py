"""One provider call inside a run: capacity, fallback, the HTTP request, streamed tokens, usage.

This is the body of the step every wrapped-client call becomes (:mod:`agentflow.llm.client`). Its result is
JSON (the response as the provider sent it, or a streamed call's chunks), which the step checkpoints and the
client turns back into the SDK's objects.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import openai

from ..conf import agentflow_settings
from ..core import events as ev
from ..core.context import RunContext, _frame, current_run
from ..core.errors import AgentflowError
from ..core.usage import record_usage
from ..ratelimit import RateLimited, limiter
from .breaker import breakers
from .providers import Provider
from .slots import Slots

logger = logging.getLogger("agentflow.llm")

CHAT, RESPONSES, EMBEDDINGS = "chat", "responses", "embeddings"


class IncompleteStream(AgentflowError):
    """A streamed response ended before its last event (the connection closed early): retried."""

    code = "incomplete_stream"


class ProviderQuotaExceeded(AgentflowError):
    """Every provider refused the call for an exhausted quota (``insufficient_quota``): not retried."""

    code = "provider_quota_exceeded"


class NoProvider(AgentflowError):
    code = "no_provider"


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
    return error


def estimate_parts(kind: str, request: dict[str, Any]) -> tuple[int, int]:
    """A cautious guess of a call's ``(prompt tokens, completion tokens)`` before it is made: about 4
    characters a token, and the request's limit (``max_tokens``...; 0 without one). The rate limiter is
    reconciled with the actual count afterwards."""
    if kind == CHAT:
        prompt: Any = request.get("messages")
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
    elif kind == RESPONSES:
        prompt = [request.get("instructions"), request.get("input")]
        limit = request.get("max_output_tokens")
    else:
        prompt, limit = request.get("input"), 0
    size = len(json.dumps(prompt, default=str))
    return size // 4 + 1, (int(limit) if isinstance(limit, int) and limit > 0 else 0)


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

    def add(self, text: str) -> None:
        if self.stream_to is None or not text:
            return
        self.buffer.append(text)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if not self.buffer:
            return
        text, self.buffer = "".join(self.buffer), []
        self.last = time.monotonic() if now is None else now
        if self.stream_to == "data":
            self.ctx.emit_content(ev.DATA, {"label": self.label, "value": text})
        else:
            self.ctx.emit_content(ev.OUTPUT_DELTA, {"text": text})


@dataclass(slots=True)
class StreamState:
    kind: str
    strip_usage_chunk: bool
    chunks: list[dict[str, Any]]
    usage: Any = None
    done: bool = False

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
                if choice.index == 0:
                    text = choice.delta.content or ""
                if choice.finish_reason is not None:
                    self.done = True
            return text
        self.chunks.append(data)
        kind = getattr(item, "type", "")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.done = True
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


# -- the call --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallSpec:
    """What a client call needs besides its request: set by the client, the same for all its calls."""

    kind: str
    providers: tuple[Provider, ...]
    stream_to: str | None
    label: str | None
    sdk_options: tuple[tuple[str, Any], ...]


class _Attempt:
    """Bookkeeping of one attempt across providers: notes on the step, fallbacks, usage."""

    def __init__(self, spec: CallSpec, request: dict[str, Any]) -> None:
        ctx = current_run()
        if ctx is None:  # pragma: no cover - the client only runs this inside a run
            raise RuntimeError("a provider call step runs inside a workflow")
        self.ctx, self.spec, self.request = ctx, spec, request
        self.fallbacks: list[dict[str, Any]] = []
        requested = request.get("model")
        if not isinstance(requested, str) or not requested:
            raise TypeError(f"the call needs a model name (model=...), not {requested!r}")
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
        self.stream = bool(request.get("stream"))

    def prepare(
        self, provider: Provider
    ) -> tuple[dict[str, Any], str, int, StreamState | None, Callable[[], None]]:
        """The request for ``provider``, its model, its token estimate, its stream state, and the release of
        its budget reservation (call it when the request is over, whatever the outcome)."""
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
        # Calls in flight hold their estimate against the budget: a fan-out cannot start far past it.
        release = self.ctx.reserve_budget(prompt + completion, usd)
        return request, model, prompt + completion, state, release

    def failed(self, provider: Provider, model: str, exc: BaseException, last: bool) -> None:
        """Note a provider's failure; if it was the last provider, raise what fails the attempt."""
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
            self.fallbacks.append({"provider": provider.name, "model": model, "error": _describe(exc)})
            self.note()
            logger.warning(
                "step %s: provider %s failed (%s); trying the next one",
                self.ctx.current_step().step_id,
                provider.name,
                type(exc).__name__,
            )
            return
        if _quota_exhausted(exc):
            raise ProviderQuotaExceeded(f"provider {provider.name!r}: {exc}") from exc
        raise exc from None

    def succeeded(self, provider: Provider, model: str, usage: Any) -> None:
        breakers.succeeded(provider.name)
        counts = _usage_counts(self.spec.kind, usage)
        if counts is not None:
            record_usage(model, prompt_tokens=counts[0], completion_tokens=counts[1])
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


def _reconcile(key: str, estimate: int, usage: Any, kind: str) -> None:
    counts = _usage_counts(kind, usage)
    if counts is None:
        return
    try:
        limiter.reconcile(key, estimate, counts[0] + counts[1])
    except Exception:
        logger.debug("rate limit %s: reconcile failed", key, exc_info=True)


def execute(spec: CallSpec, request: dict[str, Any]) -> Any:
    """The step body of a sync client's call."""
    attempt = _Attempt(spec, request)
    ctx = attempt.ctx
    for index, provider in enumerate(attempt.candidates):
        last = index == len(attempt.candidates) - 1
        call, model, estimate, state, release = attempt.prepare(provider)
        key = provider.limit_key(model)
        try:
            limiter.wait_for_capacity(key, tokens=estimate)
            with run_slots(ctx).held(ctx.check_interrupt), worker_slots().held(ctx.check_interrupt):
                output, usage = _request(ctx, spec, provider, call, state)
            attempt.succeeded(provider, model, usage)  # counted before the reservation is released
        except FALLBACK_ON as exc:
            _penalize(key, exc)
            attempt.failed(provider, model, exc, last)
            continue
        finally:
            release()
        if _tracks_tokens(key):
            _reconcile(key, estimate, usage, spec.kind)
        return output
    raise AssertionError("unreachable")  # pragma: no cover


def _request(
    ctx: RunContext, spec: CallSpec, provider: Provider, call: dict[str, Any], state: StreamState | None
) -> tuple[Any, Any]:
    method = _method(sync_client(provider, spec.sdk_options), spec.kind)
    if state is None:
        response = method(**call)
        return response.to_dict(), getattr(response, "usage", None)
    forward = Forwarder(ctx, spec.stream_to, spec.label)
    with method(**call) as stream:
        for item in stream:
            forward.add(state.take(item))
    forward.flush()
    return state.output(), state.usage


async def aexecute(spec: CallSpec, request: dict[str, Any]) -> Any:
    """The step body of an async client's call."""
    attempt = _Attempt(spec, request)
    ctx = attempt.ctx
    for index, provider in enumerate(attempt.candidates):
        last = index == len(attempt.candidates) - 1
        call, model, estimate, state, release = attempt.prepare(provider)
        key = provider.limit_key(model)
        try:
            await limiter.await_for_capacity(key, tokens=estimate)
            async with run_slots(ctx), worker_slots():
                output, usage = await _arequest(ctx, spec, provider, call, state)
            attempt.succeeded(provider, model, usage)  # counted before the reservation is released
        except FALLBACK_ON as exc:
            if isinstance(exc, openai.RateLimitError):  # else _penalize does nothing: spare the thread hop
                await asyncio.to_thread(_penalize, key, exc)
            attempt.failed(provider, model, exc, last)
            continue
        finally:
            release()
        if _tracks_tokens(key):
            await asyncio.to_thread(_reconcile, key, estimate, usage, spec.kind)
        return output
    raise AssertionError("unreachable")  # pragma: no cover


async def _arequest(
    ctx: RunContext, spec: CallSpec, provider: Provider, call: dict[str, Any], state: StreamState | None
) -> tuple[Any, Any]:
    method = _method(async_client(ctx, provider, spec.sdk_options), spec.kind)
    if state is None:
        response = await method(**call)
        return response.to_dict(), getattr(response, "usage", None)
    forward = Forwarder(ctx, spec.stream_to, spec.label)
    async with await method(**call) as stream:
        async for item in stream:
            forward.add(state.take(item))
    forward.flush()
    return state.output(), state.usage


Executor = Callable[[CallSpec, dict[str, Any]], Any]
