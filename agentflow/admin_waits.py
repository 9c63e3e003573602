"""The admin's side of waits: a run page's pending requests for input, answered with a form, its parent and
children, the run list's "waiting for" filter, and the schedules with their next run.

Self-contained so any run page can host it: :class:`RunWaitsAdminMixin` adds the answer view and a
``waits`` context; ``admin/agentflow/workflowrun/waits.html`` renders it (the run change form includes it).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from .core.errors import AgentflowError
from .core.waits import WAIT_REASONS
from .inputs import WAITING_FOR_ANSWER, list_inputs, send_input
from .models import RunStatus, Schedule, ScheduleSource, WorkflowRun


class WaitReasonFilter(admin.SimpleListFilter):
    title = "waiting for"
    parameter_name = "waiting_for"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        labels = {"input": "An answer (input)", "child": "A child run"}
        return [(reason, labels.get(reason, reason.capitalize())) for reason in WAIT_REASONS]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in WAIT_REASONS:
            return queryset.filter(status=RunStatus.WAITING, wait_reason=self.value())
        return queryset


class RunWaitsAdminMixin:
    """For a ``ModelAdmin`` of ``WorkflowRun``: the input form's view and what the run page shows of waits."""

    admin_site: admin.AdminSite
    opts: Any

    def get_urls(self) -> list[Any]:
        urls: list[Any] = super().get_urls()  # type: ignore[misc]
        view = self.admin_site.admin_view(self.answer_view)
        route = path("<path:object_id>/input/<str:key>/", view, name="agentflow_workflowrun_input")
        return [route, *urls]

    def has_answer_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return bool(request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}"))

    def waits_context(self, request: HttpRequest, run: WorkflowRun) -> dict[str, Any]:
        inputs = list_inputs(run)
        answer = f"{self.admin_site.name}:agentflow_workflowrun_input"
        pending = [
            (item, reverse(answer, args=[run.pk, item.key]))
            for item in inputs
            if item.status == WAITING_FOR_ANSWER
        ]
        change = f"{self.admin_site.name}:agentflow_workflowrun_change"
        children = [
            (child, reverse(change, args=[child.pk]))
            for child in run.children.only("id", "workflow", "status", "parent_step").order_by(
                "created_at", "id"
            )
        ]
        return {
            "waits_inputs": inputs,
            "waits_pending": pending,
            "waits_can_answer": self.has_answer_permission(request),
            "waits_parent_url": reverse(change, args=[run.parent_id]) if run.parent_id else "",
            "waits_children": children,
        }

    def inputs_config(self, request: HttpRequest, run: WorkflowRun) -> dict[str, Any]:
        """What the run page's script needs to answer requests for input: whether this user may, and where
        (``__key__`` stands for the key; keys are URL-safe)."""
        url = reverse(f"{self.admin_site.name}:agentflow_workflowrun_input", args=[run.pk, "__key__"])
        return {"canAnswer": self.has_answer_permission(request), "answerUrl": url}

    def answer_view(self, request: HttpRequest, object_id: str, key: str) -> HttpResponse:
        """POST an answer: the form's ``answer`` field (JSON text), then back to the run page with a message.

        The run page's script (admin_run.js, through agentflow.js's ``answerInput``) posts the answer itself
        as ``application/json`` instead, and gets JSON back as from the REST API: the answered request, or
        ``{"code", "message", "details"}`` with 400 (``invalid_answer`` and its field errors,
        ``malformed_json``), 403, 404 or 409; the page shows the field errors without a reload.
        """
        if request.content_type == "application/json":
            return self._answer_json(request, object_id, key)
        run_url = reverse(f"{self.admin_site.name}:agentflow_workflowrun_change", args=[object_id])
        if request.method != "POST":
            return HttpResponseRedirect(run_url)
        if not self.has_answer_permission(request):
            raise PermissionDenied
        run = WorkflowRun.objects.filter(pk=object_id).first() if _is_uuid(object_id) else None
        if run is None:
            return HttpResponseRedirect(reverse(f"{self.admin_site.name}:agentflow_workflowrun_changelist"))
        try:
            value = json.loads(request.POST.get("answer", ""))
        except json.JSONDecodeError as exc:
            messages.error(request, f"The answer to {key!r} is not JSON: {exc}. Nothing was sent.")
            return HttpResponseRedirect(run_url)
        try:
            send_input(run, key, value, user=request.user)
        except AgentflowError as exc:
            details = exc.details if isinstance(exc.details, list) else []
            fields = "; ".join(f"{d.get('field') or '(answer)'}: {d.get('message')}" for d in details)
            messages.error(request, f"{exc.message}{': ' + fields if fields else ''}. The run keeps waiting.")
        else:
            messages.success(request, f"Answered {key!r}: the run continues.")
        return HttpResponseRedirect(run_url)

    def _answer_json(self, request: HttpRequest, object_id: str, key: str) -> HttpResponse:
        if request.method != "POST":
            return _error(405, "method_not_allowed", "POST the answer")
        if not self.has_answer_permission(request):
            return _error(403, "permission_denied", "answering needs the permission to change runs")
        run = WorkflowRun.objects.filter(pk=object_id).first() if _is_uuid(object_id) else None
        if run is None:
            return _error(404, "run_not_found", f"no run {object_id[:100]!r}")
        try:
            value = json.loads(request.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, "malformed_json", f"the answer is not JSON: {exc}")
        try:
            answered = send_input(run, key, value, user=request.user)
        except AgentflowError as exc:
            from .exceptions import AGENTFLOW_STATUSES

            return _error(AGENTFLOW_STATUSES.get(exc.code, 400), exc.code, exc.message, exc.details)
        return JsonResponse(answered.as_dict())


