"""Token usage and cost: recorded per step, summed per run, checked against the run's budget.

A step records what it spent with :func:`record_usage` (the wrapped OpenAI client does it for every call;
any component calling another provider can do it too). Each step's checkpoint keeps its own records; a run's
totals are the sum over its steps, so a parent step never counts its children's usage twice.

A usage dict::

    {"calls": 2, "prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200, "cost_usd": 0.00042,
     "by_model": {"gpt-4o-mini": {"calls": 2, "prompt_tokens": 120, ..., "cost_usd": 0.00042}}}

``cost_usd`` is ``None`` for a model without a price (and such calls are counted in ``unpriced_calls``).
A call whose provider reported no usage (a stream without its usage chunk) is counted with estimated tokens
and in ``estimated_calls``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .context import _frame, current_run
from .serialization import check_storable

COUNTS = ("calls", "prompt_tokens", "completion_tokens", "total_tokens")

#: The largest token budget: a signed 64-bit integer (a PostgreSQL bigint, a Java long).
MAX_BUDGET_TOKENS = 2**63 - 1

# (model, prompt_tokens, completion_tokens) -> USD, or None when the model has no price.
Pricer = Callable[[str, int, int], float | None]


def _token_count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{name} must be an int >= 0, not {value!r}")
    return value


def entry(
    model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float | None, estimated: bool = False
) -> dict[str, Any]:
    """The usage dict of one call (``estimated``: its tokens are a guess, the provider reported none)."""
    one: dict[str, Any] = {
        "calls": 1,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cost_usd": cost_usd,
    }
    total = {key: one[key] for key in COUNTS}
    total["cost_usd"] = cost_usd or 0.0
    if cost_usd is None:
        total["unpriced_calls"] = 1
    if estimated:
        total["estimated_calls"] = 1
    total["by_model"] = {model: one}
    return total


def merge(into: dict[str, Any], usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Add ``usage`` to ``into`` (in place) and return ``into``."""
    if not usage:
        return into
    for key in COUNTS:
        into[key] = into.get(key, 0) + int(usage.get(key) or 0)
    into["cost_usd"] = round(float(into.get("cost_usd") or 0.0) + float(usage.get("cost_usd") or 0.0), 10)
    for key in ("unpriced_calls", "estimated_calls"):
        if usage.get(key):
            into[key] = into.get(key, 0) + int(usage[key])
    models = into.setdefault("by_model", {})
    for model, counts in (usage.get("by_model") or {}).items():
        mine = models.setdefault(model, {key: 0 for key in COUNTS} | {"cost_usd": None})
        for key in COUNTS:
            mine[key] += int(counts.get(key) or 0)
        if counts.get("cost_usd") is not None:
            mine["cost_usd"] = round(float(mine["cost_usd"] or 0.0) + float(counts["cost_usd"]), 10)
    return into


def event_summary(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a step's ``step.completed`` / ``step.failed`` event says about its usage: the sums (every key),
    and the provider and model that answered. ``None`` for a step that made no provider call.

    Clients add these up into the run's usage as the steps end, so that a page needs nothing but the stream.
    """
    if not usage or not usage.get("calls"):
        return None
    summary: dict[str, Any] = {key: int(usage.get(key) or 0) for key in COUNTS}
    summary["cost_usd"] = float(usage.get("cost_usd") or 0.0)
    summary["unpriced_calls"] = int(usage.get("unpriced_calls") or 0)
    summary["estimated_calls"] = int(usage.get("estimated_calls") or 0)
    for note in ("provider", "model"):
        if isinstance(usage.get(note), str):
            summary[note] = usage[note]
    return summary


@dataclass(frozen=True, slots=True)
class Budget:
    """A run's spending limit: it stops (failed, ``budget_exceeded``) once either total reaches its limit."""

    usd: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if self.usd is not None and (
            not isinstance(self.usd, int | float)
            or isinstance(self.usd, bool)
            or not 0 < self.usd < math.inf  # JSON (and the run's row) cannot hold an infinity
        ):
            raise TypeError(f"budget usd must be a finite number > 0 or None, not {self.usd!r}")
        if self.tokens is not None and (
            not isinstance(self.tokens, int)
            or isinstance(self.tokens, bool)
            or not 0 < self.tokens <= MAX_BUDGET_TOKENS
        ):
            raise TypeError(
                f"budget tokens must be an int from 1 to {MAX_BUDGET_TOKENS} or None, not {self.tokens!r}"
            )
        if self.usd is None and self.tokens is None:
            raise TypeError("a budget needs usd, tokens or both")

    @classmethod
    def parse(cls, value: Any) -> Budget | None:
        """``None``, a :class:`Budget` or a dict ``{"usd": ..., "tokens": ...}``; a TypeError names a mistake."""
        if value is None or isinstance(value, Budget):
            return value
        if not isinstance(value, Mapping) or set(value) - {"usd", "tokens"}:
            raise TypeError(f"a budget is a Budget or a dict with 'usd' and/or 'tokens', not {value!r}")
        return cls(usd=value.get("usd"), tokens=value.get("tokens"))

    def as_dict(self) -> dict[str, Any]:
        return {
            key: value for key, value in (("usd", self.usd), ("tokens", self.tokens)) if value is not None
        }

    def exceeded(self, usage: Mapping[str, Any]) -> str | None:
        """Which limit ``usage`` reached (``"usd"`` or ``"tokens"``), or None."""
        if self.usd is not None and float(usage.get("cost_usd") or 0.0) >= self.usd:
            return "usd"
        if self.tokens is not None and int(usage.get("total_tokens") or 0) >= self.tokens:
            return "tokens"
        return None


def record_usage(
    model: str,
    *,
    prompt_tokens: int,
    completion_tokens: int = 0,
    cost_usd: float | None = None,
    estimated: bool = False,
) -> dict[str, Any] | None:
    """Record the tokens one provider call spent, on the running step (and the run's totals).

    ``cost_usd`` defaults to the price table's (``AGENTFLOW["LLM_PRICES"]``). ``estimated``: the tokens are
    a guess (the provider did not report them); the call is also counted in ``estimated_calls``. Returns the
    call's usage dict;
    outside a workflow it checks its arguments and returns None. Usage recorded by an attempt that later
    fails still counts: the provider billed it.
    """
    if not isinstance(model, str) or not model:
        raise TypeError(f"model must be a non-empty str, not {model!r}")
    check_storable(model, what="the model name")
    _token_count(prompt_tokens, "prompt_tokens")
    _token_count(completion_tokens, "completion_tokens")
    if cost_usd is not None and (
        not isinstance(cost_usd, int | float) or isinstance(cost_usd, bool) or not 0 <= cost_usd < math.inf
    ):
        raise TypeError(f"cost_usd must be a finite number >= 0 or None, not {cost_usd!r}")
    ctx = current_run()
    if ctx is None:
        return None
    if cost_usd is None and ctx.pricer is not None:
        cost_usd = ctx.pricer(model, prompt_tokens, completion_tokens)
    if not isinstance(estimated, bool):
        raise TypeError(f"estimated must be a bool, not {estimated!r}")
    usage = entry(model, prompt_tokens, completion_tokens, cost_usd, estimated)
    frame = _frame.get() or ctx.root
    ctx.add_usage(frame, usage)
    return usage
