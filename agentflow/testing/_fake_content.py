"""What the fake OpenAI server answers: replies, token counts and embeddings, all derived from hashes of the
request so that the same request always gets the same answer."""

from __future__ import annotations

import hashlib
import json
from typing import Any

WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
    "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey",
    "xray", "yankee", "zulu",
)  # fmt: skip


def text_of(value: Any) -> str:
    """Every piece of text in a message list, a Responses ``input`` or a content-part list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(text_of(item) for item in value)
    if isinstance(value, dict):
        return " ".join(text_of(value[key]) for key in ("content", "text", "input_text") if key in value)
    return ""


def count_words(text: str) -> int:
    return max(1, len(text.split()))


def reply_words(model: str, prompt: Any, count: int) -> list[str]:
    digest = hashlib.sha256(json.dumps([model, prompt], sort_keys=True, default=str).encode()).digest()
    while len(digest) < count:
        digest += hashlib.sha256(digest).digest()
    return [WORDS[byte % len(WORDS)] for byte in digest[:count]]


def embed_text(model: str, text: Any, dimensions: int) -> list[float]:
    seed = json.dumps([model, text], default=str).encode()
    values: list[float] = []
    block = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        block += 1
    vector = values[:dimensions]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [v / norm for v in vector]


def make_id(prefix: str, *parts: Any) -> str:
    return prefix + hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]
