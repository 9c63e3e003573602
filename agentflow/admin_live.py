"""The live parts of the admin: what the run page's script needs (agentflow/static/agentflow/admin_run.js),
the latest events a page at a time going back, cancel and resume buttons, and the JSON the run list polls to
refresh its running rows.

Everything the page shows live comes from the run's events through agentflow.js's reducer; the server
renders the same page from the database first, so it reads the same without JavaScript.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import conditional_escape
from django.views.decorators.http import require_POST

from . import streams
from .access import make_stream_token
from .models import ACTIVE_STATUSES, FINISHED_STATUSES, RunStatus, StepRun, StepStatus, WorkflowRun

if TYPE_CHECKING:
    from .admin import WorkflowRunAdmin

logger = logging.getLogger("agentflow.admin")

# Events per page of the run page's event table, and the most rows its script keeps while the run goes on.
EVENT_PAGE = 100
EVENT_ROWS_MAX = 500


def event_page(run_id: str, before: str | None) -> tuple[list[dict[str, Any]], str, str | None]:
    """The events before ``before`` (the latest without it), an error message (empty unless they could not
    be read), and the id to ask for the page before this one (None: this is the first)."""
    from .admin import compact_json
    from .archive import history_before

    try:
        events = history_before(run_id, before=before, limit=EVENT_PAGE + 1)
    except Exception as exc:  # Redis down: the page still shows everything the DB has
        logger.warning("run %s: cannot read its events", run_id, exc_info=True)
        return [], f"The events could not be read: {type(exc).__name__}: {exc}", None
    older = events[1]["id"] if len(events) > EVENT_PAGE else None
    events = events[-EVENT_PAGE:]
    return [{**event, "data_json": compact_json(event.get("data"))} for event in events], "", older


def before_param(request: HttpRequest) -> str | None:
    value = request.GET.get("events_before") or None
    if value is None:
        return None
    try:
        streams.split_id(value)
    except ValueError:
        return None  # a mangled link shows the latest page
    return value


def api_urls(run: WorkflowRun) -> dict[str, str | None]:
    """The run's REST and websocket URLs (None for any the project does not route)."""
    from .serializers import websocket_url

    urls: dict[str, str | None] = {"websocket": websocket_url({}, run.pk)}
    for key, route in (("self", "agentflow:run-detail"), ("events", "agentflow:run-events")):
        try:
            urls[key] = reverse(route, kwargs={"run_id": run.pk})
        except NoReverseMatch:
            urls[key] = None
    return urls


def page_config(
    run: WorkflowRun, step_rows: list[Any], events: list[dict[str, Any]], latest: bool
) -> dict[str, Any]:
    """What admin_run.js needs, rendered with ``json_script``."""
    from .admin import STATUS_COLOURS

    labels = {**dict(RunStatus.choices), **dict(StepStatus.choices)}
    labels.update(retrying="Retrying", interrupted="Interrupted", running="Running")
    return {
        "run": {"id": str(run.pk), "stream_token": make_stream_token(run), "urls": api_urls(run)},
        "latestPage": latest,
        "lastEventId": events[-1]["id"] if latest and events else ("0-0" if latest else None),
        "eventRowsMax": EVENT_ROWS_MAX,
        "colours": {
            **{str(k): v for k, v in STATUS_COLOURS.items()},
            "retrying": "#b27c00",
            "interrupted": "#b27c00",
        },
        "statusLabels": {str(k): str(v) for k, v in labels.items()},
        # What the events do not say about a finished step: the providers that failed before the one that
        # answered, and its duration as the checkpoint measured it.
        "stepExtras": {
            row.step.step_id: {
                "duration": row.duration,
                "tokens": row.tokens,
                "cost": row.cost,
                "provider": row.provider,
                "fallbacks": list(row.fallbacks),
            }
            for row in step_rows
        },
    }


def checkpoint_counts(run_ids: list[Any]) -> dict[Any, int]:
    rows = (
        StepRun.objects.filter(run__in=run_ids).values("run").annotate(n=Count("*")).values_list("run", "n")
    )
    return dict(rows)


