"""Representations of workflows, runs, steps, events and errors in the REST API (read-only: the input of a
run is the request body itself, validated by the workflow's own schema)."""

from __future__ import annotations

import functools
from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .access import make_stream_token
from .core.workflow import Workflow
from .models import RunStatus, StepRun, StepStatus, WorkflowRun
from .spending import budget_limits, step_usage, usage_totals

WEBSOCKET_ROUTE = "agentflow-run-events"


def absolute_url(context: dict[str, Any], path: str) -> str:
    request = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


@functools.cache
def _websocket_urlconf() -> type:
    from . import routing  # imports Channels: only when a websocket URL is wanted

    return type("WebsocketURLConf", (), {"urlpatterns": routing.websocket_urlpatterns})


def websocket_url(context: dict[str, Any], run_id: Any) -> str:
    """``ws(s)://<host>/ws/runs/<id>/``: the route of :mod:`agentflow.routing`, on the request's host."""
    # Django accepts any object with `urlpatterns` as a URLconf; the stubs say str.
    urlconf: Any = _websocket_urlconf()
    path = "/" + reverse(WEBSOCKET_ROUTE, urlconf=urlconf, kwargs={"run_id": run_id}).lstrip("/")
    request = context.get("request")
    if request is None:
        return path
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}{path}"


class NamedChoiceField(serializers.ChoiceField):
    """A choice field whose choices are one named enum in the OpenAPI schema (see ``agentflow.openapi``)."""

    def __init__(self, choices: Any, *, enum_name: str, **kwargs: Any) -> None:
        super().__init__(choices, **kwargs)
        self.enum_name = enum_name


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable error code.")
    message = serializers.CharField(help_text="What went wrong, for humans.")
    details = serializers.JSONField(
        allow_null=True, help_text="More about it: field errors `[{field, code, message}]`, limits..."
    )


class WorkflowUrlsSerializer(serializers.Serializer):
    self = serializers.URLField()
    start = serializers.URLField(help_text="POST here to start a run (202).")
    run = serializers.URLField(help_text="POST here to run synchronously.")
    runs = serializers.URLField(help_text="This workflow's runs.")


class WorkflowSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    input_schema = serializers.SerializerMethodField(help_text="JSON Schema of a run's input.")
    output_schema = serializers.SerializerMethodField(help_text="JSON Schema of the output ({}: any).")
    urls = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_input_schema(self, wf: Workflow[Any, Any]) -> dict[str, Any]:
        return wf.input_schema()

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_output_schema(self, wf: Workflow[Any, Any]) -> dict[str, Any]:
        return wf.output_schema()

    @extend_schema_field(WorkflowUrlsSerializer)
    def get_urls(self, wf: Workflow[Any, Any]) -> dict[str, str]:
        def url(name: str) -> str:
            return absolute_url(self.context, reverse(f"agentflow:{name}", kwargs={"name": wf.name}))

        runs = absolute_url(self.context, reverse("agentflow:run-list")) + f"?workflow={wf.name}"
        return {
            "self": url("workflow-detail"),
            "start": url("workflow-start"),
            "run": url("workflow-run"),
            "runs": runs,
        }


class TotalsSerializer(serializers.Serializer):
    """The sums every usage representation has (agentflow.core.usage)."""

    calls = serializers.IntegerField(help_text="Provider calls that answered.")
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField(help_text="USD of the priced calls (see `unpriced_calls`).")
    unpriced_calls = serializers.IntegerField(
        help_text="Calls to models without a price in LLM_PRICES: not in `cost_usd`."
    )
    estimated_calls = serializers.IntegerField(
        help_text="Calls whose provider reported no usage: their tokens (and cost) are estimates."
    )


class WorkflowUsageSerializer(TotalsSerializer):
    runs = serializers.IntegerField(help_text="Runs of the workflow counted (yours; staff: everyone's).")
    calls = serializers.IntegerField(help_text="Provider calls of those runs.")


class WorkflowDetailSerializer(WorkflowSerializer):
    """A workflow, with the tokens and cost of its runs."""

    usage = serializers.SerializerMethodField(
        help_text="Tokens and cost of the workflow's runs you may see, so far (active runs included)."
    )

    @extend_schema_field(WorkflowUsageSerializer)
    def get_usage(self, wf: Workflow[Any, Any]) -> dict[str, Any]:
        # One aggregate query of the view (agentflow.spending.workflow_usage), over the runs it may show.
        return dict(self.context["usage"])


class ModelUsageSerializer(serializers.Serializer):
    calls = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField(
        allow_null=True, help_text="null: the model has no price in LLM_PRICES."
    )


class UsageSerializer(TotalsSerializer):
    """Tokens and cost; every key is present, with zeros when nothing was spent."""

    by_model = serializers.DictField(
        child=ModelUsageSerializer(), help_text="The same, by the model that answered."
    )


class FallbackErrorSerializer(serializers.Serializer):
    type = serializers.CharField()
    message = serializers.CharField()
    status = serializers.IntegerField(required=False, help_text="The provider's HTTP status, if it answered.")


