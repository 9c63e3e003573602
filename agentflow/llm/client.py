"""The wrapped OpenAI clients: the SDK's surface, where each call inside a workflow is a durable step.

    from agentflow.llm import AsyncOpenAI

    client = AsyncOpenAI()  # AGENTFLOW["LLM_PROVIDERS"], or OPENAI_API_KEY / OPENAI_BASE_URL
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=[...])

Outside a workflow each call is the plain SDK's (its own retries, no checkpoint). Inside one, a call is a
step named ``openai.chat`` (``openai.responses``, ``openai.embeddings``) with a retry policy for the errors
that deserve one, checkpointed so a replayed run gets the same response without calling again; a streamed
call forwards its tokens to the run's stream as they arrive and returns the recorded chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Generic, Literal, TypeVar

import openai
from openai._models import construct_type
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from ..core import events as ev
from ..core.component import Component, StepCall
from ..core.context import current_run
from ..core.errors import StepTimeout
from ..core.retry import RetryPolicy
from . import calls
from .providers import Provider, configured_providers, parse_providers

T = TypeVar("T")

StreamTo = Literal["output", "data"] | None

DEFAULT_RETRY = RetryPolicy(
    max_attempts=5,
    initial_delay_seconds=1.0,
    backoff=2.0,
    max_delay_seconds=30.0,
    retry_on=(*calls.TRANSIENT, StepTimeout),
)
"""Retries of a provider call: 429s, 5xx, time-outs, connection errors and cut streams, at most 5 attempts
with full-jitter backoff from 1 s to 30 s, never shorter than the provider's ``Retry-After``; and attempts that
exceeded the step's ``timeout_seconds``."""

_RESULT_TYPES: dict[str, Any] = {
    calls.CHAT: (ChatCompletion, ChatCompletionChunk),
    calls.RESPONSES: (Response, ResponseStreamEvent),
    calls.EMBEDDINGS: (CreateEmbeddingResponse, None),
}


