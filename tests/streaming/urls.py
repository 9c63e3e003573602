"""URLs of the streaming tests' server: a health check, and a minimal SSE endpoint over
``agentflow.sse.event_stream_response`` (the REST API wires the real one, ``/api/runs/<id>/events/``)."""

from __future__ import annotations

import uuid

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from agentflow import streams
from agentflow.access import can_view, check_stream_token
from agentflow.keepalive import wanted
from agentflow.models import WorkflowRun
from agentflow.sse import event_stream_response, stream_is_over


async def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


async def run_events(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    # A reconnecting EventSource sends Last-Event-ID; it wins over the ?after= of the original URL.
    after = request.headers.get("Last-Event-ID") or request.GET.get("after") or None
    if after:
        try:
            streams.split_id(after)
        except ValueError:
            return JsonResponse({"code": "invalid_after", "message": "malformed event id"}, status=400)
    token = request.GET.get("token")
    run = await WorkflowRun.objects.filter(pk=run_id).afirst()
    # Given the run, the token check reads nothing (given an id it reads the run, which async code may not).
    by_token = bool(token) and run is not None and check_stream_token(token, run)
    user = await request.auser()
    if not by_token and not user.is_authenticated:
        return JsonResponse({"code": "not_authenticated"}, status=401)
    if run is None:
        return JsonResponse({"code": "run_not_found"}, status=404)
    if not by_token and not can_view(user, run):
        return JsonResponse({"code": "forbidden"}, status=403)
    if stream_is_over(run, after):
        return HttpResponse(status=204)
    return event_stream_response(str(run_id), after, keepalive_events=wanted(request.GET.get("keepalive")))


urlpatterns = [
    path("health/", health),
    path("runs/<uuid:run_id>/events/", run_events),
]
