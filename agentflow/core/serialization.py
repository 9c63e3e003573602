"""JSON in and out of checkpoints: what a step returns must survive a round trip through the database."""

from __future__ import annotations

import hashlib
import json
import math
import re
from decimal import Decimal
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


# A str holding one of these code points has a lone surrogate: a pair decodes to one code point above U+FFFF.
_SURROGATE = re.compile("[\ud800-\udfff]")

#: How deep objects and arrays may nest in input: pydantic gives up between 200 and 255 levels, with errors
#: that say little (or a ValueError); no real input comes close.
MAX_JSON_DEPTH = 100

#: The codes of :func:`unstorable`'s findings, with what each means.
UNSTORABLE = {
    "null_character": "cannot contain the character U+0000",
    "lone_surrogate": "cannot contain a lone surrogate (U+D800 to U+DFFF): it is not Unicode",
    "non_finite_number": "must be finite: JSON has no Infinity or NaN (1e309 is Infinity as a float)",
    "too_deep": f"nests too deep: objects and arrays at most {MAX_JSON_DEPTH} levels",
}


def unstorable(value: Any) -> tuple[str, str, str] | None:
    """The first place in JSON-able ``value`` that JSON, or PostgreSQL's ``jsonb``, cannot hold (or that nests
    deeper than :data:`MAX_JSON_DEPTH`), as ``(path, code, message)``; ``None`` if there is none.

    Python's ``json`` parses ``"\\u0000"``, lone surrogates (``"\\ud800"``) and ``1e309`` (infinity), but
    PostgreSQL refuses the first two in ``jsonb`` and JSON has no infinity (``json.dumps`` writes a bare
    ``Infinity``). Finding them here turns what would be a database error, or a number silently stored as
    ``null``, into a clear error at the boundary. ``path`` is dotted like validation errors' fields (``"a.0"``);
    a key that is itself the problem appears escaped (``"a\\u0000b"``), so that the error can be rendered.
    The walk is iterative: parsed JSON may nest as deep as the parser's recursion limit.
    """
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, dict | list | tuple) and depth >= MAX_JSON_DEPTH:
            return path, "too_deep", "a value " + UNSTORABLE["too_deep"]
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return path, problem, "a string " + UNSTORABLE[problem]
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, "non_finite_number", "a number " + UNSTORABLE["non_finite_number"]
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                name = str(key)
                problem = _text_problem(name)
                if problem:
                    escaped = json.dumps(name)[1:-1]  # ASCII: \u0000, \ud800
                    return _join(path, escaped), problem, "a key " + UNSTORABLE[problem]
                stack.append((_join(path, name), child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend(
                (_join(path, str(index)), child, depth + 1)
                for index, child in reversed(list(enumerate(item)))
            )
    return None


def _text_problem(text: str) -> str | None:
    if text.isascii():
        return "null_character" if "\x00" in text else None
    if "\x00" in text:
        return "null_character"
    return "lone_surrogate" if _SURROGATE.search(text) else None


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same, numbers compared by value: ``jsonb`` gives back ``1e+20`` as
    ``100000000000000000000`` (an int to Python) and a float written ``1.0`` as ``1.0``, so a value read from
    the database equals what was written. Booleans are not numbers here. Iterative, as :func:`unstorable`."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if isinstance(x, bool) or isinstance(y, bool) or x is None or y is None:
            if x is not y:
                return False
        elif isinstance(x, int | float) and isinstance(y, int | float):
            if _number(x) != _number(y):
                return False
        elif isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys():
                return False
            stack.extend((x[key], y[key]) for key in x)
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif type(x) is not type(y) or x != y:
            return False
    return True


def _number(value: int | float) -> Decimal:
    # repr(): the shortest decimal that reads back as the same float, which is what JSON (and jsonb) holds.
    return Decimal(repr(value) if isinstance(value, float) else value)


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
