"""The REST API (Django REST framework): workflows, runs, their events, cancel and resume.

Mount it with ``path("api/", include("agentflow.urls"))``; docs/topics/rest-api.md describes every endpoint,
status and error code. The views read the project's DRF settings (authentication, throttling, renderers) when
a request comes, not at import, and render every error as ``{"code", "message", "details"}``.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

import redis
from django.apps import apps
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer, TemplateHTMLRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from . import archive, health, runs, sse, streams
from .access import visible_runs
from .authentication import IsAuthenticatedOrStreamGrant, StreamGrant, StreamTokenAuthentication
from .conf import agentflow_settings
from .core.errors import InvalidInput, RunNotFound, RunTimeout
from .core.usage import Budget
from .core.waits import WAIT_REASONS
from .core.workflow import registry
from .exceptions import (
    InvalidEventId,
    InvalidIdempotencyKey,
    InvalidParameter,
    RunFinished,
    StreamUnavailable,
    exception_handler,
)
from .inputs import get_input, list_inputs, send_input
from .keepalive import wanted as wanted_keepalive
from .models import RunStatus, WorkflowRun
from .openapi import (
    IDEMPOTENCY_KEY_PATTERN,
    RunEventsSchema,
    RunResumeSchema,
    WorkflowInputSchema,
    WorkflowRunSchema,
)
from .parsers import JSONParser, frame_body
from .resuming import resume
from .serializers import (
    ErrorSerializer,
    EventPageSerializer,
    InputRequestSerializer,
    RunDetailSerializer,
    RunSerializer,
    ServerSentErrorSerializer,
    ServerSentEventSerializer,
    WorkflowDetailSerializer,
    WorkflowSerializer,
)
from .spending import workflow_usage

IDEMPOTENCY_HEADER = "Idempotency-Key"


_ERROR_DESCRIPTIONS = {
    400: "Bad request: `invalid_input` or `invalid_answer` (with field errors), `malformed_json`, "
    "`unsupported_json`, `invalid_parameter`, `invalid_event_id` or `invalid_idempotency_key`.",
    401: "`not_authenticated`, `authentication_failed` or `invalid_stream_token`.",
    403: "`permission_denied` (or `not_authenticated` when no authentication scheme can be named).",
    404: "`workflow_not_found`, `run_not_found` (also for another user's run) or `input_not_found`.",
    406: "`not_acceptable`: the Accept header asks for a format this endpoint does not produce.",
    409: "`run_finished`, `not_resumable`, `input_already_answered` or `input_timed_out`: the run's state does "
    "not allow it.",
    411: "`length_required`: a chunked body, under a WSGI server that cannot tell where it ends.",
    413: "`payload_too_large`: the body is over MAX_INPUT_BYTES.",
    415: "`unsupported_media_type`: the body must be application/json.",
    501: "`asgi_required`: an event stream was asked of a server running WSGI.",
    422: "`idempotency_key_reused`: the Idempotency-Key started a run with another input.",
}


def _errors(*codes: int, sse: bool = False) -> dict[Any, Any]:
    """The error responses ``codes``; with ``sse``, also as the one ``error`` event an event stream request
    gets (``sse.EventStreamRenderer``)."""
    responses: dict[Any, Any] = {}
    for code in codes:
        description = _ERROR_DESCRIPTIONS[code]
        if not sse:
            responses[code] = OpenApiResponse(ErrorSerializer, description=description)
            continue
        responses[(code, "application/json")] = OpenApiResponse(ErrorSerializer, description=description)
        if code != 406:  # a request that could not have an event stream gets JSON
            responses[(code, "text/event-stream")] = OpenApiResponse(
                ServerSentErrorSerializer, description=description
            )
    return responses


class AgentflowAPIView(APIView):
    """Base of agentflow's views: the project's authentication, throttling and renderers (read per request),
    authenticated users only, JSON bodies only, and agentflow's error format."""

    permission_classes = [IsAuthenticated]
    parser_classes = [JSONParser]
    #: Renderers added after the project's, such as the event stream's.
    extra_renderer_classes: list[type] = []
    #: Whether the view reads a request body (which then may come without a Content-Length).
    reads_body = False

    def get_authenticators(self) -> list[Any]:
        return [auth() for auth in api_settings.DEFAULT_AUTHENTICATION_CLASSES]

    def get_throttles(self) -> list[Any]:
        return [throttle() for throttle in api_settings.DEFAULT_THROTTLE_CLASSES]

    def get_renderers(self) -> list[Any]:
        renderers = [
            renderer() for renderer in [*api_settings.DEFAULT_RENDERER_CLASSES, *self.extra_renderer_classes]
        ]
        if not apps.is_installed("rest_framework"):
            # DRF's HTML pages need the templates of the rest_framework app: without it (system check
            # agentflow.E031) they would be a 500 TemplateDoesNotExist; answer JSON instead.
            html = (BrowsableAPIRenderer, TemplateHTMLRenderer)
            renderers = [r for r in renderers if not isinstance(r, html)] or [JSONRenderer()]
        return renderers

    def get_exception_handler(self) -> Any:
        return exception_handler

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if self.reads_body:
            # Before authentication: session authentication's CSRF check may parse the body already.
            frame_body(request._request)
        super().initial(request, *args, **kwargs)

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # DRF ignores an empty ?format= and answers an unknown one with a bare 404.
        name = api_settings.URL_FORMAT_OVERRIDE
        if not force and name and name in request.query_params:
            wanted = request.query_params[name]
            formats = [renderer.format for renderer in self.get_renderers()]
            if wanted not in formats:
                raise InvalidParameter(name, f"must be one of {', '.join(formats)}", kind="invalid_choice")
        return super().perform_content_negotiation(request, force)

    def get_authenticate_header(self, request: Request) -> str | None:
        # DRF asks the first authenticator only, and answers 403 instead of 401 when that one (typically
        # SessionAuthentication) names no scheme; any configured scheme that has a name will do.
        for authenticator in self.get_authenticators():
            header = authenticator.authenticate_header(request)
            if header:
                return str(header)
        return None

    def wants_event_stream(self, request: Request) -> bool:
        return isinstance(getattr(request, "accepted_renderer", None), sse.EventStreamRenderer)


