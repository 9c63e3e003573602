"""The example project's pages. Plain Django views and templates: the live parts are agentflow.js in the run
page (static/web/run.js), reading the run's websocket with its stream token."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

import agentflow
from agentflow.access import make_stream_token, visible_runs
from agentflow.core.errors import InputNotFound, InvalidInput, RunNotResumable, WorkflowNotFound
from agentflow.core.workflow import registry
from agentflow.inputs import get_input
from agentflow.models import FINISHED_STATUSES, RunStatus, WorkflowRun

from .forms import answer_form, schema_form


@login_required
def index(request: HttpRequest) -> HttpResponse:
    runs = visible_runs(request.user).defer("input", "output").order_by("-created_at")[:10]
    return render(
        request, "web/index.html", {"workflows": [_described(wf) for wf in registry.all()], "runs": runs}
    )


@login_required
def workflow_page(request: HttpRequest, name: str) -> HttpResponse:
    try:
        wf = registry.get(name)
    except WorkflowNotFound:
        raise Http404(f"no workflow is named {name!r}") from None
    form_class = schema_form(wf.input_schema())
    form = form_class(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            run = agentflow.start(wf, form.input(), owner=request.user)
        except InvalidInput as exc:
            form.add_input_errors(exc.details, str(exc))
        else:
            return redirect("web:run", run_id=run.pk)
    runs = (
        visible_runs(request.user).filter(workflow=wf.name).defer("input", "output").order_by("-created_at")
    )
    return render(request, "web/workflow.html", {"workflow": _described(wf), "form": form, "runs": runs[:10]})


def _described(wf: Any) -> dict[str, str]:
    # Not the workflow itself: templates call what is callable, and a workflow is.
    return {"name": wf.name, "description": wf.description}


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    runs = visible_runs(request.user).defer("input", "output").order_by("-created_at", "-id")
    workflow, status = request.GET.get("workflow"), request.GET.get("status")
    if workflow:
        runs = runs.filter(workflow=workflow)
    if status in RunStatus.values:
        runs = runs.filter(status=status)
    page = Paginator(runs, 25).get_page(request.GET.get("page"))
    return render(
        request,
        "web/runs.html",
        {"page": page, "statuses": RunStatus.values, "workflow": workflow or "", "status": status or ""},
    )


def _visible_run(request: HttpRequest, run_id: Any) -> WorkflowRun:
    run = visible_runs(request.user).filter(pk=run_id).first()
    if run is None:
        raise Http404("no such run")
    return run


@login_required
def run_page(request: HttpRequest, run_id: Any) -> HttpResponse:
    run = _visible_run(request, run_id)
    config = {
        "run": {
            "id": str(run.pk),
            "stream_token": make_stream_token(run),
            "urls": {
                "self": reverse("agentflow:run-detail", kwargs={"run_id": run.pk}),
                "events": reverse("agentflow:run-events", kwargs={"run_id": run.pk}),
            },
        },
        "workflow": run.workflow,
        # The form for the answer to a request for input, by key (__key__): the page asks for it when the
        # run asks (input.requested), and posts the answer to the REST API with agentflow.js's answerInput.
        "questionUrl": reverse("web:question", kwargs={"run_id": run.pk, "key": "__key__"}),
    }
    return render(request, "web/run.html", {"run": run, "config": config, "finished": FINISHED_STATUSES})


@login_required
def question_form(request: HttpRequest, run_id: Any, key: str) -> HttpResponse:
    """The form for the answer to one of the run's requests for input, generated from the request's JSON
    Schema (forms.py, as the workflows' input forms are): an HTML fragment the run page inserts."""
    run = _visible_run(request, run_id)
    try:
        request_for_input = get_input(run, key)
    except InputNotFound:
        raise Http404(f"the run has not asked for {key!r}") from None
    form_class, single = answer_form(request_for_input.schema)
    context = {"item": request_for_input, "form": form_class(prefix=f"answer-{key}"), "single": single}
    return render(request, "web/_question.html", context)


@login_required
@require_POST
def cancel_run(request: HttpRequest, run_id: Any) -> HttpResponse:
    run = _visible_run(request, run_id)
    if run.is_finished:
        messages.warning(request, f"The run is {run.status} already.")
    else:
        agentflow.cancel(run)
        messages.success(request, "Cancel requested: the run stops at its next step.")
    return redirect("web:run", run_id=run.pk)


@login_required
@require_POST
def resume_run(request: HttpRequest, run_id: Any) -> HttpResponse:
    run = _visible_run(request, run_id)
    try:
        agentflow.resume(run)
    except RunNotResumable as exc:
        messages.warning(request, str(exc))
    else:
        messages.success(request, "Resumed from its last checkpoint.")
    return redirect("web:run", run_id=run.pk)
