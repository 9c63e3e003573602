"""Prices of provider calls: ``AGENTFLOW["LLM_PRICES"]``, USD per million tokens, by model name or glob.

    AGENTFLOW = {"LLM_PRICES": {
        "gpt-4o-mini": {"input": 0.15, "output": 0.60},
        "gpt-4o*": {"input": 2.50, "output": 10.00},
        "*embedding*": {"input": 0.02},
    }}

An exact name wins over a glob, and a longer glob over a shorter one. A model without a price costs ``None``
(counted in ``unpriced_calls``), never a guess.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from ..conf import agentflow_settings

PRICE_KEYS = ("input", "output")


def find_price(prices: Mapping[str, Mapping[str, Any]], model: str) -> Mapping[str, Any] | None:
    if model in prices:
        return prices[model]
    matches = [pattern for pattern in prices if fnmatch.fnmatchcase(model, pattern)]
    if not matches:
        return None
    return prices[max(matches, key=lambda pattern: (len(pattern.replace("*", "")), len(pattern)))]


def cost(
    prices: Mapping[str, Mapping[str, Any]], model: str, prompt_tokens: int, completion_tokens: int
) -> float | None:
    price = find_price(prices, model)
    if price is None:
        return None
    usd = prompt_tokens * float(price.get("input") or 0) + completion_tokens * float(price.get("output") or 0)
    return round(usd / 1_000_000, 10)


def price(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """The cost in USD of a call under ``AGENTFLOW["LLM_PRICES"]``, or None when the model has no price."""
    return cost(agentflow_settings.llm_prices, model, prompt_tokens, completion_tokens)


def validate_prices(value: Any) -> list[str]:
    """What is wrong with an ``LLM_PRICES`` value (empty: nothing)."""
    if not isinstance(value, Mapping):
        return [f"LLM_PRICES must be a dict of model -> {{'input': ..., 'output': ...}}, not {value!r}"]
    problems = []
    for model, entry in value.items():
        if not isinstance(model, str) or not model:
            problems.append(f"LLM_PRICES keys must be model names or globs, not {model!r}")
        elif not isinstance(entry, Mapping) or not entry or set(entry) - set(PRICE_KEYS):
            problems.append(
                f"LLM_PRICES[{model!r}] must be a dict with 'input' and/or 'output', not {entry!r}"
            )
        else:
            for key, number in entry.items():
                if not isinstance(number, int | float) or isinstance(number, bool) or number < 0:
                    problems.append(f"LLM_PRICES[{model!r}][{key!r}] must be a number >= 0, not {number!r}")
    return problems