def get_visible_run(request: Request, run_id: str) -> WorkflowRun:
    """The run, if the request may see it; else ``RunNotFound`` (also for another user's run: a 404 never
    tells whether a run exists)."""
    try:
        pk = uuid.UUID(str(run_id))
    except ValueError:
        raise RunNotFound(f"no run has id {str(run_id)[:100]!r}") from None
    if isinstance(request.auth, StreamGrant):
        queryset = (
            WorkflowRun.objects.filter(pk=pk)
            if request.auth.run_id == str(pk)
            else WorkflowRun.objects.none()
        )
    else:
        queryset = visible_runs(request.user).filter(pk=pk)
    run = queryset.select_related("owner").first()
    if run is None:
        raise RunNotFound(f"no run has id {str(run_id)[:100]!r}")
    return run


def event_id_param(value: str | None, field: str) -> str | None:
    if not value:
        return None
    try:
        # ASCII only: str.isdigit() takes other scripts' digits too, which Redis would not.
        parts = streams.split_id(value) if value.isascii() else None
    except ValueError:
        parts = None
    if parts is None or max(parts) >= 2**64:
        raise InvalidEventId(field, value)
    return value


def int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise InvalidParameter(name, f"must be a whole number from 1 to {maximum}", kind="range")
    return int(raw)


# -- health ----------------------------------------------------------------------------------------------------


class HealthView(AgentflowAPIView):
    """``GET /api/health/``: liveness for anyone, the full report (``agentflow.health``) for staff."""

    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            200: OpenApiResponse(
                OpenApiTypes.OBJECT,
                description='Anyone: `{"status": "ok"}` (this process answers). Staff (session or API token): '
                "the report of every check, workers and settings in force, with `status` `ok` or `warning`.",
            ),
            503: OpenApiResponse(
                OpenApiTypes.OBJECT, description="Staff: the report, with `status` `error` (a check failed)."
            ),
        }
    )
    def get(self, request: Request) -> Response:
        """Whether this server answers, and for staff whether the database, Redis, the broker, the cache and
        the workers are there."""
        if not request.user.is_staff:
            # Liveness only: no detail of the deployment, and no dependency that could take the web process
            # out of a load balancer's rotation when Redis or the workers have a problem.
            return Response({"status": "ok"})
        result = health.report()
        data = result.as_dict()
        return Response(data, status=503 if result.status == health.ERROR else 200)


# -- workflows -------------------------------------------------------------------------------------------------


