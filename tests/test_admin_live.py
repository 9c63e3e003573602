"""The admin's live parts, server side: the run page's step count and last event while a run goes on, its latest
events a page at a time going back, cancel and resume buttons, the run list's refresh view, and the config the
page's script reads. (tests/browser/ drives the same pages in Chromium.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from agentflow import admin_live
from agentflow.access import check_stream_token
from agentflow.models import RunStatus, WorkflowRun
from tests.test_admin import make_event, make_run, make_step

pytestmark = pytest.mark.django_db


def change_url(run: WorkflowRun, **query: str) -> str:
    url = reverse("admin:agentflow_workflowrun_change", args=[run.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def readonly(html: str, field: str) -> str:
    match = re.search(
        rf'<div class="form-row field-{field}">.*?<div class="readonly">(.*?)</div>', html, re.S
    )
    assert match, field
    return match.group(1).strip()


def config(html: str) -> dict[str, Any]:
    match = re.search(
        r'<script id="agentflow-page-config" type="application/json">(.*?)</script>', html, re.S
    )
    assert match
    return dict(json.loads(match.group(1)))


def test_a_running_runs_page_counts_its_checkpoints_and_shows_its_last_event(admin_client: Any) -> None:
    run = make_run(status=RunStatus.RUNNING)
    for step in ("a#0", "b#0", "c#0", "d#0"):
        make_step(run, step)
    for ms in range(1000, 1005):
        make_event(run, ms, "status", epoch=1, data={"text": "x"})

    html = admin_client.get(change_url(run)).content.decode()

    # The run list counts checkpoints; so does the page (step_count is only written when the run ends).
    assert run.step_count == 0
    assert readonly(html, "steps_display") == "4"
    assert readonly(html, "last_event") == "1004-0"
    page = config(html)
    assert page["latestPage"] and page["lastEventId"] == "1004-0"
    assert check_stream_token(page["run"]["stream_token"], run.pk)
    assert page["run"]["urls"]["websocket"] == f"/ws/runs/{run.pk}/"
    assert page["run"]["urls"]["self"] == f"/api/runs/{run.pk}/"
    assert set(page["stepExtras"]) == {"a#0", "b#0", "c#0", "d#0"}


def test_the_page_shows_the_latest_events_and_pages_back(admin_client: Any) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    total = admin_live.EVENT_PAGE * 2 + 30
    for ms in range(total):
        make_event(run, 10_000 + ms, "status", epoch=1, data={"text": str(ms)})

    def page_ids(html: str) -> list[int]:
        return [
            int(i.split("-")[0])
            for i in re.findall(r'<tr class="agentflow-event">\s*<td><code>([^<]+)</code>', html)
        ]

    latest = admin_client.get(change_url(run)).content.decode()
    assert page_ids(latest) == list(range(10_000 + total - admin_live.EVENT_PAGE, 10_000 + total))
    older = re.search(r'href="\?events_before=([^"]+)" id="agentflow-events-older"', latest).group(1)
    assert older == f"{10_000 + total - admin_live.EVENT_PAGE}-0"

    second = admin_client.get(change_url(run, events_before=older)).content.decode()
    assert page_ids(second) == list(range(10_000 + 30, 10_000 + 30 + admin_live.EVENT_PAGE))
    assert not config(second)["latestPage"]  # an older page takes no live rows
    third_link = re.search(r'href="\?events_before=([^"]+)" id="agentflow-events-older"', second).group(1)
    third = admin_client.get(change_url(run, events_before=third_link)).content.decode()
    assert page_ids(third) == list(range(10_000, 10_030))
    assert 'id="agentflow-events-older"' not in third
    # A mangled link shows the latest page.
    assert page_ids(admin_client.get(change_url(run, events_before="junk")).content.decode()) == page_ids(
        latest
    )


def test_cancel_and_resume_buttons(admin_client: Any, django_capture_on_commit_callbacks: Any) -> None:
    run = make_run()  # queued
    html = admin_client.get(change_url(run)).content.decode()
    assert re.search(r'<li data-agentflow-when="queued,running,waiting"\s+class', html)  # shown
    assert re.search(r'<li data-agentflow-when="failed,cancelled" hidden', html)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:agentflow_workflowrun_cancel", args=[run.pk]), follow=True
        )
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and "Cancelled the run." in response.content.decode()

    epoch = run.epoch
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:agentflow_workflowrun_resume", args=[run.pk]), follow=True
        )
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.epoch == epoch + 1
    assert f"Resumed the run from its last checkpoint (epoch {epoch + 1})." in response.content.decode()

    response = admin_client.post(reverse("admin:agentflow_workflowrun_resume", args=[run.pk]), follow=True)
    assert "only a failed or cancelled run can be resumed" in response.content.decode()
    assert admin_client.get(reverse("admin:agentflow_workflowrun_cancel", args=[run.pk])).status_code == 405


def test_buttons_need_the_change_permission(client: Any) -> None:
    viewer = get_user_model().objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    client.force_login(viewer)
    run = make_run()

    assert "agentflow-cancel" not in client.get(change_url(run)).content.decode()
    assert client.post(reverse("admin:agentflow_workflowrun_cancel", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED


def test_the_run_list_refresh_view_renders_the_cells_of_the_rows_asked(admin_client: Any) -> None:
    running = make_run(status=RunStatus.RUNNING)
    make_step(running, "a#0")
    make_step(running, "b#0")
    done = make_run(status=RunStatus.COMPLETED, last_event_id="5-0")
    url = reverse("admin:agentflow_workflowrun_live")

    rows = admin_client.get(url, {"id": [str(running.pk), str(done.pk), "not-a-uuid"]}).json()["rows"]

    assert set(rows) == {str(running.pk), str(done.pk)}
    assert rows[str(running.pk)]["active"] and not rows[str(done.pk)]["active"]
    assert rows[str(running.pk)]["cells"]["steps"] == "2"
    assert ">Running</span>" in rows[str(running.pk)]["cells"]["status_display"]
    assert rows[str(done.pk)]["cells"]["last_event"] == "5-0"

    list_html = admin_client.get(reverse("admin:agentflow_workflowrun_changelist")).content.decode()
    assert "agentflow/admin_runs.js" in list_html and url in list_html
    assert '<td class="field-last_event">5-0</td>' in list_html


def test_the_run_list_refresh_view_needs_the_view_permission(client: Any) -> None:
    staff = get_user_model().objects.create_user("staff", is_staff=True)
    client.force_login(staff)
    response = client.get(reverse("admin:agentflow_workflowrun_live"), {"id": str(make_run().pk)})
    assert response.status_code == 403
