"""Retry policies: exponential backoff with full jitter, and which exceptions deserve another attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from .errors import Retry, RunInterrupted

ExceptionTypes = tuple[type[BaseException], ...]


def _as_types(value: Any, option: str) -> ExceptionTypes:
    if value is None:
        return ()
    if isinstance(value, type):
        value = (value,)
    try:
        types = tuple(value)
    except TypeError:
        raise TypeError(f"{option} must be an exception class or a sequence of them, not {value!r}") from None
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{option} must contain exception classes, got {item!r}")
    return types


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a step is attempted.

    The delay before attempt ``n + 1`` is drawn uniformly from ``[0, min(max_delay_seconds,
    initial_delay_seconds * backoff ** (n - 1))]`` ("full jitter") when ``jitter`` is true, and is the upper
    bound itself otherwise. A delay the error asks for (``Retry(delay_seconds)``, or a ``retry_after``
    attribute such as a provider's ``Retry-After``) is honoured as a lower bound.
    """

    max_attempts: int = 1
    backoff: float = 2.0
    initial_delay_seconds: float = 1.0
    max_delay_seconds: float = 60.0
    jitter: bool = True
    retry_on: ExceptionTypes = (Exception,)
    give_up_on: ExceptionTypes = ()

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise TypeError(f"max_attempts must be an int >= 1, not {self.max_attempts!r}")
        for name in ("backoff", "initial_delay_seconds", "max_delay_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise TypeError(f"{name} must be a number >= 0, not {value!r}")
        if self.backoff < 1:
            raise TypeError(f"backoff must be >= 1, not {self.backoff!r}")
        object.__setattr__(self, "retry_on", _as_types(self.retry_on, "retry_on"))
        object.__setattr__(self, "give_up_on", _as_types(self.give_up_on, "give_up_on"))

    def updated(self, **changes: Any) -> RetryPolicy:
        return replace(self, **changes)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether ``exc``, raised by attempt number ``attempt`` (1-based), earns another attempt."""
        if attempt >= self.max_attempts or isinstance(exc, RunInterrupted):
            return False
        if isinstance(exc, Retry):
            return True
        if self.give_up_on and isinstance(exc, self.give_up_on):
            return False
        return isinstance(exc, self.retry_on)

    def delay_seconds(self, exc: BaseException, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one."""
        try:
            growth = self.initial_delay_seconds * self.backoff ** (attempt - 1)
        except OverflowError:  # a float power past ~1e308, after a thousand-odd attempts: long capped already
            growth = self.max_delay_seconds if self.initial_delay_seconds else 0.0
        ceiling = min(self.max_delay_seconds, growth)
        delay = (rng or random).uniform(0, ceiling) if self.jitter else ceiling
        asked = requested_delay_seconds(exc)
        return max(delay, asked) if asked is not None else delay


def requested_delay_seconds(exc: BaseException) -> float | None:
    """The delay an error asks for: ``Retry.delay_seconds`` or a ``retry_after`` attribute (seconds)."""
    if isinstance(exc, Retry):
        return exc.delay_seconds
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


NO_RETRY = RetryPolicy()