class WorkflowListView(AgentflowAPIView):
    @extend_schema(responses={200: WorkflowSerializer(many=True), **_errors(400, 401, 403)})
    def get(self, request: Request) -> Response:
        """The registered workflows, by name."""
        data = WorkflowSerializer(registry.all(), many=True, context={"request": request}).data
        return Response(data)


class WorkflowDetailView(AgentflowAPIView):
    @extend_schema(responses={200: WorkflowDetailSerializer, **_errors(400, 401, 403, 404)})
    def get(self, request: Request, name: str) -> Response:
        """One workflow: its description, the JSON Schemas of its input and output, and the tokens and cost
        of its runs (yours; staff: everyone's)."""
        wf = registry.get(name)
        usage = workflow_usage(visible_runs(request.user).filter(workflow=wf.name))
        return Response(WorkflowDetailSerializer(wf, context={"request": request, "usage": usage}).data)


class StartRunMixin:
    """Validating the body and the ``Idempotency-Key``, and starting the run."""

    def start_run(self, request: Request, name: str) -> tuple[WorkflowRun, bool]:
        """Returns ``(run, replayed)``: ``replayed`` when the key named a run started earlier."""
        wf = registry.get(name)
        data = request.data
        if not isinstance(data, dict):
            raise InvalidInput(
                f"the input of workflow {wf.name!r} must be a JSON object, not {_json_type(data)}",
                details=[{"field": "", "code": "object_type", "message": "Input should be an object"}],
            )
        key = self.idempotency_key(request)
        # The key's earlier run if there is one (also when a concurrent request with it won the race), or
        # IdempotencyKeyReused if that run's input is not this one.
        run, replayed = runs.start_or_replay(wf, data, owner=request.user, idempotency_key=key)
        if run.owner_id is not None and run.owner_id == request.user.pk:
            run.owner = request.user  # the response names its owner: no query for the user at hand
        return run, replayed

    @staticmethod
    def idempotency_key(request: Request) -> str | None:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            return None
        if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
            raise InvalidIdempotencyKey()
        return key


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


_START_PARAMETERS = [
    OpenApiParameter(
        IDEMPOTENCY_HEADER,
        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN.pattern},
        OpenApiParameter.HEADER,
        description="1 to 255 printable ASCII characters. The same key, user, workflow and input give back "
        "the run started first; another input is `422 idempotency_key_reused`.",
    )
]


class WorkflowRunsView(StartRunMixin, AgentflowAPIView):
    schema = WorkflowInputSchema()
    reads_body = True

    @extend_schema(
        parameters=_START_PARAMETERS,
        responses={
            202: RunSerializer,
            200: OpenApiResponse(
                RunSerializer, description="Idempotency-Key replay: the run started earlier."
            ),
            **_errors(400, 401, 403, 404, 411, 413, 415, 422),
        },
    )
    def post(self, request: Request, name: str) -> Response:
        """Start a run of the workflow; the body is its input. Answers at once (202) with the queued run."""
        run, replayed = self.start_run(request, name)
        data = RunSerializer(run, context={"request": request}).data
        headers = {"Location": data["urls"]["self"]}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(
            data, status=status.HTTP_200_OK if replayed else status.HTTP_202_ACCEPTED, headers=headers
        )


