"""The Django admin: runs and their step checkpoints, read-only, because only the engine writes them.

A run's change view is a detail page: its fields, its step tree and its latest events (from the stream while
it exists, else from the DB archive), rendered from the database and then kept live by
``agentflow/admin_run.js`` through the run's websocket (:mod:`agentflow.admin_live`). The run list refreshes
its running rows the same way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.db.models import BigIntegerField, Count, FloatField, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import ngettext

from . import admin_live
from .admin_waits import RunWaitsAdminMixin, WaitReasonFilter
from .core.money import format_usd
from .models import FINISHED_STATUSES, RunStatus, StepRun, StepStatus, WorkflowRun
from .spending import budget_limits, step_usage, usage_totals, usage_value

logger = logging.getLogger("agentflow.admin")

STATUS_COLOURS: dict[str, str] = {
    RunStatus.QUEUED: "#777",
    RunStatus.RUNNING: "#1f6fb2",
    RunStatus.WAITING: "#b27c00",
    RunStatus.COMPLETED: "#2e7d32",
    RunStatus.FAILED: "#c62828",
    RunStatus.CANCELLED: "#555",
    StepStatus.COMPLETED: "#2e7d32",
    StepStatus.FAILED: "#c62828",
}


def format_duration(seconds: float | None) -> str | None:
    """``"350 ms"``, ``"1.2 s"``, ``"3 min 4 s"``, ``"2 h 5 min"``; None when there is no duration."""
    if seconds is None:
        return None
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes} min {secs} s"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {rest // 60} min"


def status_badge(status: str, label: str) -> SafeString:
    colour = STATUS_COLOURS.get(status, "#777")
    return format_html(
        '<span style="background:{};color:#fff;padding:1px 7px;border-radius:8px;white-space:nowrap">'
        "{}</span>",
        colour,
        label,
    )


def pretty_json(value: Any) -> SafeString | None:
    if value is None:
        return None
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return format_html('<pre style="margin:0;white-space:pre-wrap">{}</pre>', text)


def compact_json(value: Any) -> str:
    if value in (None, {}):
        return ""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def format_tokens(tokens: int) -> str:
    return f"{tokens:,}"


def format_cost(usd: float | None) -> str:
    """``"$1.25"``, ``"$0.0042"``, ``"$0.00000015"``: cents for dollars, else the significant digits."""
    return "unpriced" if usd is None else format_usd(usd)


def cost_text(usd: float, unpriced_calls: int) -> str:
    """A total cost, saying when calls to models without a price are left out of it."""
    if not unpriced_calls:
        return format_cost(usd)
    unpriced = ngettext("%d unpriced call", "%d unpriced calls", unpriced_calls) % unpriced_calls
    return f"{format_cost(usd)} + {unpriced}" if usd else unpriced


def fallback_text(fallback: dict[str, Any]) -> str:
    """``"primary (gpt-4o-mini): RateLimitError 429"``: a provider that failed before the one that answered."""
    error = fallback.get("error")
    if not isinstance(error, dict):
        error = {}
    status = f" {error['status']}" if error.get("status") is not None else ""
    return f"{fallback.get('provider')} ({fallback.get('model')}): {error.get('type') or 'error'}{status}"


def error_text(error: Any) -> str:
    """``"Type: message"`` of a step's or run's error dict (or whatever else was stored)."""
    if not error:
        return ""
    if isinstance(error, dict):
        kind, message = error.get("type") or "", error.get("message") or ""
        return f"{kind}: {message}" if kind and message else str(kind or message or compact_json(error))
    return str(error)


@dataclass(frozen=True)
class StepRow:
    step: StepRun
    depth: int
    badge: SafeString
    duration: str | None
    error: str
    # Its own provider calls ("" when it made none): tokens, cost, "provider / model", failed providers.
    tokens: str = ""
    cost: str = ""
    provider: str = ""
    fallbacks: tuple[str, ...] = ()

    @property
    def indent_em(self) -> float:
        return 1.5 * self.depth


def _step_row(step: StepRun) -> StepRow:
    row = StepRow(
        step=step,
        depth=step.depth,
        badge=status_badge(step.status, step.get_status_display()),
        duration=format_duration(step.duration_seconds),
        error=error_text(step.error),
    )
    usage = step_usage(step.usage)
    if usage is None:
        return row
    served = " / ".join(part for part in (usage["provider"], usage["model"]) if part)
    return dataclasses.replace(
        row,
        tokens=format_tokens(usage["total_tokens"]) if usage["calls"] else "",
        cost=cost_text(usage["cost_usd"], usage["unpriced_calls"]) if usage["calls"] else "",
        provider=served,
        fallbacks=tuple(fallback_text(item) for item in usage["fallbacks"]),
    )


def _start_order(step: StepRun) -> tuple[bool, float, int]:
    return step.started_at is None, step.started_at.timestamp() if step.started_at else 0.0, step.id


def step_tree(steps: list[StepRun]) -> list[StepRow]:
    """Steps depth first, each under its parent, siblings in start order.

    Not simply ``id`` order: a parent is checkpointed when it ends, so after all of its children.
    """
    known = {step.step_id for step in steps}
    children: dict[str | None, list[StepRun]] = defaultdict(list)
    for step in steps:
        # A child whose parent has no checkpoint (still running, or discarded) is shown at the top level.
        children[step.parent_id if step.parent_id in known else None].append(step)
    for siblings in children.values():
        siblings.sort(key=_start_order)
    rows: list[StepRow] = []
    stack = list(reversed(children[None]))
    while stack:
        step = stack.pop()
        rows.append(_step_row(step))
        stack.extend(reversed(children.get(step.step_id, [])))
    return rows


def worker_notice_context(run: WorkflowRun | None = None) -> dict[str, str]:
    """The banner of the run pages when no live worker consumes the run queue (a queued run: "waiting for a
    worker")."""
    from .health import worker_notice

    notice = worker_notice()
    if notice is None:
        return {}
    if run is not None and run.status == RunStatus.QUEUED:
        notice = f"This run is queued, waiting for a worker: {notice}."
    else:
        notice = f"Runs wait: {notice}."
    return {"agentflow_worker_notice": notice}


class BudgetFilter(admin.SimpleListFilter):
    title = "spending"
    parameter_name = "spending"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("budget", "With a budget"),
            ("exceeded", "Stopped by its budget"),
            ("unpriced", "With unpriced calls"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "budget":
            return queryset.filter(budget__isnull=False)
        if self.value() == "exceeded":
            return queryset.filter(error__code="budget_exceeded")
        if self.value() == "unpriced":
            return queryset.filter(usage__unpriced_calls__gt=0)
        return queryset


class LightChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        model_admin = cast(LightChangeListMixin, self.model_admin)
        return model_admin.get_list_queryset(super().get_queryset(request, exclude_parameters))


class LightChangeListMixin:
    """Lists leave out the JSON columns (inputs and outputs can be large); detail pages load them."""

    list_defer: tuple[str, ...] = ()

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LightChangeList

    def get_list_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.defer(*self.list_defer)


@admin.register(WorkflowRun)
class WorkflowRunAdmin(RunWaitsAdminMixin, LightChangeListMixin, admin.ModelAdmin):
    list_display = (
        "short_id",
        "workflow",
        "status_display",
        "owner",
        "duration",
        "steps",
        "tokens",
        "cost",
        "created_at",
        "recoveries",
        "last_event",
    )
    list_filter = ("status", WaitReasonFilter, "workflow", BudgetFilter, "created_at")
    # A full run id is matched exactly in get_search_results; "^id" finds a run by the short id listed.
    search_fields = ("^id", "workflow", "owner__username", "idempotency_key")
    search_help_text = "A run id (or its start), workflow, owner's username or idempotency key."
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    # Not usage: the tokens and cost columns read it, and it is small (a few numbers per model).
    list_defer = ("input", "output", "error")
    # COUNT(*) of every run on each page load is wasted on a large table.
    show_full_result_count = False
    actions = ("cancel_runs",)
    fieldsets = (
        (None, {"fields": ("id", "workflow", "status_display", "wait_reason", "owner", "idempotency_key")}),
        ("Parent", {"fields": ("parent_link", "parent_step"), "classes": ("collapse",)}),
        ("Timing", {"fields": ("created_at", "started_at", "finished_at", "duration", "heartbeat_at")}),
        ("Data", {"fields": ("input_json", "output_json", "error_json")}),
        ("Usage", {"fields": ("usage_totals", "usage_by_model", "budget_display")}),
        (
            "Execution",
            {"fields": ("epoch", "worker", "recoveries", "cancel_requested", "steps_display", "last_event")},
        ),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return flatten_fieldsets(self.fieldsets)

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("live/", wrap(lambda r: admin_live.list_rows(self, r)), name=f"{prefix}_live"),
            path(
                "<path:object_id>/cancel/",
                wrap(lambda r, object_id: admin_live.cancel_run(r, self, object_id)),
                name=f"{prefix}_cancel",
            ),
            path(
                "<path:object_id>/resume/",
                wrap(lambda r, object_id: admin_live.resume_run(r, self, object_id)),
                name=f"{prefix}_resume",
            ),
            *super().get_urls(),
        ]

    def get_list_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        # step_count is only written when a run ends; count the checkpoints so running runs show progress.
        # PostgreSQL evaluates the subquery after LIMIT: one index-only scan per listed run.
        checkpoints = (
            StepRun.objects.filter(run=OuterRef("pk")).order_by().values("run").annotate(n=Count("*"))
        )
        steps = Subquery(checkpoints.values("n"), output_field=IntegerField())
        return super().get_list_queryset(queryset).annotate(steps_done=Coalesce(steps, 0))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the engine creates runs

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # View-only, so the change view is a detail page without save buttons.
        return False

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[WorkflowRun], search_term: str
    ) -> tuple[QuerySet[WorkflowRun], bool]:
        try:
            run_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(pk=run_id), False

    @admin.display(description="run", ordering="id")
    def short_id(self, obj: WorkflowRun) -> str:
        return str(obj.id)[:8]

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: WorkflowRun) -> SafeString:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="parent run")
    def parent_link(self, obj: WorkflowRun) -> str:
        if obj.parent_id is None:
            return self.get_empty_value_display()
        url = reverse(f"{self.admin_site.name}:agentflow_workflowrun_change", args=[obj.parent_id])
        return format_html('<a href="{}">{}</a>', url, obj.parent_id)

    @admin.display(description="steps")
    def steps(self, obj: WorkflowRun) -> int:
        return getattr(obj, "steps_done", obj.step_count)

    @admin.display(description="steps")
    def steps_display(self, obj: WorkflowRun) -> int:
        # The run list's count: the checkpoints so far (step_count is only written when the run ends).
        return obj.steps.count()

    @admin.display(description="last event")
    def last_event(self, obj: WorkflowRun) -> str:
        # A running run's comes from its stream (the list's script and the run page's fill it in live).
        found = getattr(obj, "latest_event_id", None) or obj.last_event_id
        return found or self.get_empty_value_display()

    @admin.display(description="duration")
    def duration(self, obj: WorkflowRun) -> str:
        return format_duration(obj.duration_seconds) or self.get_empty_value_display()

    # Sorting reads the key out of the usage JSON of every listed run, in the database; the list is not
    # sorted by it unless asked (an annotation would be computed for every run under the default sort too).
    @admin.display(description="tokens", ordering=usage_value("total_tokens", BigIntegerField()))
    def tokens(self, obj: WorkflowRun) -> str:
        tokens = usage_totals(obj.usage)["total_tokens"]
        return format_tokens(tokens) if tokens else self.get_empty_value_display()

    @admin.display(description="cost", ordering=usage_value("cost_usd", FloatField()))
    def cost(self, obj: WorkflowRun) -> str:
        usage = usage_totals(obj.usage)
        usd, unpriced = usage["cost_usd"], usage["unpriced_calls"]
        return cost_text(usd, unpriced) if usd or unpriced else self.get_empty_value_display()

    @admin.display(description="totals")
    def usage_totals(self, obj: WorkflowRun) -> str:
        usage = usage_totals(obj.usage)
        if not usage["calls"]:
            return "No provider call."
        calls = ngettext("%d call", "%d calls", usage["calls"]) % usage["calls"]
        return (
            f"{calls} · {format_tokens(usage['total_tokens'])} tokens ("
            f"{format_tokens(usage['prompt_tokens'])} prompt + {format_tokens(usage['completion_tokens'])} "
            f"completion) · {cost_text(usage['cost_usd'], usage['unpriced_calls'])}"
        )

    @admin.display(description="by model")
    def usage_by_model(self, obj: WorkflowRun) -> str:
        by_model = usage_totals(obj.usage)["by_model"]
        if not by_model:
            return self.get_empty_value_display()
        rows = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    model,
                    counts["calls"],
                    format_tokens(counts["prompt_tokens"]),
                    format_tokens(counts["completion_tokens"]),
                    format_tokens(counts["total_tokens"]),
                    format_cost(counts["cost_usd"]),
                )
                for model, counts in sorted(by_model.items())
            ),
        )
        return format_html(
            '<table class="agentflow-usage"><thead><tr><th>Model</th><th>Calls</th><th>Prompt</th>'
            "<th>Completion</th><th>Tokens</th><th>Cost</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="budget")
    def budget_display(self, obj: WorkflowRun) -> str:
        budget = budget_limits(obj.budget)
        if budget is None:
            return "None"
        usage = usage_totals(obj.usage)
        parts = []
        for limit, spent, text in (
            (budget["usd"], usage["cost_usd"], format_cost),
            (budget["tokens"], usage["total_tokens"], lambda n: f"{format_tokens(n)} tokens"),
        ):
            if isinstance(limit, int | float) and limit > 0:
                parts.append(f"{text(limit)} ({spent / limit:.0%} spent)")
        return " · ".join(parts) or self.get_empty_value_display()

    @admin.display(description="input")
    def input_json(self, obj: WorkflowRun) -> str:
        return pretty_json(obj.input) or self.get_empty_value_display()

    @admin.display(description="output")
    def output_json(self, obj: WorkflowRun) -> str:
        return pretty_json(obj.output) or self.get_empty_value_display()

    @admin.display(description="error")
    def error_json(self, obj: WorkflowRun) -> str:
        return pretty_json(obj.error) or self.get_empty_value_display()

    @admin.action(description="Cancel selected runs", permissions=["cancel"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        from .runs import cancel

        cancelled = stopping = finished = failed = 0
        for run_id, status in queryset.values_list("pk", "status"):
            if status in FINISHED_STATUSES:
                finished += 1
                continue
            try:
                result = cancel(run_id)
            except Exception:
                logger.exception("admin: could not cancel run %s", run_id)
                failed += 1
                continue
            if result.status == RunStatus.CANCELLED:
                cancelled += 1
            elif result.status in FINISHED_STATUSES:
                finished += 1  # it ended before the cancel request reached it
            else:
                stopping += 1
        if cancelled:
            msg = ngettext("Cancelled %d run.", "Cancelled %d runs.", cancelled)
            self.message_user(request, msg % cancelled, messages.SUCCESS)
        if stopping:
            msg = ngettext(
                "Asked %d running run to stop at its next step.",
                "Asked %d running runs to stop at their next step.",
                stopping,
            )
            self.message_user(request, msg % stopping, messages.SUCCESS)
        if finished:
            msg = ngettext("%d run had already finished.", "%d runs had already finished.", finished)
            self.message_user(request, msg % finished, messages.WARNING)
        if failed:
            msg = ngettext(
                "%d run could not be cancelled; see the log.",
                "%d runs could not be cancelled; see the log.",
                failed,
            )
            self.message_user(request, msg % failed, messages.ERROR)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return super().changelist_view(request, {**(extra_context or {}), **worker_notice_context()})

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: WorkflowRun | None = None,
    ) -> HttpResponse:
        if obj is not None:
            # The steps' own input and output can be large and are not shown here.
            steps = list(obj.steps.defer("input", "output").order_by("id"))
            before = admin_live.before_param(request)
            events, events_error, older = admin_live.event_page(str(obj.pk), before)
            if events and not before:
                obj.latest_event_id = events[-1]["id"]  # type: ignore[attr-defined]
            rows = step_tree(steps)
            can_act = self.has_cancel_permission(request)
            context.update(
                step_rows=rows,
                events=events,
                events_error=events_error,
                **self.waits_context(request, obj),
                **worker_notice_context(obj),
                events_before=before,
                events_older=older,
                event_page_size=admin_live.EVENT_PAGE,
                can_cancel=can_act and obj.status not in FINISHED_STATUSES,
                can_resume=can_act and obj.status in (RunStatus.FAILED, RunStatus.CANCELLED),
                can_act=can_act,
                agentflow_page={
                    **admin_live.page_config(obj, rows, events, latest=before is None),
                    "inputs": self.inputs_config(request, obj),
                },
            )
        return super().render_change_form(request, context, add, change, form_url, obj)


@admin.register(StepRun)
class StepRunAdmin(LightChangeListMixin, admin.ModelAdmin):
    list_display = ("step_id", "run_display", "component", "status_display", "attempts", "duration", "cached")
    list_filter = ("status", "component", "cached")
    # A full run id lists that run's steps (see get_search_results).
    search_fields = ("step_id",)
    search_help_text = "A step id, or a run id for all of that run's steps."
    list_select_related = ("run",)
    list_defer = ("input", "output", "usage", "run__input", "run__output", "run__error", "run__usage")
    raw_id_fields = ("run",)
    ordering = ("-id",)  # the latest checkpoints first
    show_full_result_count = False
    fields = (
        "run",
        "step_id",
        "parent_id",
        "component",
        "status_display",
        "attempts",
        "cached",
        "started_at",
        "finished_at",
        "duration",
        "epoch",
        "input_hash",
        "input_json",
        "output_json",
        "error_json",
        "usage_json",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[StepRun], search_term: str
    ) -> tuple[QuerySet[StepRun], bool]:
        try:
            run_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(run_id=run_id), False

    @admin.display(description="run")
    def run_display(self, obj: StepRun) -> SafeString:
        url = reverse(f"{self.admin_site.name}:agentflow_workflowrun_change", args=[obj.run_id])
        return format_html('<a href="{}">{} {}</a>', url, obj.run.workflow, str(obj.run_id)[:8])

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: StepRun) -> SafeString:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="duration")
    def duration(self, obj: StepRun) -> str:
        return format_duration(obj.duration_seconds) or self.get_empty_value_display()

    @admin.display(description="input")
    def input_json(self, obj: StepRun) -> str:
        return pretty_json(obj.input) or self.get_empty_value_display()

    @admin.display(description="output")
    def output_json(self, obj: StepRun) -> str:
        return pretty_json(obj.output) or self.get_empty_value_display()

    @admin.display(description="error")
    def error_json(self, obj: StepRun) -> str:
        return pretty_json(obj.error) or self.get_empty_value_display()

    @admin.display(description="usage")
    def usage_json(self, obj: StepRun) -> str:
        return pretty_json(obj.usage) or self.get_empty_value_display()