def latest_event_ids(runs: list[WorkflowRun]) -> dict[Any, str]:
    """Each run's last event id: the stored one once it ended, else its stream's last entry (one pipeline)."""
    found = {run.pk: run.last_event_id for run in runs if run.last_event_id}
    pending = [run for run in runs if not run.last_event_id]
    if not pending:
        return found
    try:
        pipe = streams.get_client().pipeline(transaction=False)
        for run in pending:
            pipe.xrevrange(streams.stream_key(str(run.pk)), count=1)
        for run, entries in zip(pending, pipe.execute(), strict=True):
            if entries:
                found[run.pk] = str(entries[0][0])
    except Exception:  # Redis down: the column stays empty
        logger.warning("cannot read the runs' last event ids", exc_info=True)
    return found


def list_rows(model_admin: WorkflowRunAdmin, request: HttpRequest) -> JsonResponse:
    """GET ``live/?id=<run id>&id=...``: the cells of these rows of the run list, as the list renders them."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    ids = request.GET.getlist("id")[:200]
    valid = []
    for value in ids:
        try:
            valid.append(WorkflowRun._meta.pk.to_python(value))  # type: ignore[union-attr]
        except Exception:
            continue
    runs = list(WorkflowRun.objects.filter(pk__in=valid).defer("input", "output", "error"))
    counts = checkpoint_counts([run.pk for run in runs])
    last_ids = latest_event_ids(runs)
    rows = {}
    for run in runs:
        run.steps_done = counts.get(run.pk, 0)  # type: ignore[attr-defined]
        rows[str(run.pk)] = {
            "active": run.status in ACTIVE_STATUSES,
            # HTML, as the list renders each cell (display methods return text or safe HTML).
            "cells": {
                name: str(conditional_escape(str(value) if isinstance(value, int) else value))
                for name, value in (
                    ("status_display", model_admin.status_display(run)),
                    ("steps", model_admin.steps(run)),
                    ("duration", model_admin.duration(run)),
                    ("tokens", model_admin.tokens(run)),
                    ("cost", model_admin.cost(run)),
                    ("last_event", last_ids.get(run.pk) or model_admin.get_empty_value_display()),
                )
            },
        }
    return JsonResponse({"rows": rows})


def _change_url(model_admin: WorkflowRunAdmin, run_id: Any) -> str:
    return reverse(f"{model_admin.admin_site.name}:agentflow_workflowrun_change", args=[run_id])


@require_POST
def cancel_run(request: HttpRequest, model_admin: WorkflowRunAdmin, object_id: str) -> HttpResponse:
    from .runs import cancel

    if not model_admin.has_cancel_permission(request):
        raise PermissionDenied
    run = model_admin.get_object(request, object_id)
    if run is None:
        return HttpResponse(status=404)
    if run.status in FINISHED_STATUSES:
        model_admin.message_user(request, f"The run is {run.status} already.", messages.WARNING)
    else:
        result = cancel(run)
        if result.status == RunStatus.CANCELLED:
            model_admin.message_user(request, "Cancelled the run.", messages.SUCCESS)
        elif result.status in FINISHED_STATUSES:
            model_admin.message_user(request, f"The run is {result.status} already.", messages.WARNING)
        else:
            model_admin.message_user(request, "Asked the run to stop at its next step.", messages.SUCCESS)
    return HttpResponseRedirect(_change_url(model_admin, run.pk))


@require_POST
def resume_run(request: HttpRequest, model_admin: WorkflowRunAdmin, object_id: str) -> HttpResponse:
    from .core.errors import RunNotResumable
    from .resuming import resume

    if not model_admin.has_cancel_permission(request):
        raise PermissionDenied
    run = model_admin.get_object(request, object_id)
    if run is None:
        return HttpResponse(status=404)
    try:
        resumed = resume(run)
    except RunNotResumable as exc:
        model_admin.message_user(request, str(exc), messages.WARNING)
    else:
        model_admin.message_user(
            request, f"Resumed the run from its last checkpoint (epoch {resumed.epoch}).", messages.SUCCESS
        )
    return HttpResponseRedirect(_change_url(model_admin, run.pk))