class WorkflowRunView(StartRunMixin, AgentflowAPIView):
    schema = WorkflowRunSchema()
    reads_body = True
    extra_renderer_classes = [sse.EventStreamRenderer]

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        # Waiting for the run inside ATOMIC_REQUESTS' transaction would wait for ever: the run is enqueued
        # when the transaction that recorded it commits.
        return transaction.non_atomic_requests(super().as_view(**initkwargs))

    @extend_schema(
        parameters=_START_PARAMETERS,
        responses={
            (200, "application/json"): OpenApiResponse(
                RunDetailSerializer, description="The run finished: completed, failed or cancelled."
            ),
            (202, "application/json"): OpenApiResponse(
                RunDetailSerializer,
                description="Not finished after the time-out: the run as it is now, with `notice`: "
                '`{"code": "no_live_worker", "message": ...}` when it is queued and no live worker consumes '
                'its queue, else `{"code": "run_timeout", "message": ...}`.',
            ),
            (200, "text/event-stream"): OpenApiResponse(
                ServerSentEventSerializer,
                description="The run's events as server-sent events, until it ends.",
            ),
            **_errors(400, 401, 403, 404, 406, 411, 413, 415, 422, 501, sse=True),
        },
    )
    def post(self, request: Request, name: str) -> Any:
        """Run the workflow and answer when it ends (or stream its events with `Accept: text/event-stream`).

        A run that fails is not an error of the request: the answer is 200 with the failed run and its error.
        """
        wants_stream = self.wants_event_stream(request)
        if wants_stream:
            sse.require_asgi(request)  # before the run is recorded: a 501 starts nothing
        timeout = _timeout_param(request, agentflow_settings.wait_timeout_seconds)  # checked, even if unused
        run, _replayed = self.start_run(request, name)
        if wants_stream:
            return sse.event_stream_response(str(run.pk), None)
        try:
            finished = runs.wait(run, timeout_seconds=timeout, raise_on_failure=False)
        except RunTimeout as exc:
            current = WorkflowRun.objects.select_related("owner").get(pk=run.pk)
            data = RunDetailSerializer(current, context={"request": request}).data
            # The run as it is now, and why the answer came before its end.
            reason = (exc.details or {}).get("reason")
            data["notice"] = {"code": reason or exc.code, "message": exc.message}
            return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["urls"]["self"]})
        return Response(RunDetailSerializer(finished, context={"request": request}).data)


# A JSON number without a sign: float() would also take "inf", " 5", "1_0" and other scripts' digits.
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _timeout_param(request: Request, limit: float) -> float:
    raw = request.query_params.get("timeout")
    if raw is None:
        return limit
    value = float(raw) if _DECIMAL.fullmatch(raw) else math.nan
    if not 0 < value < math.inf:
        raise InvalidParameter("timeout", "must be a number of seconds greater than 0", kind="range")
    return min(value, limit)


# -- runs ------------------------------------------------------------------------------------------------------


# What DRF's cursors are made of (standard base64); DRF's decoding would skip anything else.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


class RunPagination(CursorPagination):
    """Newest first; ``RUNS_PAGE_SIZE`` per page. A cursor that is not ours is a 400, not DRF's 404."""

    ordering = ("-created_at", "-id")

    def get_page_size(self, request: Request) -> int:
        return int(agentflow_settings.runs_page_size)

    def decode_cursor(self, request: Request) -> Any:
        encoded = request.query_params.get(self.cursor_query_param)
        # Else "%%%" would be the first page.
        if encoded is not None and _BASE64.fullmatch(encoded):
            try:
                cursor = super().decode_cursor(request)
            except NotFound:
                pass
            else:
                # DRF checks the offset and direction, not the position, which is compared with created_at:
                # a position that is not an aware datetime would make the query fail.
                if cursor is None or cursor.position is None or _is_position(cursor.position):
                    return cursor
        elif encoded is None:
            return None
        raise InvalidParameter("cursor", "is not a cursor this API gave", kind="cursor")


def _is_position(value: str) -> bool:
    try:
        moment = parse_datetime(value)
    except ValueError:  # well formed, but not a date (month 13)
        return False
    return moment is not None and moment.tzinfo is not None


