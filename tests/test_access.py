"""Run visibility and stream tokens."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core import signing
from django.test import override_settings

from agentflow.access import can_view, check_stream_token, make_stream_token, visible_runs
from agentflow.conf import agentflow_settings
from agentflow.models import WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def people():
    return (
        User.objects.create_user("alice"),
        User.objects.create_user("bob"),
        User.objects.create_user("root", is_staff=True),
    )


def test_runs_are_visible_to_their_owner_and_staff_only(people):
    alice, bob, staff = people
    mine = WorkflowRun.objects.create(workflow="w", owner=alice)
    ownerless = WorkflowRun.objects.create(workflow="w")
    assert list(visible_runs(alice)) == [mine]
    assert list(visible_runs(bob)) == []
    assert set(visible_runs(staff)) == {mine, ownerless}
    assert list(visible_runs(AnonymousUser())) == []
    assert can_view(alice, mine) and not can_view(bob, mine) and can_view(staff, mine)
    assert not can_view(alice, ownerless) and not can_view(AnonymousUser(), mine)


def test_stream_token_is_bound_to_one_run_and_expires():
    token = make_stream_token("run-1")
    assert check_stream_token(token, "run-1")
    assert not check_stream_token(token, "run-2")
    assert not check_stream_token(token + "x", "run-1")
    assert not check_stream_token("", "run-1") and not check_stream_token(None, "run-1")  # type: ignore[arg-type]
    # A token signed for another purpose is refused even if its payload names the run.
    assert not check_stream_token(signing.dumps({"run": "run-1"}), "run-1")
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "STREAM_TOKEN_TTL_SECONDS": 1e-9}):
        assert not check_stream_token(token, "run-1")
