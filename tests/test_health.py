"""The health report's pieces that need no worker: secrets masked in the settings it shows, the JSON form."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.test import override_settings

from agentflow import health
from agentflow.conf import agentflow_settings


def test_secrets_are_masked_and_other_values_shown() -> None:
    assert health.mask_url("redis://:hunter2@cache:6379/0") == "redis://:********@cache:6379/0"
    assert health.mask_url("redis://user:hunter2@cache/0") == "redis://user:********@cache/0"
    assert health.mask_url("redis://cache:6379/0") == "redis://cache:6379/0"
    providers = [{"name": "openai", "api_key": "sk-live-secret", "base_url": "https://u:pw@llm.example/v1"}]
    overrides = {**agentflow_settings.user_settings, "LLM_PROVIDERS": providers}
    with override_settings(AGENTFLOW=overrides):
        shown = health.effective_settings()["AGENTFLOW"]
    assert shown["LLM_PROVIDERS"] == [
        {"name": "openai", "api_key": "********", "base_url": "https://u:********@llm.example/v1"}
    ]
    assert shown["KEY_PREFIX"] == agentflow_settings.key_prefix  # "KEY" in a name is not a secret
    assert shown["STREAM_TOKEN_TTL_SECONDS"] == agentflow_settings.stream_token_ttl_seconds
    assert "sk-live-secret" not in json.dumps(shown)


@pytest.mark.django_db
def test_doctor_prints_the_report_as_json(redis_client) -> None:
    out = io.StringIO()
    overrides = {**agentflow_settings.user_settings, "TASK_QUEUE": "agentflow-nobody-consumes-this"}
    with override_settings(AGENTFLOW=overrides), pytest.raises(SystemExit) as exited:
        call_command("agentflow", "doctor", "--json", stdout=out)
    assert exited.value.code == 1  # no worker consumes the run queue: an error
    report = json.loads(out.getvalue())
    assert report["status"] == "error"
    assert set(report["checks"]) >= {"database", "redis", "broker", "cache", "workers", "monitor"}
    assert report["settings"]["AGENTFLOW"]["TASK_QUEUE"] == "agentflow-nobody-consumes-this"