class RunListView(AgentflowAPIView, generics.ListAPIView):
    serializer_class = RunSerializer
    pagination_class = RunPagination
    filter_backends: list[Any] = []

    def get_queryset(self) -> QuerySet[WorkflowRun]:
        queryset = visible_runs(self.request.user).select_related("owner")
        workflow = self.request.query_params.get("workflow")
        if workflow:
            # No run's workflow holds a NUL, and PostgreSQL refuses one in a query: match nothing.
            queryset = queryset.filter(workflow=workflow) if "\x00" not in workflow else queryset.none()
        reason = self.request.query_params.get("wait_reason")
        if reason is not None:
            if reason not in WAIT_REASONS:
                raise InvalidParameter(
                    "wait_reason",
                    f"unknown reason {reason!r}: use {', '.join(WAIT_REASONS)}",
                    kind="invalid_choice",
                )
            queryset = queryset.filter(status=RunStatus.WAITING, wait_reason=reason)
        wanted = self.request.query_params.get("status")
        if wanted is not None:
            # Exactly the schema's comma-separated list of statuses: an empty one is not "any".
            statuses = wanted.split(",")
            unknown = [s for s in statuses if s not in RunStatus.values]
            if unknown:
                raise InvalidParameter(
                    "status",
                    f"unknown status {', '.join(unknown)!r}: use {', '.join(RunStatus.values)}",
                    kind="invalid_choice",
                )
            queryset = queryset.filter(status__in=statuses)
        return queryset

    @extend_schema(
        parameters=[
            OpenApiParameter("workflow", str, description="Only the runs of this workflow."),
            OpenApiParameter(
                "status",
                {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(RunStatus.values)}},
                style="form",
                explode=False,
                description="Only runs in these statuses, separated by commas: `status=queued,running`.",
            ),
            OpenApiParameter(
                "wait_reason",
                {"type": "string", "enum": list(WAIT_REASONS)},
                description="Only waiting runs that wait for this: `input` (a person's answer), `child` (a child "
                "run), ...",
            ),
        ],
        responses={200: RunSerializer(many=True), **_errors(400, 401, 403)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """The runs you may see (yours; staff: all), newest first, a page at a time."""
        return super().get(request, *args, **kwargs)


class RunDetailView(AgentflowAPIView):
    @extend_schema(responses={200: RunDetailSerializer, **_errors(400, 401, 403, 404)})
    def get(self, request: Request, run_id: str) -> Response:
        """One run: status, input, output, error, timings, usage and its steps."""
        run = get_visible_run(request, run_id)
        return Response(RunDetailSerializer(run, context={"request": request}).data)


class RunEventsView(AgentflowAPIView):
    schema = RunEventsSchema()
    permission_classes = [IsAuthenticatedOrStreamGrant]
    extra_renderer_classes = [sse.EventStreamRenderer]

    def get_authenticators(self) -> list[Any]:
        # The stream token works here and nowhere else.
        return [StreamTokenAuthentication(), *super().get_authenticators()]

    @extend_schema(
        # The parameters (bounded by settings) are RunEventsSchema's.
        responses={
            (200, "application/json"): EventPageSerializer,
            (200, "text/event-stream"): OpenApiResponse(
                ServerSentEventSerializer,
                description="Replay after `after`, then the live events, until the run ends.",
            ),
            (204, "text/event-stream"): OpenApiResponse(
                description="The run ended and nothing follows `after`."
            ),
            **_errors(400, 401, 403, 404, 406, 501, sse=True),
        },
    )
    def get(self, request: Request, run_id: str) -> Any:
        """The run's events: a page of its history, or with `Accept: text/event-stream` replay then live."""
        run = get_visible_run(request, run_id)
        # Both checked whatever the format (the header and the pages are one format's): a bad parameter is an
        # error either way, as the schema says.
        header = request.headers.get("Last-Event-ID")
        resume_after = event_id_param(header, "Last-Event-ID") if header else None
        limit = int_param(
            request, "limit", agentflow_settings.events_page_size, agentflow_settings.events_max_page_size
        )
        try:
            keepalive = wanted_keepalive(request.query_params.get("keepalive"))
        except ValueError:
            raise InvalidParameter("keepalive", "must be 1 or 0", kind="enum") from None
        if self.wants_event_stream(request):
            # An EventSource reconnects with the URL it started with and Last-Event-ID: the header is newer.
            after = resume_after or event_id_param(request.query_params.get("after"), "after")
            if sse.stream_is_over(run, after):
                # Ends an EventSource's reconnecting; a plain response, so no renderer writes a body.
                return HttpResponse(status=status.HTTP_204_NO_CONTENT)
            sse.require_asgi(request)
            return sse.event_stream_response(str(run.pk), after, keepalive_events=keepalive)

        after = event_id_param(request.query_params.get("after"), "after")
        events = self.history(run, after, limit + 1)
        has_more = len(events) > limit
        events = events[:limit]
        last_id = events[-1]["id"] if events else after
        return Response({"events": events, "last_id": last_id, "has_more": has_more})

    @staticmethod
    def history(run: WorkflowRun, after: str | None, limit: int) -> list[dict[str, Any]]:
        try:
            return archive.history(str(run.pk), after=after, limit=limit)
        except redis.RedisError:
            if run.is_finished and run.last_event_id:  # archived: the DB has every event
                return archive.archived_events(str(run.pk), after=after, limit=limit)
            raise StreamUnavailable() from None


class RunCancelView(AgentflowAPIView):
    @extend_schema(
        request=None,
        responses={
            202: OpenApiResponse(
                RunDetailSerializer,
                description="Cancellation requested: the run stops at its next step boundary.",
            ),
            200: OpenApiResponse(RunDetailSerializer, description="The run was queued and is now cancelled."),
            **_errors(400, 401, 403, 404, 409),
        },
    )
    def post(self, request: Request, run_id: str) -> Response:
        """Cancel the run. A queued run is cancelled at once; a running one at its next step boundary."""
        run = get_visible_run(request, run_id)
        if run.is_finished:
            raise RunFinished(f"run {run.pk} is {run.status} already", details={"status": run.status})
        cancelled = runs.cancel(run)
        if not cancelled.cancel_requested:  # it finished between the two reads
            raise RunFinished(
                f"run {run.pk} is {cancelled.status} already", details={"status": cancelled.status}
            )
        cancelled.owner = run.owner
        code = status.HTTP_200_OK if cancelled.is_finished else status.HTTP_202_ACCEPTED
        return Response(RunDetailSerializer(cancelled, context={"request": request}).data, status=code)


def _resume_options(data: Any) -> dict[str, Any]:
    # No body at all is an empty dict; a JSON null is not an object, as the schema says.
    if not isinstance(data, dict) or set(data) - {"budget"}:
        raise InvalidInput(
            'the body of a resume is empty or {"budget": {"usd": ..., "tokens": ...} or null}',
            details=[{"field": "", "code": "invalid", "message": "Only 'budget' may be given"}],
        )
    if "budget" not in data:
        return {}
    try:
        return {"budget": Budget.parse(data["budget"])}
    except TypeError as exc:
        raise InvalidInput(
            f"budget: {exc}", details=[{"field": "budget", "code": "invalid", "message": str(exc)}]
        ) from None


class RunResumeView(AgentflowAPIView):
    schema = RunResumeSchema()
    reads_body = True

    @extend_schema(
        # The body is RunResumeSchema's.
        responses={
            202: OpenApiResponse(RunDetailSerializer, description="The run is queued again."),
            **_errors(400, 401, 403, 404, 409, 411, 413, 415),
        },
    )
    def post(self, request: Request, run_id: str) -> Response:
        """Resume a failed or cancelled run from its last checkpoint: failed steps run again, completed ones
        replay. An optional body `{"budget": {"usd": ..., "tokens": ...}}` (or `null`: no limit) replaces the
        run's budget, so that a run stopped by its budget (`budget_exceeded`) can go on."""
        run = get_visible_run(request, run_id)
        options = _resume_options(request.data)
        resumed = resume(run, **options)
        resumed.owner = run.owner
        data = RunDetailSerializer(resumed, context={"request": request}).data
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["urls"]["self"]})


