"""The fake OpenAI server itself: a minimal HTTP/1.1 server on asyncio (keep-alive, chunked server-sent
events) and the OpenAI endpoints. The public API is :mod:`agentflow.testing.fake_openai`."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from ._fake_content import count_words, embed_text, make_id, reply_words, text_of
from ._fake_state import Fault, State, parse_faults

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
_MAX_BODY_BYTES = 16 * 1024 * 1024


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path.split("?", 1)[0], headers, body

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    @property
    def api_key(self) -> str:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else auth

    def float_header(self, name: str, default: float) -> float:
        value = self.headers.get(name.lower())
        return default if value is None else float(value)


class Dropped(Exception):
    """A fault asked to close the connection without finishing the response."""


class Responder:
    """Writes one response on a keep-alive connection: JSON at once, or SSE as chunks."""

    def __init__(self, writer: asyncio.StreamWriter, keep_alive: bool) -> None:
        self.writer, self.keep_alive = writer, keep_alive

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
        headers = {"Connection": "keep-alive" if self.keep_alive else "close", **headers}
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
        self.writer.write(self._head(status, head) + body)
        await self.writer.drain()

    async def error(
        self, status: int, message: str, type: str, code: str | None = None, **headers: str
    ) -> None:
        error = {"message": message, "type": type, "param": None, "code": code}
        await self.json(status, {"error": error}, headers)

    async def stream(self, events: AsyncIterator[bytes], fault: Fault | None) -> None:
        head = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Transfer-Encoding": "chunked",
        }
        self.writer.write(self._head(200, head))
        sent = 0
        drop_after = fault.drop_after_chunks if fault is not None else None
        end_after = fault.end_after_chunks if fault is not None else None
        async for event in events:
            if drop_after is not None and sent >= drop_after:
                raise Dropped
            if end_after is not None and sent >= end_after:
                break  # a clean end, as if the provider had nothing more to send
            self.writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await self.writer.drain()
            sent += 1
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


def sse(data: Any, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    text = data if isinstance(data, str) else json.dumps(data)
    return f"{prefix}data: {text}\n\n".encode()


@dataclass
class Options:
    latency_ms: float = 0
    tokens_per_second: float = 0
    completion_tokens: int = 20
    embedding_dimensions: int = 16
    models: tuple[str, ...] = ("fake-model", "fake-embedding")


class Server:
    """The asyncio server: one task per connection, requests on a connection served in order."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.state = State()
        self._connections: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        # The backlog is sized for bursts of hundreds of simultaneous connections (benchmarks).
        self._server = await asyncio.start_server(self._serve, host, port, backlog=2048)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Python 3.11's Server.close() leaves accepted connections open: close them ourselves, and cancel
        # the handlers still sleeping (latency, token pacing) so that none outlives the loop.
        for writer in list(self._connections):
            writer.transport.abort()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (Dropped, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a drop fault, a client gone, or bytes that are not HTTP: close the connection
        except asyncio.CancelledError:
            # stop() cancels the handlers; ending normally keeps Python 3.11's StreamReaderProtocol from
            # logging each cancelled connection task as an error.
            pass
        finally:
            self._connections.discard(writer)
            writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed an idle keep-alive connection
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        respond = Responder(writer, keep_alive)
        length = int(headers.get("content-length", "0"))
        if headers.get("transfer-encoding", "").lower() == "chunked" or length > _MAX_BODY_BYTES:
            respond.keep_alive = False
            await respond.error(
                400, "chunked or oversized request bodies are not supported", "invalid_request_error"
            )
            return False
        body = await reader.readexactly(length) if length else b""
        request = Request(method, path, headers, body)
        try:
            await self._dispatch(request, respond)
        except (ValueError, KeyError, TypeError) as exc:
            await respond.error(400, f"invalid request: {exc}", "invalid_request_error")
        return keep_alive

    async def _dispatch(self, request: Request, respond: Responder) -> None:
        route = (request.method, request.path.rstrip("/"))
        if route == ("GET", "/_fake/stats"):
            return await respond.json(200, self.state.as_dict())
        if route == ("POST", "/_fake/reset"):
            self.state = State()
            return await respond.json(200, {"ok": True})
        if route == ("POST", "/_fake/faults"):
            faults = parse_faults(request.json())
            self.state.faults.extend(faults)
            return await respond.json(200, {"ok": True, "pending": len(self.state.faults)})
        if route == ("GET", "/v1/models"):
            models = [
                {"id": name, "object": "model", "created": 0, "owned_by": "agentflow-fake"}
                for name in self.options.models
            ]
            return await respond.json(200, {"object": "list", "data": models})
        handlers = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/responses"): self._responses,
            ("POST", "/v1/embeddings"): self._embeddings,
        }
        handler = handlers.get(route)
        if handler is None:
            return await respond.error(
                404, f"no route {request.method} {request.path}", "invalid_request_error"
            )
        payload = request.json()
        model = str(payload.get("model", ""))
        # Counted in the state of the request's arrival: a slow reply that ends after a reset (a client that
        # gave up on it long ago) must not count against whoever reset the server since.
        state = self.state
        state.requests += 1
        state.log_request(model, request.api_key)
        latency_ms = request.float_header("X-Fake-Latency-Ms", self.options.latency_ms)
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000)
        fault = state.take_fault(model)
        if fault is not None and fault.status is not None:
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            kind, code = (
                ("requests", "rate_limit_exceeded") if fault.status == 429 else ("server_error", None)
            )
            message = fault.message or f"injected failure (fake server): HTTP {fault.status}"
            # A provider echoing the caller's key in its error message (agentflow must never show it).
            message = message.replace("{api_key}", request.api_key)
            return await respond.error(fault.status, message, kind, fault.code or code, **headers)
        if fault is not None and fault.drop_after_chunks is not None and not payload.get("stream"):
            raise Dropped  # a non-streamed response cannot break half-way: close before answering
        await handler(request, payload, model, respond, fault, state)

    def _reply(self, model: str, prompt: Any, limit: Any, fault: Fault | None) -> tuple[list[str], str]:
        if fault is not None and fault.words is not None:
            return list(fault.words), "stop"
        wanted = self.options.completion_tokens
        count = min(wanted, int(limit)) if limit else wanted
        return reply_words(model, prompt, count), "length" if count < wanted else "stop"

    async def _paced(self, request: Request, pieces: Iterable[bytes], first: int) -> AsyncIterator[bytes]:
        """Yield SSE events, pacing the ones after ``first`` (the token deltas) at the token rate."""
        rate = request.float_header("X-Fake-Tokens-Per-Second", self.options.tokens_per_second)
        for index, piece in enumerate(pieces):
            if rate > 0 and index > first:
                await asyncio.sleep(1 / rate)
            yield piece

    async def _chat(
        self,
        request: Request,
        payload: dict[str, Any],
        model: str,
        respond: Responder,
        fault: Fault | None,
        state: State,
    ) -> None:
        messages = payload["messages"]
        words, finish = self._reply(
            model, messages, payload.get("max_completion_tokens") or payload.get("max_tokens"), fault
        )
        usage = {
            "prompt_tokens": count_words(text_of(messages)),
            "completion_tokens": len(words),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": make_id("chatcmpl-", model, messages), "created": int(time.time()), "model": model}
        base["system_fingerprint"] = "fp_fake"
        if not payload.get("stream"):
            message = {"role": "assistant", "content": " ".join(words), "refusal": None}
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            body = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            if fault is not None and fault.no_usage:
                del body["usage"]
            await respond.json(200, body)
        else:
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            include_usage = include_usage and not (fault is not None and fault.no_usage)
            extra = {"usage": None} if include_usage else {}

            def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
                choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
                return sse({**base, "object": "chat.completion.chunk", "choices": [choice], **extra})

            events = [chunk({"role": "assistant", "content": "", "refusal": None})]
            events += [chunk({"content": word if i == 0 else " " + word}) for i, word in enumerate(words)]
            events.append(chunk({}, finish))
            if include_usage:
                events.append(sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
            events.append(sse("[DONE]"))
            await respond.stream(self._paced(request, events, first=0), fault)
        state.count(model, request.api_key, usage["prompt_tokens"], usage["completion_tokens"])

    async def _responses(
        self,
        request: Request,
        payload: dict[str, Any],
        model: str,
        respond: Responder,
        fault: Fault | None,
        state: State,
    ) -> None:
        prompt = [payload.get("instructions"), payload["input"]]
        words, finish = self._reply(model, prompt, payload.get("max_output_tokens"), fault)
        text = " ".join(words)
        input_tokens = count_words(text_of([payload.get("instructions") or "", payload["input"]]))
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(words),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + len(words),
        }
        response_id, item_id = make_id("resp_", model, prompt), make_id("msg_", model, prompt)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [part],
        }
        status = "completed" if finish == "stop" else "incomplete"
        response = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "error": None,
            "incomplete_details": None if status == "completed" else {"reason": "max_output_tokens"},
            "instructions": payload.get("instructions"),
            "max_output_tokens": payload.get("max_output_tokens"),
            "model": model,
            "output": [item],
            "parallel_tool_calls": True,
            "previous_response_id": payload.get("previous_response_id"),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "metadata": payload.get("metadata") or {},
            "usage": None if fault is not None and fault.no_usage else usage,
        }
        if not payload.get("stream"):
            await respond.json(200, response)
        else:
            pending = {
                **response,
                "status": "in_progress",
                "output": [],
                "usage": None,
                "incomplete_details": None,
            }
            open_item = {**item, "status": "in_progress", "content": []}
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            raw: list[dict[str, Any]] = [
                {"type": "response.created", "response": pending},
                {"type": "response.in_progress", "response": pending},
                {"type": "response.output_item.added", "output_index": 0, "item": open_item},
                {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
            ]
            raw += [
                {
                    "type": "response.output_text.delta",
                    **where,
                    "delta": word if i == 0 else " " + word,
                    "logprobs": [],
                }
                for i, word in enumerate(words)
            ]
            raw += [
                {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
                {"type": "response.content_part.done", **where, "part": part},
                {"type": "response.output_item.done", "output_index": 0, "item": item},
                {"type": f"response.{status}", "response": response},
            ]
            events = [sse({**event, "sequence_number": n}, event["type"]) for n, event in enumerate(raw)]
            await respond.stream(self._paced(request, events, first=3), fault)
        state.count(model, request.api_key, input_tokens, len(words))

    async def _embeddings(
        self,
        request: Request,
        payload: dict[str, Any],
        model: str,
        respond: Responder,
        fault: Fault | None,
        state: State,
    ) -> None:
        inputs = payload["input"]
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]  # one string, or one list of token ids
        dimensions = int(payload.get("dimensions") or self.options.embedding_dimensions)
        data = []
        for index, text in enumerate(inputs):
            vector = embed_text(model, text, dimensions)
            encoded: Any = vector
            if payload.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        prompt_tokens = sum(
            len(text) if isinstance(text, list) else count_words(str(text)) for text in inputs
        )
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        await respond.json(200, {"object": "list", "data": data, "model": model, "usage": usage})
        state.count(model, request.api_key, prompt_tokens, 0)