def _error(status: int, code: str, message: str, details: Any = None) -> JsonResponse:
    """An error as the REST API words it, so agentflow.js's answerInput reads both alike."""
    return JsonResponse({"code": code, "message": message, "details": details}, status=status)


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# -- schedules ---------------------------------------------------------------------------------------------------


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = [
            "name",
            "workflow",
            "input",
            "cron",
            "every_seconds",
            "timezone",
            "catch_up",
            "enabled",
            "owner",
        ]

    def clean(self) -> dict[str, Any]:
        from .core.errors import InvalidInput, WorkflowNotFound
        from .core.workflow import registry
        from .schedules import Timetable

        data: dict[str, Any] = super().clean() or {}
        try:
            Timetable(
                cron=data.get("cron") or "",
                every_seconds=data.get("every_seconds"),
                tz=data.get("timezone") or "",
            )
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        try:
            data["input"] = registry.get(data.get("workflow") or "").validate_input(data.get("input") or {})
        except WorkflowNotFound as exc:
            self.add_error("workflow", exc.message)
        except InvalidInput as exc:
            self.add_error("input", f"{exc.message}: {exc.details}")
        return data


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ("name", "workflow", "timing", "enabled", "next_run", "last_tick", "source", "problem")
    list_filter = ("enabled", "source", "workflow")
    search_fields = ("name", "workflow")
    readonly_fields = ("source", "next_run_at", "last_tick", "last_error", "created_at", "updated_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and obj.source != ScheduleSource.ADMIN:
            # Declared in code or settings: change it there (the scheduler would undo an edit here).
            return [*ScheduleForm.Meta.fields, *self.readonly_fields]
        return self.readonly_fields

    @admin.display(description="when")
    def timing(self, obj: Schedule) -> str:
        if obj.cron:
            return f"cron {obj.cron}" + (f" ({obj.timezone})" if obj.timezone else "")
        return f"every {obj.every_seconds:g} s"

    @admin.display(description="next run", ordering="next_run_at")
    def next_run(self, obj: Schedule) -> str:
        if not obj.enabled or obj.next_run_at is None:
            return "-"
        local = timezone.localtime(obj.next_run_at)
        return local.strftime("%Y-%m-%d %H:%M:%S %Z")

    @admin.display(description="error")
    def problem(self, obj: Schedule) -> Any:
        return (
            format_html('<span style="color:#ba2121">{}</span>', obj.last_error[:200])
            if obj.last_error
            else ""
        )

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        from .schedules import timetable_of

        timing = {"cron", "every_seconds", "timezone", "enabled"}
        if not change or timing & set(form.changed_data):
            obj.next_run_at = timetable_of(obj).next_after(timezone.now())
        obj.source = ScheduleSource.ADMIN if not change else obj.source
        super().save_model(request, obj, form, change)
