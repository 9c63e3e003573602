"""Request bodies of agentflow's views: JSON only, at most ``MAX_INPUT_BYTES`` of it, and only JSON that the
database can store.

DRF reads a body only when the request declares a ``Content-Length``. A body sent with the chunked transfer
coding (or over HTTP/2) has none, and DRF takes it for no body at all: a run would start with its default
input, and a body of any size would be accepted. :func:`frame_body` reads such a body (at most the limit, plus
one byte to tell that it is over) before DRF looks, and gives it the length it lacked. Under ASGI, Django has
received the whole body before the view runs (spooled to a temporary file past
``FILE_UPLOAD_MAX_MEMORY_SIZE``): cap request bodies at the proxy or server too (docs/deploy.md).
"""

from __future__ import annotations

import io
import json
from typing import IO, Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest
from rest_framework.parsers import BaseParser

from .conf import agentflow_settings
from .core.serialization import unstorable
from .exceptions import LengthRequired, MalformedJSON, PayloadTooLarge, UnsupportedJSON


class JSONParser(BaseParser):
    """``application/json`` up to ``AGENTFLOW["MAX_INPUT_BYTES"]``.

    Not a subclass of DRF's ``JSONParser`` on purpose: DRF reads the whole body through ``request.body`` for
    those, before any limit of ours could apply. The declared ``Content-Length`` is checked first, then the
    bytes actually read (a body without one, or a lying one).
    """

    media_type = "application/json"

    def parse(
        self, stream: IO[bytes], media_type: str | None = None, parser_context: dict[str, Any] | None = None
    ) -> Any:
        limit = agentflow_settings.max_input_bytes
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)  # before reading a byte of it
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise _too_large(limit)
        return loads(raw)


def loads(raw: bytes) -> Any:
    """A request body as JSON: ``MalformedJSON`` if it is not JSON (``NaN`` and ``Infinity`` are not),
    ``UnsupportedJSON`` if it is JSON that agentflow refuses (see :func:`agentflow.core.serialization.unstorable`),
    or that has a key twice in one object (which parsers resolve differently: Python keeps the last)."""
    try:
        data = json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys
        )
    except _DuplicateKey as exc:
        raise UnsupportedJSON(
            "", "duplicate_key", f"the key {exc.key!r} appears twice in one object"
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedJSON(f"The request body is not valid JSON: {exc}") from None
    problem = unstorable(data)
    if problem is not None:
        raise UnsupportedJSON(*problem)
    return data


def frame_body(request: HttpRequest) -> None:
    """Read the body of a request without a ``Content-Length`` (chunked, HTTP/2), if it has one, and give it
    that length, so that DRF parses it. ``PayloadTooLarge`` past ``MAX_INPUT_BYTES``; ``LengthRequired``
    for a chunked body under a WSGI server that cannot tell where it ends."""
    if request.META.get("CONTENT_LENGTH"):
        return
    source = _unframed_body(request)
    if source is None:
        return
    limit = agentflow_settings.max_input_bytes
    raw = source.read(limit + 1)
    if len(raw) > limit:
        raise _too_large(limit)
    if raw:
        request._stream = io.BytesIO(raw)  # type: ignore[attr-defined]
        request.META["CONTENT_LENGTH"] = str(len(raw))


def _unframed_body(request: HttpRequest) -> IO[bytes] | None:
    if isinstance(request, ASGIRequest):
        # The whole body, as the ASGI server delivered it (the server decoded any transfer coding).
        return request._stream  # type: ignore[attr-defined,no-any-return]
    environ = getattr(request, "environ", {})
    if environ.get("wsgi.input_terminated"):
        # The server (gunicorn, ...) ends wsgi.input where the chunked body ends: readable as it is.
        return environ["wsgi.input"]  # type: ignore[no-any-return]
    if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        raise LengthRequired()
    return None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.", details={"max_bytes": limit})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return data
