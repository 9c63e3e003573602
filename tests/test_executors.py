"""Executors other than Celery: in-process threads (the embedded default) and inline (tests)."""

from __future__ import annotations

import uuid

import pytest
from django.test import override_settings

import agentflow
from agentflow.conf import agentflow_settings
from agentflow.executors import CeleryExecutor, InlineExecutor, InProcessExecutor, get_executor
from tests.testapp.workflows import counts


def executor_settings(path: str) -> dict[str, object]:
    return {**agentflow_settings.user_settings, "EXECUTOR": path}


def test_get_executor_follows_the_setting():
    assert isinstance(get_executor(), CeleryExecutor)
    with override_settings(AGENTFLOW=executor_settings("agentflow.executors.InlineExecutor")):
        assert isinstance(get_executor(), InlineExecutor)


@pytest.mark.django_db(transaction=True)
def test_in_process_executor_runs_workflows_on_threads_of_this_process(redis_client):
    tag = uuid.uuid4().hex
    with override_settings(AGENTFLOW=executor_settings("agentflow.executors.InProcessExecutor")):
        assert isinstance(get_executor(), InProcessExecutor)
        runs = [agentflow.start("fan-out", {"tag": f"{tag}-{i}", "n": 4}) for i in range(3)]
        outputs = [agentflow.wait(run, timeout_seconds=30) for run in runs]
    assert outputs == [[0, 1, 4, 9]] * 3
    assert all(counts(f"{tag}-{i}") == {f"square-{x}": 1 for x in range(4)} for i in range(3))
