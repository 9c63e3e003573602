"""Token counts agentflow has to guess: before a call (its reservation against budgets and rate limits), and
after one whose provider reported no usage (a stream without its usage chunk, a reply without ``usage``).

Both are about 4 characters a token, with no tokenizer: agentflow serves any model of any provider. The
guess before a call is cautious (the whole request's JSON, plus its completion limit); the one after is the
text itself, and the usage it records is marked ``estimated``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

CHAT, RESPONSES, EMBEDDINGS = "chat", "responses", "embeddings"

# Each chat message costs a few tokens of its own (role, separators) besides its content.
_PER_MESSAGE_TOKENS = 4


def tokens_in(text: str) -> int:
    """About how many tokens ``text`` holds: 4 characters a token, rounded up."""
    return math.ceil(len(text) / 4)


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


def _texts(value: Any) -> Iterator[str]:
    """The text in a message's content, a Responses input, or an embeddings input."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key in ("content", "text", "input_text", "output", "arguments"):
            if key in value:
                yield from _texts(value[key])


def prompt_tokens(kind: str, request: dict[str, Any]) -> int:
    """The prompt tokens of a call whose provider did not report them, from its request."""
    if kind == CHAT:
        messages = request.get("messages") or []
        return sum(tokens_in("".join(_texts(m))) + _PER_MESSAGE_TOKENS for m in messages) + 3
    if kind == RESPONSES:
        instructions = request.get("instructions")
        return tokens_in("".join(_texts([instructions or "", request.get("input")])))
    inputs = request.get("input")
    if isinstance(inputs, list) and inputs and all(isinstance(i, int) for i in inputs):
        return len(inputs)  # one list of token ids: counted exactly
    if isinstance(inputs, list) and inputs and all(isinstance(i, list) for i in inputs):
        return sum(len(i) for i in inputs)
    return sum(tokens_in(text) for text in _texts(inputs))


def _chat_completion_text(choices: Iterable[Any], part: str) -> Iterator[str]:
    for choice in choices:
        message = choice.get(part) or {}
        for key in ("content", "refusal"):
            if isinstance(message.get(key), str):
                yield message[key]
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    yield function[key]


def completion_tokens(kind: str, items: list[dict[str, Any]], streamed: bool) -> int:
    """The completion tokens of a call whose provider did not report them, from what it sent back: the
    response (``items`` of one) or a stream's chunks/events."""
    if kind == EMBEDDINGS:
        return 0
    parts: list[str] = []
    for item in items:
        if kind == CHAT:
            parts += _chat_completion_text(item.get("choices") or (), "delta" if streamed else "message")
        elif streamed:
            if str(item.get("type", "")).endswith(".delta") and isinstance(item.get("delta"), str):
                parts.append(item["delta"])
        else:
            parts += _texts(item.get("output") or [])
    return tokens_in("".join(parts))