class FallbackSerializer(serializers.Serializer):
    provider = serializers.CharField()
    model = serializers.CharField(help_text="The model as that provider names it.")
    error = FallbackErrorSerializer()


class StepUsageSerializer(UsageSerializer):
    """A step's own provider calls (its children's are theirs), and which provider served them."""

    provider = serializers.CharField(
        allow_null=True, help_text="The provider that answered (null: none did)."
    )
    model = serializers.CharField(allow_null=True, help_text="The model as that provider names it.")
    skipped = serializers.ListField(
        child=serializers.CharField(),
        help_text="Providers not tried: their circuit breaker was open after repeated failures.",
    )
    fallbacks = FallbackSerializer(
        many=True,
        help_text="Providers that failed, in order, before `provider` answered or the step gave up.",
    )


class BudgetSerializer(serializers.Serializer):
    usd = serializers.FloatField(allow_null=True, help_text="Limit in USD (null: none).")
    tokens = serializers.IntegerField(allow_null=True, help_text="Limit in tokens (null: none).")


class StepSerializer(serializers.ModelSerializer):
    status = NamedChoiceField(StepStatus.choices, enum_name="StepStatus", read_only=True)
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    usage = serializers.SerializerMethodField(help_text="null: the step made no provider call.")

    class Meta:
        model = StepRun
        fields = [
            "step_id", "parent_id", "component", "status", "attempts", "cached",
            "started_at", "finished_at", "duration_seconds", "error", "usage",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(StepUsageSerializer(allow_null=True))
    def get_usage(self, step: StepRun) -> dict[str, Any] | None:
        return step_usage(step.usage)


class InputRequestSerializer(serializers.Serializer):
    """A run's request for input (``agentflow.wait_for_input``)."""

    key = serializers.CharField()
    status = NamedChoiceField(
        ["waiting", "answered", "timed_out", "closed"],
        enum_name="InputStatus",
        help_text="`closed`: the run finished without it being answered.",
    )
    prompt = serializers.CharField()
    schema = serializers.JSONField(help_text="JSON Schema of the answer ({}: any JSON).")
    requested_at = serializers.CharField(allow_null=True)
    timeout_at = serializers.CharField(allow_null=True, help_text="When it times out (null: never).")
    value = serializers.JSONField(allow_null=True, help_text="The answer, once answered.")
    answered_by = serializers.CharField(allow_null=True, help_text="Username of who answered.")
    answered_at = serializers.CharField(allow_null=True)
    url = serializers.SerializerMethodField(help_text="POST the answer here.")

    def get_url(self, request: Any) -> str:
        run = self.context["run"]
        path = reverse("agentflow:run-input", kwargs={"run_id": run.pk, "key": request.key})
        return absolute_url(self.context, path)


class ChildRunSerializer(serializers.ModelSerializer):
    """A child run, as its parent lists it."""

    status = NamedChoiceField(RunStatus.choices, enum_name="RunStatus", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowRun
        fields = ["id", "workflow", "status", "parent_step", "created_at", "finished_at", "url"]
        read_only_fields = fields

    def get_url(self, run: WorkflowRun) -> str:
        return absolute_url(self.context, reverse("agentflow:run-detail", kwargs={"run_id": run.pk}))


class RunUrlsSerializer(serializers.Serializer):
    self = serializers.URLField()
    events = serializers.URLField(help_text="History as JSON pages, or live as server-sent events.")
    websocket = serializers.CharField(help_text="ws:// or wss:// URL of the run's live events.")
    cancel = serializers.URLField()
    resume = serializers.URLField()
    workflow = serializers.URLField()
    inputs = serializers.URLField(help_text="The run's requests for input; answer one at `<inputs><key>/`.")
    parent = serializers.URLField(allow_null=True, help_text="The parent run, for a child run.")


class RunSerializer(serializers.ModelSerializer):
    """A run without its steps (lists, and the answer to a start)."""

    status = NamedChoiceField(RunStatus.choices, enum_name="RunStatus", read_only=True)
    owner = serializers.SerializerMethodField(help_text="Username of the user who started the run.")
    error = serializers.SerializerMethodField(help_text="{type, message, step, ...} of the failure, or null.")
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    urls = serializers.SerializerMethodField()
    stream_token = serializers.SerializerMethodField(
        help_text="Signed, expiring token that lets its bearer read this run's events (`?token=`)."
    )
    usage = serializers.SerializerMethodField(
        help_text="Tokens and cost of the run's steps so far (updated while it runs, with its heartbeat)."
    )
    budget = serializers.SerializerMethodField(
        help_text="The run's spending limit, or null; reaching it fails the run (`budget_exceeded`)."
    )
    wait_reason = serializers.SerializerMethodField(
        help_text="What a waiting run waits for: `input`, `child`, `sleep`, `retry`, `slice` or `drain`; null "
        "unless it is waiting."
    )
    parent = serializers.UUIDField(
        source="parent_id", read_only=True, allow_null=True, help_text="The run that started this one."
    )

    class Meta:
        model = WorkflowRun
        fields = [
            "id", "workflow", "status", "wait_reason", "input", "output", "error", "owner",
            "created_at", "started_at", "finished_at", "duration_seconds",
            "epoch", "recoveries", "cancel_requested", "step_count", "usage", "budget",
            "parent", "parent_step", "urls", "stream_token",
        ]  # fmt: skip
        read_only_fields = fields

    def get_owner(self, run: WorkflowRun) -> str | None:
        return run.owner.get_username() if run.owner_id is not None and run.owner else None

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_error(self, run: WorkflowRun) -> dict[str, Any] | None:
        if not run.error:
            return None
        # Tracebacks show server internals: they stay in the admin.
        return {k: v for k, v in run.error.items() if k != "traceback"}

    @extend_schema_field(RunUrlsSerializer)
    def get_urls(self, run: WorkflowRun) -> dict[str, str | None]:
        def url(route: str, **kwargs: Any) -> str:
            return absolute_url(
                self.context, reverse(f"agentflow:{route}", kwargs=kwargs or {"run_id": run.pk})
            )

        return {
            "self": url("run-detail"),
            "events": url("run-events"),
            "websocket": websocket_url(self.context, run.pk),
            "cancel": url("run-cancel"),
            "resume": url("run-resume"),
            "workflow": url("workflow-detail", name=run.workflow),
            "inputs": url("run-inputs"),
            "parent": url("run-detail", run_id=run.parent_id) if run.parent_id else None,
        }

    def get_wait_reason(self, run: WorkflowRun) -> str | None:
        return (run.wait_reason or None) if run.status == RunStatus.WAITING else None

    def get_stream_token(self, run: WorkflowRun) -> str:
        return make_stream_token(run)

    @extend_schema_field(UsageSerializer)
    def get_usage(self, run: WorkflowRun) -> dict[str, Any]:
        return usage_totals(run.usage)

    @extend_schema_field(BudgetSerializer(allow_null=True))
    def get_budget(self, run: WorkflowRun) -> dict[str, Any] | None:
        return budget_limits(run.budget)


class RunDetailSerializer(RunSerializer):
    """A run with its steps: a flat list in execution order, ``parent_id`` making the tree; its requests for
    input and its child runs."""

    steps = StepSerializer(many=True, read_only=True)
    inputs = serializers.SerializerMethodField(help_text="Its requests for input, in the order it made them.")
    children = serializers.SerializerMethodField(help_text="The runs it started (`agentflow.run_workflow`).")

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "steps", "inputs", "children"]
        read_only_fields = fields

    @extend_schema_field(InputRequestSerializer(many=True))
    def get_inputs(self, run: WorkflowRun) -> list[dict[str, Any]]:
        from .inputs import describe

        rows = [step for step in run.steps.all() if step.component == "input"]
        requests = [describe(row, run.status) for row in rows]
        return InputRequestSerializer(requests, many=True, context={**self.context, "run": run}).data  # type: ignore[return-value]

    @extend_schema_field(ChildRunSerializer(many=True))
    def get_children(self, run: WorkflowRun) -> list[dict[str, Any]]:
        children = run.children.order_by("created_at", "id")
        return ChildRunSerializer(children, many=True, context=self.context).data  # type: ignore[return-value]


class EventSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The event's Redis stream id, such as 1732390000000-0.")
    type = serializers.CharField()
    run = serializers.UUIDField()
    step = serializers.CharField(allow_null=True)
    attempt = serializers.IntegerField(allow_null=True)
    epoch = serializers.IntegerField()
    ts = serializers.CharField()
    data = serializers.JSONField()


class EventPageSerializer(serializers.Serializer):
    events = EventSerializer(many=True)
    last_id = serializers.CharField(
        allow_null=True, help_text="Pass it back as `?after=` for the next page (null: no event yet)."
    )
    has_more = serializers.BooleanField(help_text="Whether more events follow this page right now.")


class ServerSentEventSerializer(serializers.Serializer):
    """One event of an event stream, as a client parses it. (OpenAPI 3.2 names this the ``itemSchema`` of
    ``text/event-stream``; tools such as schemathesis read that media type's ``schema`` so in 3.0 too.)"""

    id = serializers.CharField(
        required=False, help_text="The event's id: send it back as Last-Event-ID or ?after=."
    )
    event = serializers.CharField(help_text="The event's type, such as run.started.")
    data = serializers.CharField(help_text="The event as one line of JSON, as in EventPage.events.")
    retry = serializers.IntegerField(
        required=False, help_text="Milliseconds a client waits before it reconnects (the first frame)."
    )

    class Meta:
        ref_name = "ServerSentEvent"


class ServerSentErrorSerializer(serializers.Serializer):
    """The one event of the answer to an event stream request that failed."""

    event = NamedChoiceField(["error"], enum_name="ServerSentErrorType")
    data = serializers.CharField(help_text="The error as one line of JSON: {code, message, details}.")

    class Meta:
        ref_name = "ServerSentError"
