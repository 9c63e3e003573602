"""JSON in and out of checkpoints: what a step returns must survive a round trip through the database."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from .errors import SerializationError


def to_jsonable(value: Any, *, what: str) -> Any:
    """``value`` as plain JSON types (pydantic models, dataclasses, datetimes, UUIDs... are converted)."""
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise SerializationError(f"{what} is not JSON serializable: {exc}") from None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def stable_hash(value: Any) -> str:
    """A short, stable digest of JSON-able ``value`` (keys sorted), for cache keys and divergence checks."""
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@lru_cache(maxsize=1024)
def adapter_for(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def from_jsonable(value: Any, annotation: Any) -> Any:
    """Rebuild a stored value as ``annotation`` (a replayed step returns what the live call returned)."""
    if annotation is Any or annotation is None:
        return value
    try:
        return adapter_for(annotation).validate_python(value)
    except (TypeError, ValidationError):
        # An annotation pydantic cannot handle, or one the live result did not match either: hand back the
        # JSON, as the step's caller got a value of that shape the first time too.
        return value
