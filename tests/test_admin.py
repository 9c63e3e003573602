"""The admin: run list, run detail page (fields, step tree, events), read-only permissions, the cancel action."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agentflow import admin as agentflow_admin
from agentflow.models import RunEvent, RunStatus, StepRun, WorkflowRun

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:agentflow_workflowrun_changelist")


def change_url(run: WorkflowRun) -> str:
    return reverse("admin:agentflow_workflowrun_change", args=[run.pk])


def make_run(**fields: Any) -> WorkflowRun:
    fields.setdefault("workflow", "summarize")
    return WorkflowRun.objects.create(**fields)


def make_step(run: WorkflowRun, step_id: str, **fields: Any) -> StepRun:
    now = timezone.now()
    defaults: dict[str, Any] = {
        "component": step_id.rsplit("/", 1)[-1].split("#")[0],
        "status": "completed",
        "parent_id": step_id.rsplit("/", 1)[0] if "/" in step_id else None,
        "started_at": now,
        "finished_at": now + timedelta(seconds=1.5),
    }
    defaults.update(fields)
    return StepRun.objects.create(run=run, step_id=step_id, **defaults)


def make_event(run: WorkflowRun, ms: int, type: str, **fields: Any) -> RunEvent:
    return RunEvent.objects.create(
        run=run,
        stream_id=f"{ms}-0",
        stream_ms=ms,
        stream_seq=0,
        type=type,
        ts="2025-01-01T00:00:00Z",
        **fields,
    )


def listed_ids(html: str) -> set[str]:
    return set(re.findall(r'<th class="field-short_id"><a href="[^"]*">([0-9a-f]{8})</a>', html))


def short(run: WorkflowRun) -> str:
    return str(run.pk)[:8]


# -- the run list -----------------------------------------------------------------------------------------------


def test_changelist_shows_runs_with_their_columns(admin_client: Any, admin_user: Any) -> None:
    now = timezone.now()
    run = make_run(
        owner=admin_user,
        status=RunStatus.COMPLETED,
        started_at=now - timedelta(seconds=184),
        finished_at=now,
        recoveries=2,
    )
    make_step(run, "plan#0")
    make_step(run, "plan#0/search#0")

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    html = response.content.decode()
    assert listed_ids(html) == {short(run)}
    assert "3 min 4 s" in html
    assert '<td class="field-steps">2</td>' in html
    assert ">Completed</span>" in html
    # The filters are there.
    assert "?status__exact=failed" in html
    assert "?workflow=summarize" in html


def test_changelist_filters_by_status_and_workflow(admin_client: Any) -> None:
    failed = make_run(status=RunStatus.FAILED)
    completed = make_run(status=RunStatus.COMPLETED)
    other = make_run(workflow="translate", status=RunStatus.FAILED)

    by_status = admin_client.get(CHANGELIST, {"status__exact": "failed"}).content.decode()
    by_both = admin_client.get(
        CHANGELIST, {"status__exact": "failed", "workflow": "summarize"}
    ).content.decode()

    assert listed_ids(by_status) == {short(failed), short(other)}
    assert listed_ids(by_both) == {short(failed)}
    assert short(completed) not in by_status


def test_changelist_searches_by_run_id_workflow_owner_and_key(admin_client: Any) -> None:
    alice = get_user_model().objects.create_user("alice")
    run = make_run(owner=alice, idempotency_key="order-42")
    other = make_run(workflow="translate")

    def search(term: str) -> set[str]:
        response = admin_client.get(CHANGELIST, {"q": term})
        assert response.status_code == 200
        return listed_ids(response.content.decode())

    assert search(str(run.pk)) == {short(run)}
    assert search(str(run.pk).upper()) == {short(run)}
    assert search(run.pk.hex) == {short(run)}
    assert search(short(run)) == {short(run)}  # the short id shown in the list
    assert search("translate") == {short(other)}
    assert search("alice") == {short(run)}
    assert search("order-42") == {short(run)}
    assert search("no-such-thing") == set()


def test_changelist_queries_do_not_grow_with_the_number_of_runs(admin_client: Any, admin_user: Any) -> None:
    make_run(owner=admin_user)
    admin_client.get(CHANGELIST)  # warm the session and content type caches
    with CaptureQueriesContext(connection) as one_run:
        admin_client.get(CHANGELIST)
    for index in range(5):
        run = make_run(owner=get_user_model().objects.create_user(f"user-{index}"))
        make_step(run, "plan#0")

    with CaptureQueriesContext(connection) as six_runs:
        response = admin_client.get(CHANGELIST)

    assert len(listed_ids(response.content.decode())) == 6
    assert len(six_runs.captured_queries) == len(one_run.captured_queries)


# -- the run detail page ----------------------------------------------------------------------------------------


def test_detail_page_shows_fields_and_the_step_tree(admin_client: Any) -> None:
    run = make_run(status=RunStatus.FAILED, input={"text": "<b>hello</b>"}, error={"type": "StepFailed"})
    # Checkpoints are written when a step ends, so a child's row comes before its parent's.
    make_step(run, "plan#0/search#0/fetch#0")
    make_step(run, "plan#0/search#0", cached=True)
    make_step(run, "plan#0")
    make_step(
        run, "answer#0", status="failed", attempts=3, error={"type": "ValueError", "message": "bad <input>"}
    )

    response = admin_client.get(change_url(run))

    assert response.status_code == 200
    html = response.content.decode()
    steps = re.findall(
        r'<tr class="agentflow-step" data-depth="(\d)">\s*<td style="padding-left: ([\d.]+)em"><code>([^<]+)</code>',
        html,
    )
    assert steps == [
        ("0", "0.0", "plan#0"),
        ("1", "1.5", "plan#0/search#0"),
        ("2", "3.0", "plan#0/search#0/fetch#0"),
        ("0", "0.0", "answer#0"),
    ]
    assert "ValueError: bad &lt;input&gt;" in html
    assert "1.5 s" in html
    # input is pretty-printed JSON, escaped.
    assert "&quot;text&quot;: &quot;&lt;b&gt;hello&lt;/b&gt;&quot;" in html
    assert "<b>hello</b>" not in html
    # Read-only: a detail page without save buttons, but runs may be deleted.
    assert 'name="_save"' not in html
    assert reverse("admin:agentflow_workflowrun_delete", args=[run.pk]) in html


def test_detail_page_escapes_step_errors(admin_client: Any) -> None:
    run = make_run(status=RunStatus.FAILED)
    make_step(run, "evil#0", status="failed", error={"type": "Boom", "message": "<script>alert(1)</script>"})

    html = admin_client.get(change_url(run)).content.decode()

    assert "Boom: &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" not in html


def test_detail_page_shows_archived_events(admin_client: Any) -> None:
    # No stream exists for a fresh uuid, so history() reads the DB archive.
    run = make_run(status=RunStatus.COMPLETED)
    make_event(run, 1000, "run.started", epoch=1)
    make_event(run, 1001, "step.completed", step="plan#0", attempt=1, epoch=1, data={"note": "<img src=x>"})
    make_event(run, 1002, "run.completed", epoch=1, data={"duration_seconds": 1.5})

    html = admin_client.get(change_url(run)).content.decode()

    events = re.findall(
        r'<tr class="agentflow-event">\s*<td><code>([^<]+)</code></td>\s*<td>([^<]+)</td>', html
    )
    assert events == [("1000-0", "run.started"), ("1001-0", "step.completed"), ("1002-0", "run.completed")]
    assert "Events (3)" in html
    assert "{&quot;note&quot;:&quot;&lt;img src=x&gt;&quot;}" in html
    assert "<img src=x>" not in html


def test_detail_page_survives_a_redis_outage(admin_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    def down(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr("agentflow.archive.history_before", down)
    run = make_run()
    make_step(run, "plan#0")

    response = admin_client.get(change_url(run))

    assert response.status_code == 200
    html = response.content.decode()
    assert "The events could not be read: ConnectionError: Connection refused" in html
    assert "plan#0" in html


# -- permissions and actions ------------------------------------------------------------------------------------


def test_runs_cannot_be_added_or_edited(admin_client: Any) -> None:
    run = make_run()

    assert admin_client.get(reverse("admin:agentflow_workflowrun_add")).status_code == 403
    assert admin_client.post(change_url(run), {"workflow": "changed"}).status_code == 403
    run.refresh_from_db()
    assert run.workflow == "summarize"


def test_runs_can_be_deleted(admin_client: Any) -> None:
    run = make_run()

    response = admin_client.post(
        reverse("admin:agentflow_workflowrun_delete", args=[run.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not WorkflowRun.objects.filter(pk=run.pk).exists()


def test_cancel_action_cancels_queued_runs(
    admin_client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    queued = make_run()
    running = make_run(status=RunStatus.RUNNING, started_at=timezone.now())
    done = make_run(status=RunStatus.COMPLETED)

    # Executing the callbacks appends the queued run's run.cancelled event to Redis, as in production.
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            CHANGELIST,
            {"action": "cancel_runs", "_selected_action": [str(queued.pk), str(running.pk), str(done.pk)]},
            follow=True,
        )

    assert response.status_code == 200
    for run in (queued, running, done):
        run.refresh_from_db()
    assert queued.status == RunStatus.CANCELLED
    assert queued.cancel_requested
    # cancel() gave the queued run its terminal event on commit, and it was archived.
    assert RunEvent.objects.filter(run=queued, type="run.cancelled").exists()
    assert running.status == RunStatus.RUNNING
    assert running.cancel_requested
    assert done.status == RunStatus.COMPLETED
    assert not done.cancel_requested
    html = response.content.decode()
    assert "Cancelled 1 run." in html
    assert "Asked 1 running run to stop at its next step." in html
    assert "1 run had already finished." in html


def test_cancel_action_needs_the_change_permission(client: Any) -> None:
    from django.contrib.auth.models import Permission

    viewer = get_user_model().objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    client.force_login(viewer)

    html = client.get(CHANGELIST).content.decode()

    assert "cancel_runs" not in html


# -- steps ------------------------------------------------------------------------------------------------------


def test_step_changelist_filters_and_searches_by_run_id(admin_client: Any) -> None:
    run, other = make_run(), make_run()
    make_step(run, "plan#0", cached=True)
    make_step(other, "plan#0")
    make_step(other, "answer#0", status="failed")
    url = reverse("admin:agentflow_steprun_changelist")

    def rows(params: dict[str, str]) -> list[str]:
        response = admin_client.get(url, params)
        assert response.status_code == 200
        return re.findall(r'<th class="field-step_id"><a href="[^"]*">([^<]+)</a>', response.content.decode())

    assert sorted(rows({})) == ["answer#0", "plan#0", "plan#0"]
    assert rows({"q": str(run.pk)}) == ["plan#0"]
    assert rows({"q": "answer"}) == ["answer#0"]
    assert rows({"status__exact": "failed"}) == ["answer#0"]
    assert rows({"cached__exact": "1"}) == ["plan#0"]
    step = StepRun.objects.get(run=other, step_id="answer#0")
    assert admin_client.get(reverse("admin:agentflow_steprun_change", args=[step.pk])).status_code == 200


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, None),
        (0.35, "350 ms"),
        (1.23, "1.2 s"),
        (59.9, "59.9 s"),
        (59.96, "1 min 0 s"),
        (184, "3 min 4 s"),
        (7500, "2 h 5 min"),
    ],
)
def test_format_duration(seconds: float | None, text: str | None) -> None:
    assert agentflow_admin.format_duration(seconds) == text


def test_step_tree_orders_siblings_by_start_and_keeps_orphans() -> None:
    run = make_run()
    start = timezone.now()
    # Parallel siblings finish out of order; "lost#0"'s parent has no checkpoint (the run is still going).
    make_step(run, "map#0/fetch#1", started_at=start + timedelta(seconds=2))
    make_step(run, "map#0/fetch#0", started_at=start + timedelta(seconds=1))
    make_step(run, "map#0", started_at=start)
    make_step(run, "running#0/lost#0", started_at=start + timedelta(seconds=3))

    rows = agentflow_admin.step_tree(list(run.steps.all()))

    assert [(row.step.step_id, row.depth) for row in rows] == [
        ("map#0", 0),
        ("map#0/fetch#0", 1),
        ("map#0/fetch#1", 1),
        ("running#0/lost#0", 1),
    ]


# -- tokens, cost and budgets -----------------------------------------------------------------------------------


def usage(calls: int, prompt: int, completion: int, cost: float, **extra: Any) -> dict[str, Any]:
    """A usage dict as the engine writes it (agentflow.core.usage)."""
    return {
        "calls": calls,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": cost,
        **extra,
    }


def listed_in_order(html: str) -> list[str]:
    return re.findall(r'<th class="field-short_id"><a href="[^"]*">([0-9a-f]{8})</a>', html)


def test_changelist_shows_and_sorts_by_tokens_and_cost(admin_client: Any) -> None:
    big = make_run(usage=usage(3, 9000, 3345, 0.0123))
    small = make_run(usage=usage(1, 40, 2, 0.000042))
    unpriced = make_run(usage=usage(2, 100, 20, 0.0, unpriced_calls=2))
    idle = make_run()  # no provider call: usage {}

    html = admin_client.get(CHANGELIST).content.decode()

    cells = dict(
        zip(
            listed_in_order(html),
            re.findall(r'<td class="field-tokens">([^<]*)</td><td class="field-cost">([^<]*)</td>', html),
            strict=True,
        )
    )
    assert cells == {
        short(big): ("12,345", "$0.0123"),
        short(small): ("42", "$0.000042"),
        short(unpriced): ("120", "2 unpriced calls"),
        short(idle): ("-", "-"),
    }
    columns = agentflow_admin.WorkflowRunAdmin.list_display
    by_tokens = str(columns.index("tokens") + 1)
    by_cost = str(columns.index("cost") + 1)
    most_tokens = listed_in_order(admin_client.get(CHANGELIST, {"o": f"-{by_tokens}"}).content.decode())
    cheapest = listed_in_order(admin_client.get(CHANGELIST, {"o": by_cost}).content.decode())
    assert most_tokens == [short(big), short(unpriced), short(small), short(idle)]
    # A run without usage sorts as zero, not as NULL (which PostgreSQL would put first in a descending sort).
    assert cheapest[2:] == [short(small), short(big)]


def test_changelist_filters_by_spending(admin_client: Any) -> None:
    budgeted = make_run(budget={"usd": 1.0}, usage=usage(1, 10, 10, 0.01))
    stopped = make_run(
        status=RunStatus.FAILED,
        budget={"tokens": 100},
        usage=usage(2, 80, 40, 0.0),
        error={"type": "BudgetExceeded", "code": "budget_exceeded", "message": "spent 120 tokens"},
    )
    unpriced = make_run(usage=usage(1, 10, 10, 0.0, unpriced_calls=1))
    make_run(status=RunStatus.FAILED, error={"type": "ValueError", "message": "no"})

    def spending(value: str) -> set[str]:
        response = admin_client.get(CHANGELIST, {"spending": value})
        assert response.status_code == 200
        return listed_ids(response.content.decode())

    assert spending("budget") == {short(budgeted), short(stopped)}
    assert spending("exceeded") == {short(stopped)}
    assert spending("unpriced") == {short(unpriced)}
    assert "?spending=exceeded" in admin_client.get(CHANGELIST).content.decode()


def test_detail_page_shows_usage_by_model_budget_and_each_steps_spending(admin_client: Any) -> None:
    by_model = {
        "gpt-4o-mini": usage(2, 1000, 200, 0.00027),
        "local-llama": {**usage(1, 500, 100, 0.0), "cost_usd": None},
    }
    run = make_run(
        status=RunStatus.COMPLETED,
        usage=usage(3, 1500, 300, 0.00027, unpriced_calls=1, by_model=by_model),
        budget={"usd": 0.001, "tokens": 7200},
    )
    make_step(run, "plan#0")  # no provider call of its own
    make_step(
        run,
        "plan#0/openai.chat#0",
        usage={
            **usage(1, 500, 100, 0.00009),
            "provider": "backup",
            "model": "gpt-4o-mini-2024-07-18",
            "fallbacks": [
                {
                    "provider": "primary",
                    "model": "gpt-4o-mini",
                    "error": {"type": "RateLimitError", "message": "slow down", "status": 429},
                }
            ],
        },
    )
    make_step(run, "plan#0/openai.chat#1", usage={**usage(1, 500, 100, 0.00018), "provider": "primary"})

    response = admin_client.get(change_url(run))

    assert response.status_code == 200
    html = response.content.decode()
    assert "3 calls · 1,800 tokens (1,500 prompt + 300 completion) · $0.00027 + 1 unpriced call" in html
    models = re.findall(
        r"<tr><td><code>([^<]+)</code></td><td>(\d+)</td><td>([\d,]+)</td><td>([\d,]+)</td><td>([\d,]+)</td>"
        r"<td>([^<]+)</td></tr>",
        html,
    )
    assert models == [
        ("gpt-4o-mini", "2", "1,000", "200", "1,200", "$0.00027"),
        ("local-llama", "1", "500", "100", "600", "unpriced"),
    ]
    assert "$0.001 (27% spent) · 7,200 tokens (25% spent)" in html
    steps = re.findall(
        r'<tr class="agentflow-step" data-depth="\d">\s*<td[^>]*><code>([^<]+)</code>.*?'
        r'<td class="agentflow-tokens">([^<]*)</td>\s*<td class="agentflow-cost">([^<]*)</td>\s*'
        r'<td class="agentflow-provider">(.*?)</td>',
        html,
        re.S,
    )
    assert [
        (step_id, tokens, cost, " ".join(provider.split())) for step_id, tokens, cost, provider in steps
    ] == [
        ("plan#0", "", "", ""),
        (
            "plan#0/openai.chat#0",
            "600",
            "$0.00009",
            'backup / gpt-4o-mini-2024-07-18 <div class="agentflow-fallback">failed: primary (gpt-4o-mini): '
            "RateLimitError 429</div>",
        ),
        ("plan#0/openai.chat#1", "600", "$0.00018", "primary"),
    ]


def test_detail_page_without_usage_or_budget(admin_client: Any) -> None:
    run = make_run()
    make_step(run, "plan#0")

    html = admin_client.get(change_url(run)).content.decode()

    assert "No provider call." in html
    assert re.search(r'<div class="readonly">None</div>', html)  # the budget


def test_detail_page_escapes_model_and_provider_names(admin_client: Any) -> None:
    evil = "<script>alert(1)</script>"
    run = make_run(usage=usage(1, 1, 1, 0.0, by_model={evil: usage(1, 1, 1, 0.0)}))
    make_step(
        run,
        "openai.chat#0",
        usage={
            **usage(1, 1, 1, 0.0),
            "provider": "<img src=x onerror=alert(2)>",
            "model": evil,
            "fallbacks": [
                {"provider": evil, "model": "<b>m</b>", "error": {"type": "<i>E</i>", "message": ""}}
            ],
        },
    )

    html = admin_client.get(change_url(run)).content.decode()

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;b&gt;m&lt;/b&gt;" in html and "&lt;i&gt;E&lt;/i&gt;" in html
    for raw in (evil, "<img src=x", "<b>m</b>", "<i>E</i>"):
        assert raw not in html


def test_step_page_shows_its_usage(admin_client: Any) -> None:
    run = make_run()
    step = make_step(run, "openai.chat#0", usage={**usage(1, 7, 5, 0.0), "provider": "primary"})

    html = admin_client.get(reverse("admin:agentflow_steprun_change", args=[step.pk])).content.decode()

    assert "&quot;provider&quot;: &quot;primary&quot;" in html


@pytest.mark.parametrize(
    ("usd", "text"),
    [
        (None, "unpriced"),
        (0.0, "$0.00"),
        (0.5, "$0.50"),
        (0.0123, "$0.0123"),
        (1.5e-07, "$0.00000015"),
        (1234.567, "$1,234.57"),
    ],
)
def test_format_cost(usd: float | None, text: str) -> None:
    assert agentflow_admin.format_cost(usd) == text
