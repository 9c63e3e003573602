"""JSON in and out of checkpoints: what a step returns must survive a round trip through the database.

Everything agentflow stores (run input, checkpoints, events, answers) is JSON that PostgreSQL's ``jsonb`` can
hold: no U+0000, no lone surrogate, no infinity or NaN. Values that come from users are checked where they
enter (:func:`encode`, :func:`check_storable`: a ``SerializationError`` naming the JSON path); what agentflow
must record whatever it holds (an error's message) is escaped (:func:`escaped`); provider replies have the
characters replaced (:func:`replaced`, used by :mod:`agentflow.llm`). Docs: docs/topics/workflows.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from .errors import SerializationError

logger = logging.getLogger("agentflow.serialization")


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


def unstorable(value: Any, *, max_depth: int | None = MAX_JSON_DEPTH) -> tuple[str, str, str] | None:
    """The first place in JSON-able ``value`` that JSON, or PostgreSQL's ``jsonb``, cannot hold (or that nests
    deeper than ``max_depth``, :data:`MAX_JSON_DEPTH` for input; ``None``: any depth), as
    ``(path, code, message)``; ``None`` if there is none.

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
        if max_depth is not None and isinstance(item, dict | list | tuple) and depth >= max_depth:
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


def encode(value: Any, *, what: str, sort_keys: bool = False) -> str:
    """JSON-able ``value`` as the JSON text agentflow stores (in PostgreSQL and in the run's stream).

    Raises ``SerializationError`` (code ``not_serializable``) when the text would not be JSON or ``jsonb``
    could not hold it: its message names ``what`` and the JSON path, its ``details`` are
    ``{"path", "code"}`` with a code of :data:`UNSTORABLE`. The common case costs one ``json.dumps``: the
    value is walked (:func:`unstorable`) only when the text shows a problem, to find where it is.
    """
    try:
        text = json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=sort_keys
        )
    except ValueError as exc:  # an infinity or NaN, or a circular reference (which the walk must not meet)
        problem = None if "Circular reference" in str(exc) else unstorable(value, max_depth=None)
        if problem is None:
            raise SerializationError(f"{what} is not JSON serializable: {exc}") from None
        raise _unstorable_error(what, problem) from None
    except RecursionError:
        raise SerializationError(
            f"{what} nests too deep to be stored", details={"path": "", "code": "too_deep"}
        ) from None
    except TypeError as exc:  # not converted to JSON types (to_jsonable) first
        raise SerializationError(f"{what} is not JSON serializable: {exc}") from None
    # json.dumps writes U+0000 as the escape \u0000; the same six characters in the value's text are written
    # \\u0000, which this also finds: the walk below then finds nothing, and the text stands.
    if "\\u0000" in text or (not text.isascii() and _SURROGATE.search(text)):
        problem = unstorable(value, max_depth=None)
        if problem is not None:
            raise _unstorable_error(what, problem)
    return text


def check_storable(value: Any, *, what: str) -> None:
    """Raise ``SerializationError`` naming the JSON path if agentflow cannot store JSON-able ``value``
    (see :func:`encode`)."""
    if isinstance(value, str):  # status texts, streamed chunks: no need to write JSON
        problem = _text_problem(value)
        if problem is not None:
            raise _unstorable_error(what, ("", problem, "a string " + UNSTORABLE[problem]))
        return
    encode(value, what=what)


def _unstorable_error(what: str, problem: tuple[str, str, str]) -> SerializationError:
    path, code, message = problem
    where = f" (at {path!r})" if path else ""
    return SerializationError(
        f"{what} cannot be stored: {message}{where}", details={"path": path, "code": code}
    )


def storable_hash(value: Any, *, what: str) -> str:
    """:func:`stable_hash` of ``value``, which must be storable (``SerializationError`` otherwise): one
    ``json.dumps`` serves both, for a step's arguments, checked and hashed before each call."""
    data = encode(value, what=what, sort_keys=True).encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _escape_text(text: str) -> str:
    # As JSON writes them (\u0000, \ud800): the text keeps saying which character it was.
    return "".join(json.dumps(c)[1:-1] if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)


def _escape_number(number: float) -> Any:
    return _NON_FINITE.get(number, "NaN")


def _replace_text(text: str) -> str:
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)


def _repair(
    value: Any,
    text: Callable[[str], str],
    number: Callable[[float], Any],
    path: str,
    found: list[tuple[str, str]],
) -> Any:
    """A copy of JSON-able ``value`` with every unstorable string and number mended; ``found`` collects
    ``(path, code)`` of each. Only called on a value known to hold one: it rebuilds what it walks."""
    if isinstance(value, str):
        problem = _text_problem(value)
        if problem is None:
            return value
        found.append((path, problem))
        return text(value)
    if isinstance(value, float) and not math.isfinite(value):
        found.append((path, "non_finite_number"))
        return number(value)
    if isinstance(value, dict):
        repaired = {}
        for key, child in value.items():
            name = str(key)
            problem = _text_problem(name)
            if problem is not None:
                found.append((_join(path, json.dumps(name)[1:-1]), problem))
                name = text(name)
            repaired[name] = _repair(child, text, number, _join(path, name), found)
        return repaired
    if isinstance(value, list | tuple):
        return [_repair(child, text, number, _join(path, str(i)), found) for i, child in enumerate(value)]
    return value


def escaped(value: Any, *, what: str) -> Any:
    """``value`` as agentflow can store it, for what must be recorded whatever it holds (an error's message,
    a traceback): U+0000 and lone surrogates become the text of their JSON escapes (``\\u0000``,
    ``\\ud800``), infinities and NaN the strings ``"Infinity"``, ``"-Infinity"``, ``"NaN"``. Says so: a
    warning names ``what`` and the paths. ``value`` itself when it is storable (the usual case)."""
    try:
        encode(value, what=what)
        return value
    except SerializationError:
        pass
    found: list[tuple[str, str]] = []
    repaired = _repair(value, _escape_text, _escape_number, "", found)
    if not found:  # not JSON at all: nothing of ours to mend, and the store says so itself
        return value
    logger.warning(
        "%s held what PostgreSQL cannot store; stored escaped: %s",
        what,
        ", ".join(f"{code} at {path!r}" for path, code in found[:10]),
    )
    return repaired


def replaced(value: Any) -> tuple[Any, list[tuple[str, str]]]:
    """``value`` with U+0000 and lone surrogates replaced by U+FFFD (Unicode's replacement character) and
    infinities and NaN by ``null``, and the ``(path, code)`` of each replacement: for provider replies
    (:mod:`agentflow.llm`, which says so). ``(value, [])`` when there is nothing to replace."""
    try:
        encode(value, what="the value")
        return value, []
    except SerializationError:
        pass
    found: list[tuple[str, str]] = []
    return _repair(value, _replace_text, lambda number: None, "", found), found


def replaced_text(text: str) -> str:
    """``text`` with U+0000 and lone surrogates replaced as :func:`replaced` does (streamed chunks)."""
    return text if _text_problem(text) is None else _replace_text(text)


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