class RecordedStream(Generic[T]):
    """A streamed call's chunks (or events), recorded by its step: iterate it like the SDK's stream, with
    ``for`` or ``async for``. ``text`` is the streamed text, joined."""

    def __init__(self, items: list[T], text: str) -> None:
        self.items = items
        self.text = text

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    async def __aiter__(self) -> AsyncIterator[T]:
        for item in self.items:
            yield item

    def __len__(self) -> int:
        return len(self.items)

    def __enter__(self) -> RecordedStream[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    async def __aenter__(self) -> RecordedStream[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def close(self) -> None:
        return None


def _text_of(kind: str, item: dict[str, Any]) -> str:
    if kind == calls.CHAT:
        for choice in item.get("choices") or ():
            if choice.get("index") == 0:
                return str((choice.get("delta") or {}).get("content") or "")
        return ""
    if item.get("type") == "response.output_text.delta":
        return str(item.get("delta") or "")
    return ""


def to_sdk(kind: str, output: Any) -> Any:
    """A step's JSON output as the SDK's object (a :class:`RecordedStream` for a streamed call)."""
    whole, chunk = _RESULT_TYPES[kind]
    if isinstance(output, dict) and output.get("stream") is True:
        raw = list(calls.unpack(output))
        items = [construct_type(type_=chunk, value=item) for item in raw]
        return RecordedStream(items, "".join(_text_of(kind, item) for item in raw))
    return whole.construct(**output)


@dataclasses.dataclass(frozen=True, slots=True)
class StepOptions:
    name: str | None = None  # the step's component name; default openai.<kind>
    stream_to: StreamTo = "output"
    label: str = "tokens"
    cache_ttl_seconds: float | None = None  # None: no cache
    retry: RetryPolicy = DEFAULT_RETRY
    timeout_seconds: float | None = None


class _Base:
    _async = False

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        providers: Iterable[Provider | dict[str, Any]] | None = None,
        **sdk_options: Any,
    ) -> None:
        if providers is not None and (
            api_key is not None or base_url is not None or organization is not None
        ):
            raise TypeError("give either providers=[...] or api_key/base_url/organization, not both")
        if "max_retries" in sdk_options and not isinstance(sdk_options["max_retries"], int):
            raise TypeError(f"max_retries must be an int, not {sdk_options['max_retries']!r}")
        self._providers: tuple[Provider, ...] | None
        if providers is not None:
            self._providers = parse_providers(providers)
        elif api_key is not None or base_url is not None or organization is not None:
            base = configured_providers()[0]  # what is not given comes from the settings or environment
            self._providers = (
                Provider(
                    name="openai",
                    api_key=api_key if api_key is not None else base.api_key,
                    base_url=base_url if base_url is not None else base.base_url,
                    organization=organization if organization is not None else base.organization,
                ),
            )
        else:
            self._providers = None  # AGENTFLOW["LLM_PROVIDERS"], read at each call (override_settings)
        self._sdk_options = dict(sdk_options)
        self._step = StepOptions()
        self._plain: Any = None
        self._components: dict[str, Component[Any, Any]] = {}

    @property
    def providers(self) -> tuple[Provider, ...]:
        return self._providers if self._providers is not None else configured_providers()

    def _copy(self, step: StepOptions, sdk_options: dict[str, Any]) -> Any:
        clone = object.__new__(type(self))
        clone._providers = self._providers
        clone._sdk_options = sdk_options
        clone._step = step
        clone._plain = None
        clone._components = {}
        return clone

    def with_step(
        self,
        *,
        name: str | None = None,
        stream_to: StreamTo | Literal["unset"] = "unset",
        label: str | None = None,
        cache_ttl_seconds: float | None = None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
        timeout_seconds: float | None = None,
    ) -> Any:
        """A copy whose calls inside workflows are steps with these options (the others as they were).

        ``stream_to``: where streamed tokens go, ``"output"`` (``output.delta`` events, the default), ``"data"``
        (``data`` events labelled ``label``) or ``None`` (nowhere). ``cache_ttl_seconds``: serve an identical
        request from the cache. ``max_attempts``/``retry``: the retry policy (default :data:`DEFAULT_RETRY`).
        ``timeout_seconds``: bound each attempt.
        """
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = name
        if stream_to != "unset":
            if stream_to not in ("output", "data", None):
                raise TypeError(f"stream_to must be 'output', 'data' or None, not {stream_to!r}")
            changes["stream_to"] = stream_to
        if label is not None:
            if not isinstance(label, str) or not label:
                raise TypeError(f"label must be a non-empty str, not {label!r}")
            changes["label"] = label
        if cache_ttl_seconds is not None:
            changes["cache_ttl_seconds"] = cache_ttl_seconds
        if retry is not None:
            if not isinstance(retry, RetryPolicy):
                raise TypeError(f"retry must be a RetryPolicy, not {retry!r}")
            changes["retry"] = retry
        if max_attempts is not None:
            changes["retry"] = changes.get("retry", self._step.retry).updated(max_attempts=max_attempts)
        if timeout_seconds is not None:
            changes["timeout_seconds"] = timeout_seconds
        step = dataclasses.replace(self._step, **changes)
        clone = self._copy(step, self._sdk_options)
        # Build one now, to throw it away: a mistake (name, ttl, timeout) raises here, not in a run.
        clone._component(calls.CHAT, ())
        clone._components = {}
        return clone

    def with_options(self, **sdk_options: Any) -> Any:
        """A copy with other SDK options (``timeout``, ``default_headers``...), like the SDK's."""
        return self._copy(self._step, {**self._sdk_options, **sdk_options})

    # -- internals ---------------------------------------------------------------------------------------

    def _component(self, kind: str, providers: tuple[Provider, ...]) -> Component[Any, Any]:
        key = f"{kind}:{hash(providers)}"
        made = self._components.get(key)
        if made is not None:
            return made
        step = self._step
        options = tuple(sorted((k, v) for k, v in self._sdk_options.items() if k != "max_retries"))
        spec = calls.CallSpec(kind, providers, step.stream_to, step.label, options)
        if self._async:

            async def body(request: dict[str, Any]) -> Any:
                return await calls.aexecute(spec, request)

        else:

            def body(request: dict[str, Any]) -> Any:  # type: ignore[misc]
                return calls.execute(spec, request)

        made = Component(body, name=step.name or f"openai.{kind}", retry_policy=step.retry)
        if step.cache_ttl_seconds is not None:
            made = made.cache(ttl_seconds=step.cache_ttl_seconds)
        if step.timeout_seconds is not None:
            made = made.timeout(step.timeout_seconds)
        self._components[key] = made
        return made

    def _plain_client(self) -> Any:
        if self._plain is None:
            provider = self.providers[0]
            cls = openai.AsyncOpenAI if self._async else openai.OpenAI
            options = {
                "api_key": provider.api_key,
                "base_url": provider.base_url,
                "organization": provider.organization,
                "default_headers": provider.default_headers,
                **({"timeout": provider.timeout_seconds} if provider.timeout_seconds is not None else {}),
                **self._sdk_options,
            }
            self._plain = cls(**options)
        return self._plain

    def _create(self, kind: str, request: dict[str, Any]) -> Any:
        ctx = current_run()
        if ctx is None:
            # Outside a workflow: the plain SDK, on the first provider, with its own retries.
            provider = self.providers[0]
            model = request.get("model")
            if isinstance(model, str) and provider.serves(model):
                request = {**request, "model": provider.model_for(model)}
            return calls._method(self._plain_client(), kind)(**request)
        call = self._component(kind, self.providers).prepare(ctx, request)
        forward = self._step.stream_to if request.get("stream") else None
        if self._async:
            return self._finish_async(kind, call, forward)
        return self._finish(kind, call, call.run_sync(), forward)

    async def _finish_async(self, kind: str, call: StepCall, forward: str | None) -> Any:
        return self._finish(kind, call, await call.run_async(), forward)

    def _finish(self, kind: str, call: StepCall, output: Any, forward: str | None) -> Any:
        result = to_sdk(kind, output)
        checkpoint = call.ctx.checkpoints.get(call.step_id)
        if forward and call.started_at and checkpoint is not None and checkpoint.attempts == 0:
            # Served from the cache (attempt 0): the subscribers of this run have not seen the text yet.
            # (A replayed step has no start time: its text is in the stream already.)
            if forward == "data":
                data = {"label": self._step.label, "value": result.text}
                call.ctx.emit(ev.DATA, data, step=call.step_id, attempt=0)
            else:
                call.ctx.emit(ev.OUTPUT_DELTA, {"text": result.text}, step=call.step_id, attempt=0)
        return result

    def close(self) -> Any:
        """Close the plain SDK client used outside workflows (run steps manage their own)."""
        if self._plain is not None:
            return self._plain.close()
        return None


class _Completions:
    def __init__(self, client: _Base) -> None:
        self._client = client

    def create(self, **request: Any) -> Any:
        """``client.chat.completions.create(...)``: see the SDK; with ``stream=True`` inside a workflow the
        tokens go to the run's stream and the result is a :class:`RecordedStream` of chunks."""
        return self._client._create(calls.CHAT, request)


class _Chat:
    def __init__(self, client: _Base) -> None:
        self.completions = _Completions(client)


class _Resource:
    def __init__(self, client: _Base, kind: str) -> None:
        self._client, self._kind = client, kind

    def create(self, **request: Any) -> Any:
        return self._client._create(self._kind, request)


class OpenAI(_Base):
    """The sync client: ``chat.completions.create``, ``responses.create``, ``embeddings.create``."""

    @property
    def chat(self) -> _Chat:
        return _Chat(self)

    @property
    def responses(self) -> _Resource:
        return _Resource(self, calls.RESPONSES)

    @property
    def embeddings(self) -> _Resource:
        return _Resource(self, calls.EMBEDDINGS)

    def __enter__(self) -> OpenAI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncOpenAI(OpenAI):
    """The async client: the same calls, awaited."""

    _async = True

    async def close(self) -> None:  # type: ignore[override]
        if self._plain is not None:
            await self._plain.close()

    async def __aenter__(self) -> AsyncOpenAI:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