# -- input -----------------------------------------------------------------------------------------------------


class RunInputListView(AgentflowAPIView):
    @extend_schema(responses={200: InputRequestSerializer(many=True), **_errors(400, 401, 403, 404)})
    def get(self, request: Request, run_id: str) -> Response:
        """The run's requests for input (`agentflow.wait_for_input`), in the order it made them."""
        run = get_visible_run(request, run_id)
        return Response(
            InputRequestSerializer(list_inputs(run), many=True, context={"request": request, "run": run}).data
        )


class RunInputView(AgentflowAPIView):
    reads_body = True

    @extend_schema(responses={200: InputRequestSerializer, **_errors(400, 401, 403, 404)})
    def get(self, request: Request, run_id: str, key: str) -> Response:
        """One request for input: its prompt, the JSON Schema of its answer, and its status."""
        run = get_visible_run(request, run_id)
        return Response(
            InputRequestSerializer(get_input(run, key), context={"request": request, "run": run}).data
        )

    @extend_schema(
        request=OpenApiTypes.ANY,
        responses={
            200: OpenApiResponse(InputRequestSerializer, description="Answered: the run continues."),
            **_errors(400, 401, 403, 404, 409, 411, 413, 415),
        },
    )
    def post(self, request: Request, run_id: str, key: str) -> Response:
        """Answer the run's request for input: the body is the answer, validated against the request's JSON
        Schema (`400 invalid_answer` with field errors otherwise; the run keeps waiting). A second answer is
        `409 input_already_answered`; so is an answer after the time-out (`input_timed_out`) or after the run
        finished (`run_finished`)."""
        run = get_visible_run(request, run_id)
        answered = send_input(run, key, request.data, user=request.user)
        return Response(InputRequestSerializer(answered, context={"request": request, "run": run}).data)
