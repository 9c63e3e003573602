"""Tokens and cost as the API and the admin show them: the usage dicts of :mod:`agentflow.core.usage` with
every key present, and the same numbers read inside the database, so lists can sort by them and a workflow's
totals are one aggregate query.

The usage JSON is written by the engine only (``WorkflowRun.usage``, ``StepRun.usage``): its keys are ints,
except ``cost_usd`` (a float; ``None`` for an unpriced model in ``by_model``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models import BigIntegerField, Count, Field, FloatField, QuerySet, Sum, Value
from django.db.models.expressions import Combinable
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce

from .core.usage import COUNTS, merge

STEP_NOTES = ("provider", "model")


def usage_totals(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """A usage dict with every key, zeros when nothing was spent (a run without LLM calls)."""
    summed = merge({}, usage) if isinstance(usage, Mapping) else {}
    totals: dict[str, Any] = {key: int(summed.get(key) or 0) for key in COUNTS}
    totals["cost_usd"] = float(summed.get("cost_usd") or 0.0)
    totals["unpriced_calls"] = int(summed.get("unpriced_calls") or 0)
    totals["estimated_calls"] = int(summed.get("estimated_calls") or 0)
    totals["by_model"] = {
        model: {key: int(counts.get(key) or 0) for key in COUNTS} | {"cost_usd": counts.get("cost_usd")}
        for model, counts in (summed.get("by_model") or {}).items()
    }
    return totals


def step_usage(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A step's usage with every key (``None``: the step made no provider call), with the LLM layer's notes:
    the provider and model that answered, and the providers that failed before (``fallbacks``)."""
    if not isinstance(usage, Mapping) or not usage:
        return None
    step = usage_totals(usage)
    for key in STEP_NOTES:
        value = usage.get(key)
        step[key] = value if isinstance(value, str) else None
    skipped = usage.get("skipped")
    step["skipped"] = [
        name for name in (skipped if isinstance(skipped, list) else []) if isinstance(name, str)
    ]
    fallbacks = usage.get("fallbacks")
    step["fallbacks"] = [
        dict(item) for item in (fallbacks if isinstance(fallbacks, list) else []) if isinstance(item, Mapping)
    ]
    return step


def budget_limits(budget: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{"usd", "tokens"}`` (``None`` for a limit not set), or ``None`` for a run without a budget."""
    if not isinstance(budget, Mapping) or not budget:
        return None
    return {"usd": budget.get("usd"), "tokens": budget.get("tokens")}


def usage_value(key: str, output_field: Field[Any, Any], field: str = "usage") -> Combinable:
    """``usage[key]`` as a number in SQL (``0`` when missing): ``(usage ->> 'key')::bigint`` on PostgreSQL,
    ``CAST(JSON_EXTRACT(...))`` on SQLite."""
    zero = 0.0 if isinstance(output_field, FloatField) else 0
    return Coalesce(Cast(KeyTextTransform(key, field), output_field), Value(zero), output_field=output_field)


def workflow_usage(runs: QuerySet[Any]) -> dict[str, Any]:
    """Totals over ``runs`` in one aggregate query: ``{"runs", "calls", "prompt_tokens",
    "completion_tokens", "total_tokens", "cost_usd", "unpriced_calls", "estimated_calls"}``."""
    whole = BigIntegerField()
    sums: dict[str, Any] = {
        key: Coalesce(Sum(usage_value(key, whole)), Value(0), output_field=whole)
        for key in (*COUNTS, "unpriced_calls", "estimated_calls")
    }
    sums["cost_usd"] = Coalesce(
        Sum(usage_value("cost_usd", FloatField())), Value(0.0), output_field=FloatField()
    )
    totals = runs.order_by().aggregate(runs=Count("pk"), **sums)
    return {
        "runs": int(totals["runs"]),
        **{key: int(totals[key]) for key in COUNTS},
        # Float sums differ in their last bits between databases; the per-run totals are rounded likewise.
        "cost_usd": round(float(totals["cost_usd"]), 10),
        "unpriced_calls": int(totals["unpriced_calls"]),
        "estimated_calls": int(totals["estimated_calls"]),
    }
