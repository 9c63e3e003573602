"""The REST API's errors, and the DRF exception handler that renders every error of agentflow's views as

    {"code": "<stable code>", "message": "<for humans>", "details": <anything or null>}

The handler is set on agentflow's views only (``AgentflowAPIView.get_exception_handler``): a reusable app does
not change a project's ``REST_FRAMEWORK`` settings. docs/topics/rest-api.md lists every code.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import TooManyFieldsSent
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from .core.errors import AgentflowError

#: HTTP status of each ``AgentflowError`` code the API lets through; any other one is a server error (500).
AGENTFLOW_STATUSES: dict[str, int] = {
    "workflow_not_found": status.HTTP_404_NOT_FOUND,
    "run_not_found": status.HTTP_404_NOT_FOUND,
    "invalid_input": status.HTTP_400_BAD_REQUEST,
    "not_resumable": status.HTTP_409_CONFLICT,
    "input_not_found": status.HTTP_404_NOT_FOUND,
    "invalid_answer": status.HTTP_400_BAD_REQUEST,
    "input_already_answered": status.HTTP_409_CONFLICT,
    "input_timed_out": status.HTTP_409_CONFLICT,
    "run_finished": status.HTTP_409_CONFLICT,
    "idempotency_key_reused": status.HTTP_422_UNPROCESSABLE_ENTITY,
}

# DRF's own exceptions keep their default codes, except the parse error: agentflow's views parse JSON only.
_RENAMED_CODES = {"parse_error": "malformed_json", "error": "server_error"}


class ApiError(exceptions.APIException):
    """An API error with a stable ``code``, a message and optional ``details``."""

    def __init__(self, message: str | None = None, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message, code or self.default_code)
        self.details = details


class MalformedJSON(exceptions.ParseError):
    default_detail = "The request body is not valid JSON."
    default_code = "malformed_json"


class UnsupportedJSON(ApiError):
    """The body is JSON, but holds what agentflow cannot take: a duplicate key, ``\\u0000``, a lone
    surrogate, a number too large for a float, nesting past ``MAX_JSON_DEPTH``. ``details`` is
    ``[{"field", "code", "message"}]``."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "The request body holds JSON that agentflow cannot accept."
    default_code = "unsupported_json"

    def __init__(self, field: str, kind: str, message: str) -> None:
        where = f" (at {field})" if field else ""
        super().__init__(
            f"The request body holds JSON that agentflow cannot accept{where}: {message}.",
            details=[{"field": field, "code": kind, "message": message}],
        )


class LengthRequired(ApiError):
    """A chunked body under a WSGI server that does not say where it ends (``wsgi.input_terminated``)."""

    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_detail = "This server needs a Content-Length: send the body with one."
    default_code = "length_required"


class PayloadTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class InvalidParameter(ApiError):
    """A query parameter or header has a bad value; ``details`` is ``[{"field", "code", "message"}]``."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_parameter"

    def __init__(self, field: str, message: str, *, code: str | None = None, kind: str = "invalid") -> None:
        super().__init__(
            f"{field}: {message}" if field else message,
            details=[{"field": field, "code": kind, "message": message}],
            code=code,
        )


class InvalidEventId(InvalidParameter):
    default_code = "invalid_event_id"

    def __init__(self, field: str, value: str) -> None:
        super().__init__(
            field, f"{value[:100]!r} is not an event id such as 1732390000000-0", kind="event_id"
        )


class InvalidIdempotencyKey(InvalidParameter):
    default_code = "invalid_idempotency_key"

    def __init__(self) -> None:
        super().__init__("Idempotency-Key", "must be 1 to 255 characters", kind="length")


class RunFinished(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The run has finished already."
    default_code = "run_finished"


class InvalidStreamToken(exceptions.AuthenticationFailed):
    default_detail = "The stream token is invalid, expired or for another run."
    default_code = "invalid_stream_token"


class StreamUnavailable(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The run's event stream cannot be read right now; try again."
    default_code = "stream_unavailable"


class AsgiRequired(ApiError):
    """An event stream asked of a WSGI server, which would buffer it whole until the run ends."""

    status_code = status.HTTP_501_NOT_IMPLEMENTED
    default_detail = (
        "Server-sent events need an ASGI server (uvicorn, daphne): under WSGI the stream would be held back "
        "until the run ends. Serve the project with e.g. `uvicorn <project>.asgi:application`, or read the "
        "events as JSON pages (Accept: application/json, ?after=<last id>)."
    )
    default_code = "asgi_required"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler of agentflow's views. Returns ``None`` (a 500) for anything unexpected."""
    if isinstance(exc, AgentflowError):
        http_status = AGENTFLOW_STATUSES.get(exc.code)
        if http_status is None:
            return None
        set_rollback()
        return Response(error_body(exc.code, exc.message, exc.details), status=http_status)
    if isinstance(exc, TooManyFieldsSent):  # DATA_UPLOAD_MAX_NUMBER_FIELDS, when a view reads the query
        exc = InvalidParameter(
            "", f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} query parameters", kind="too_many"
        )
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    if not isinstance(exc, exceptions.APIException):
        return None

    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    details = getattr(exc, "details", None)
    detail = exc.detail
    if isinstance(detail, list | dict):  # a serializer's ValidationError: field errors
        code, message, details = exc.default_code, "Invalid request.", detail
    else:
        code = getattr(detail, "code", None) or exc.default_code
        message = str(detail)
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        headers["Retry-After"] = str(int(exc.wait))
        details = {"wait_seconds": exc.wait}
    code = _RENAMED_CODES.get(code, code)
    set_rollback()
    return Response(error_body(code, message, details), status=exc.status_code, headers=headers)
