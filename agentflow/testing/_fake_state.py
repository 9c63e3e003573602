"""The fake OpenAI server's fault script and token counters (see :mod:`agentflow.testing.fake_openai`)."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    model: str
    status: int | None = None
    retry_after: float | None = None
    drop_after_chunks: int | None = None
    # A streamed response that ends cleanly (no error, no [DONE]) after this many SSE events.
    end_after_chunks: int | None = None
    # A chat stream without its usage chunk, as from a provider that ignores stream_options.include_usage.
    no_usage: bool = False
    # The reply's words instead of those derived from the request: text a real model may send (U+0000...).
    words: list[str] | None = None
    message: str | None = None  # "{api_key}" in it is replaced by the request's API key
    code: str | None = None  # the error's code, e.g. "insufficient_quota" on a 429
    times: int = 1


@dataclass
class Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass
class State:
    """Counters and the fault script; touched only on the server's event loop, so no lock."""

    faults: list[Fault] = field(default_factory=list)
    requests: int = 0
    # One entry per API request at its arrival: {"time": epoch seconds, "model", "key"} (bounded).
    request_log: list[dict[str, Any]] = field(default_factory=list)
    faults_injected: int = 0
    totals: Counts = field(default_factory=Counts)
    by_model: dict[str, Counts] = field(default_factory=dict)
    by_key: dict[str, Counts] = field(default_factory=dict)

    def take_fault(self, model: str) -> Fault | None:
        for fault in self.faults:
            if fnmatch.fnmatchcase(model, fault.model):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                self.faults_injected += 1
                return fault
        return None

    def log_request(self, model: str, key: str) -> None:
        self.request_log.append({"time": time.time(), "model": model, "key": key})
        if len(self.request_log) > 20_000:
            del self.request_log[:10_000]

    def count(self, model: str, key: str, prompt_tokens: int, completion_tokens: int) -> None:
        for counts in (
            self.totals,
            self.by_model.setdefault(model, Counts()),
            self.by_key.setdefault(key, Counts()),
        ):
            counts.requests += 1
            counts.prompt_tokens += prompt_tokens
            counts.completion_tokens += completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "request_log": self.request_log[-10_000:],
            "request_times": [entry["time"] for entry in self.request_log[-10_000:]],
            "faults_injected": self.faults_injected,
            "faults_pending": len(self.faults),
            "totals": self.totals.as_dict(),
            "by_model": {name: counts.as_dict() for name, counts in self.by_model.items()},
            "by_key": {name: counts.as_dict() for name, counts in self.by_key.items()},
        }


def parse_faults(payload: Any) -> list[Fault]:
    """``{"model": "*", "fail": [{...}, ...]}``, a list of faults, or one fault."""
    if isinstance(payload, dict) and "fail" in payload:
        model, items = payload.get("model", "*"), payload["fail"]
    else:
        model, items = "*", payload
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise ValueError("expected a fault, a list of faults or {'model': ..., 'fail': [...]}")
    known = {
        "model", "status", "retry_after", "drop_after_chunks", "end_after_chunks", "no_usage", "words", "message",
        "code", "times",
    }  # fmt: skip
    kinds = ("status", "drop_after_chunks", "end_after_chunks", "no_usage", "words")
    faults = []
    for item in items:
        if not isinstance(item, dict) or set(item) - known:
            raise ValueError(f"unknown fault fields in {item!r}; known: {sorted(known)}")
        if sum(1 for kind in kinds if item.get(kind) not in (None, False)) != 1:
            raise ValueError(f"a fault needs exactly one of {', '.join(map(repr, kinds))}: {item!r}")
        words = item.get("words")
        if words is not None and (
            not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words)
        ):
            raise ValueError(f"words must be a non-empty list of strings: {item!r}")
        faults.append(Fault(**{"model": model, **item}))
    return faults
