"""System checks of the AGENTFLOW setting. Ids are stable: docs/reference/checks.md lists them."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .conf import DEFAULTS, REMOVED
from .llm.pricing import validate_prices
from .llm.providers import parse_providers

_POSITIVE_NUMBERS = (
    "LLM_PROVIDER_COOLDOWN_SECONDS",
    "STREAM_TTL_SECONDS",
    "HEARTBEAT_INTERVAL_SECONDS",
    "LEASE_SECONDS",
    "QUEUED_TIMEOUT_SECONDS",
    "DISPATCH_TIMEOUT_SECONDS",
    "DISPATCH_RETRY_INTERVAL_SECONDS",
    "SLICE_SECONDS",
    "SUSPEND_THRESHOLD_SECONDS",
    "DRAIN_SECONDS",
    "WAIT_TIMEOUT_SECONDS",
    "STREAM_TOKEN_TTL_SECONDS",
    "SSE_KEEPALIVE_SECONDS",
    "WEBSOCKET_KEEPALIVE_SECONDS",
    "SSE_RETRY_SECONDS",
    "STREAM_IDLE_CHECK_SECONDS",
    "RATE_LIMIT_WINDOW_SECONDS",
)
_STRINGS = ("KEY_PREFIX", "TASK_QUEUE", "MONITOR_QUEUE", "CACHE_ALIAS")
_API_SIZES = ("MAX_INPUT_BYTES", "RUNS_PAGE_SIZE", "EVENTS_PAGE_SIZE", "EVENTS_MAX_PAGE_SIZE")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    user = getattr(settings, "AGENTFLOW", {})
    if not isinstance(user, dict):
        return [Error("AGENTFLOW must be a dict.", id="agentflow.E001", obj="AGENTFLOW")]
    errors: list[CheckMessage] = []
    for key in user:
        if key in REMOVED:
            errors.append(Error(f"AGENTFLOW[{key!r}] was removed: {REMOVED[key]}", id="agentflow.E003"))
        elif key not in DEFAULTS:
            close = [k for k in DEFAULTS if k.replace("_", "") == str(key).upper().replace("_", "")]
            hint = f"Did you mean {close[0]!r}?" if close else f"Valid keys: {', '.join(sorted(DEFAULTS))}."
            errors.append(Error(f"AGENTFLOW has an unknown key {key!r}.", hint=hint, id="agentflow.E002"))
    merged = {**DEFAULTS, **{k: v for k, v in user.items() if k in DEFAULTS}}

    for key in _POSITIVE_NUMBERS:
        if not _is_number(merged[key]) or merged[key] <= 0:
            errors.append(
                Error(f"AGENTFLOW[{key!r}] must be a positive number of seconds.", id="agentflow.E004")
            )
    for key, minimum in (
        ("STREAM_MAXLEN", 1),
        ("MAX_RECOVERIES", 0),
        ("SUBSCRIBER_QUEUE_SIZE", 1),
        ("LLM_MAX_CONCURRENCY_PER_RUN", 1),
        ("LLM_MAX_CONCURRENCY_PER_WORKER", 1),
        ("LLM_PROVIDER_FAILURE_THRESHOLD", 1),
        *((name, 1) for name in _API_SIZES),
    ):
        value = merged[key]
        if not _is_whole(value, minimum):
            errors.append(
                Error(f"AGENTFLOW[{key!r}] must be a whole number >= {minimum}.", id="agentflow.E005")
            )
    for key in _STRINGS:
        if not isinstance(merged[key], str) or not merged[key]:
            errors.append(Error(f"AGENTFLOW[{key!r}] must be a non-empty string.", id="agentflow.E006"))
    if merged["REDIS_URL"] is not None and (
        not isinstance(merged["REDIS_URL"], str)
        or not merged["REDIS_URL"].startswith(("redis://", "rediss://", "unix://"))
    ):
        errors.append(
            Error("AGENTFLOW['REDIS_URL'] must be a redis://, rediss:// or unix:// URL.", id="agentflow.E007")
        )
    if isinstance(merged["EXECUTOR"], str):
        try:
            import_string(merged["EXECUTOR"])
        except ImportError as exc:
            errors.append(
                Error(
                    f"AGENTFLOW['EXECUTOR'] cannot be imported: {exc}", id="agentflow.E008", obj="AGENTFLOW"
                )
            )
    else:
        errors.append(Error("AGENTFLOW['EXECUTOR'] must be an import path string.", id="agentflow.E008"))
    if isinstance(merged["CACHE_ALIAS"], str) and merged["CACHE_ALIAS"] not in settings.CACHES:
        errors.append(
            Error(
                f"AGENTFLOW['CACHE_ALIAS'] names no cache in CACHES: {merged['CACHE_ALIAS']!r}.",
                id="agentflow.E009",
            )
        )
    for key in ("ARCHIVE_EVENTS", "PREPARED_STATEMENTS", "WORKER_GC_FREEZE"):
        if not isinstance(merged[key], bool):
            errors.append(Error(f"AGENTFLOW[{key!r}] must be True or False.", id="agentflow.E010"))
    page, max_page = merged["EVENTS_PAGE_SIZE"], merged["EVENTS_MAX_PAGE_SIZE"]
    if _is_whole(page, 1) and _is_whole(max_page, 1) and page > max_page:
        errors.append(
            Error(
                "AGENTFLOW['EVENTS_PAGE_SIZE'] is greater than EVENTS_MAX_PAGE_SIZE.",
                hint="The default page of a run's events cannot be larger than the largest page allowed.",
                id="agentflow.E011",
            )
        )
    for key in ("RETENTION_DAYS", "EVENT_RETENTION_DAYS"):
        value = merged[key]
        if value is not None and (not _is_number(value) or value <= 0):
            errors.append(
                Error(f"AGENTFLOW[{key!r}] must be None or a positive number of days.", id="agentflow.E012")
            )
    keep_runs, keep_events = merged["RETENTION_DAYS"], merged["EVENT_RETENTION_DAYS"]
    if _is_number(keep_runs) and _is_number(keep_events) and keep_events > keep_runs:
        errors.append(
            Warning(
                "AGENTFLOW['EVENT_RETENTION_DAYS'] is greater than RETENTION_DAYS: events go with their runs, "
                "after RETENTION_DAYS.",
                id="agentflow.W002",
            )
        )
    lease, beat = merged["LEASE_SECONDS"], merged["HEARTBEAT_INTERVAL_SECONDS"]
    if _is_number(lease) and _is_number(beat) and lease > 0 and beat > 0 and lease < 2 * beat:
        errors.append(
            Warning(
                "AGENTFLOW['LEASE_SECONDS'] is less than twice HEARTBEAT_INTERVAL_SECONDS: one late heartbeat "
                "would make the monitor take a healthy run away from its worker.",
                id="agentflow.W001",
            )
        )
    errors.extend(_check_rate_limits(merged["RATE_LIMITS"]))
    errors.extend(_check_providers(merged["LLM_PROVIDERS"]))
    errors.extend(
        # Each problem starts with "LLM_PRICES", like the setting's name in the other messages.
        Error(f"AGENTFLOW['LLM_PRICES']{problem.removeprefix('LLM_PRICES')}", id="agentflow.E015")
        for problem in validate_prices(merged["LLM_PRICES"])
    )
    jitter = merged["RATE_LIMIT_JITTER_SECONDS"]
    if not _is_number(jitter) or jitter < 0:
        errors.append(
            Error(
                "AGENTFLOW['RATE_LIMIT_JITTER_SECONDS'] must be a number of seconds >= 0.",
                hint="It is added to each rate limit's window to absorb the varying delay from a grant to the "
                "request's arrival at the provider; a second or less is usual.",
                id="agentflow.E017",
            )
        )
    coalesce = merged["LLM_STREAM_COALESCE_SECONDS"]
    if not _is_number(coalesce) or coalesce < 0:
        errors.append(
            Error(
                "AGENTFLOW['LLM_STREAM_COALESCE_SECONDS'] must be a number of seconds >= 0.",
                id="agentflow.E016",
            )
        )
    return errors


def _check_rate_limits(limits: Any) -> list[CheckMessage]:
    """RATE_LIMITS: {"<provider>:<model>" | "<provider>:*" | "*": {"requests_per_minute": N, ...}}."""

    def error(problem: str) -> Error:
        return Error(f"AGENTFLOW['RATE_LIMITS'] {problem}", id="agentflow.E013")

    if not isinstance(limits, dict):
        return [error("must be a dict of patterns to limits.")]
    errors: list[CheckMessage] = []
    names = ("requests_per_minute", "tokens_per_minute")
    for pattern, values in limits.items():
        provider = pattern.partition(":")[0] if isinstance(pattern, str) else ""
        if not isinstance(pattern, str) or (pattern != "*" and (not provider or ":" not in pattern)):
            errors.append(
                error(f"has a pattern {pattern!r} that is not '<provider>:<model>', '<provider>:*' or '*'.")
            )
        elif "*" in pattern[:-1] or (pattern.endswith("*") and not pattern.endswith(":*") and pattern != "*"):
            errors.append(error(f"has a pattern {pattern!r} with a '*' other than a whole last part."))
        if not isinstance(values, dict) or not values:
            errors.append(error(f"[{pattern!r}] must be a non-empty dict with {' and/or '.join(names)}."))
            continue
        for name, value in values.items():
            if name not in names:
                errors.append(
                    error(f"[{pattern!r}] has an unknown key {name!r} (valid: {', '.join(names)}).")
                )
            elif not _is_whole(value, 1):
                errors.append(error(f"[{pattern!r}][{name!r}] must be a whole number >= 1."))
    return errors


def _check_providers(providers: Any) -> list[CheckMessage]:
    """LLM_PROVIDERS: None, or a list of provider dicts (agentflow.llm.providers.Provider's fields)."""
    if providers is None:
        return []
    if not isinstance(providers, list | tuple):
        # Not the parser's message: it shows the value, and a dict given for a list holds an api_key.
        problem = f"must be None or a list of provider dicts, not {type(providers).__name__}."
    else:
        try:
            parse_providers(providers)
        except (TypeError, ValueError) as exc:
            problem = f"is invalid: {exc}"  # the parser never shows a value that may be an API key
        else:
            return []
    return [Error(f"AGENTFLOW['LLM_PROVIDERS'] {problem}", id="agentflow.E014")]


from . import checks_schedules  # noqa: E402, F401  (registers the schedules' checks)
