"""Tokens, cost and budgets in the REST API: a run's ``usage`` and ``budget``, each step's ``usage``, a
workflow's totals over the runs its caller may see, and their OpenAPI schema.

Most tests write rows with the ORM (the shapes the engine writes: agentflow.core.usage); the last ones run
real workflows through the engine against the fake OpenAI server in its own process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from agentflow.conf import agentflow_settings
from agentflow.models import StepRun, WorkflowRun
from agentflow.testing import inline_executor
from agentflow.testing.fake_openai import FakeOpenAIProcess
from tests.api.conftest import start_url, url

ZERO_USAGE = {
    "calls": 0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "total_tokens": 0,
    "cost_usd": 0.0,
    "unpriced_calls": 0,
    "estimated_calls": 0,
    "by_model": {},
}

# A run's totals as the engine writes them: one priced model, one without a price (cost_usd None).
RUN_USAGE = {
    "calls": 3,
    "prompt_tokens": 300,
    "completion_tokens": 60,
    "total_tokens": 360,
    "cost_usd": 0.00012,
    "unpriced_calls": 1,
    "estimated_calls": 1,
    "by_model": {
        "gpt-4o-mini": {
            "calls": 2,
            "prompt_tokens": 200,
            "completion_tokens": 40,
            "total_tokens": 240,
            "cost_usd": 0.00012,
        },
        "local-llama": {
            "calls": 1,
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "cost_usd": None,
        },
    },
}

FALLBACK = {
    "provider": "primary",
    "model": "gpt-4o-mini",
    "error": {"type": "RateLimitError", "message": "Error code: 429", "status": 429},
}

# A call step's usage as the LLM layer writes it: the sums, then the provider that answered, the model as
# that provider names it, and the providers that failed first.
STEP_USAGE = {
    "calls": 1,
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "total_tokens": 120,
    "cost_usd": 0.00006,
    "by_model": {
        "gpt-4o-mini-2024-07-18": {
            "calls": 1,
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "cost_usd": 0.00006,
        }
    },
    "provider": "backup",
    "model": "gpt-4o-mini-2024-07-18",
    "fallbacks": [FALLBACK],
}


def step(run: WorkflowRun, step_id: str, **fields: Any) -> StepRun:
    fields.setdefault("component", step_id.rsplit("/", 1)[-1].split("#")[0])
    fields.setdefault("status", "completed")
    fields.setdefault("parent_id", step_id.rsplit("/", 1)[0] if "/" in step_id else None)
    return StepRun.objects.create(run=run, step_id=step_id, **fields)


# -- runs -------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_run_without_llm_calls_has_zero_usage_and_no_budget(api, alice, make_run):
    run = make_run(alice, status="completed")  # usage is {} in the database
    step(run, "a#0")

    detail = api.get(url("run-detail", run.pk)).json()
    (listed,) = api.get(url("run-list")).json()["results"]

    assert detail["usage"] == listed["usage"] == ZERO_USAGE
    assert detail["budget"] is None and listed["budget"] is None
    assert detail["steps"][0]["usage"] is None


@pytest.mark.django_db
def test_a_run_shows_its_usage_budget_and_each_steps_usage(api, alice, make_run):
    run = make_run(alice, status="completed", usage=RUN_USAGE, budget={"usd": 0.5})
    step(run, "plan#0/openai.chat#0", usage=STEP_USAGE)
    # A call that every provider refused: no tokens, but the failures are there.
    step(
        run,
        "plan#0/openai.chat#1",
        status="failed",
        usage={"fallbacks": [FALLBACK]},
        error={"type": "RateLimitError", "message": "Error code: 429"},
    )
    step(run, "plan#0")  # a component without provider calls of its own: its children have them

    detail = api.get(url("run-detail", run.pk)).json()
    (listed,) = api.get(url("run-list")).json()["results"]

    assert detail["usage"] == listed["usage"] == RUN_USAGE
    assert detail["budget"] == listed["budget"] == {"usd": 0.5, "tokens": None}
    steps = {item["step_id"]: item["usage"] for item in detail["steps"]}
    assert steps["plan#0/openai.chat#0"] == {
        **STEP_USAGE,
        "unpriced_calls": 0,
        "estimated_calls": 0,
        "skipped": [],
    }
    assert steps["plan#0/openai.chat#1"] == {
        **ZERO_USAGE,
        "provider": None,
        "model": None,
        "skipped": [],
        "fallbacks": [FALLBACK],
    }
    assert steps["plan#0"] is None


@pytest.mark.django_db
def test_a_token_budget_keeps_both_keys(api, alice, make_run):
    run = make_run(alice, budget={"tokens": 1000})
    assert api.get(url("run-detail", run.pk)).json()["budget"] == {"usd": None, "tokens": 1000}


@pytest.mark.django_db
def test_a_run_stopped_by_its_budget(api, alice, make_run):
    error = {
        "type": "BudgetExceeded",
        "message": "run spent $0.050100, reaching its budget of $0.05",
        "code": "budget_exceeded",
        "details": {
            "limit": "usd",
            "budget": {"usd": 0.05},
            "usage": {"calls": 3, "total_tokens": 900, "cost_usd": 0.0501},
        },
    }
    usage = {
        "calls": 3,
        "prompt_tokens": 600,
        "completion_tokens": 300,
        "total_tokens": 900,
        "cost_usd": 0.0501,
    }
    run = make_run(alice, status="failed", usage=usage, budget={"usd": 0.05}, error=error)

    body = api.get(url("run-detail", run.pk)).json()

    assert body["status"] == "failed"
    assert body["error"] == error
    assert body["budget"] == {"usd": 0.05, "tokens": None}
    assert body["usage"] == {**ZERO_USAGE, **usage}
    # The same run in a list, filtered like a client looking for failures.
    (listed,) = api.get(url("run-list"), {"status": "failed"}).json()["results"]
    assert listed["error"]["code"] == "budget_exceeded"


# -- a workflow's totals ----------------------------------------------------------------------------------------


def usage_of(total_tokens: int, cost_usd: float, calls: int = 1, unpriced: int = 0) -> dict[str, Any]:
    prompt = total_tokens // 2
    return {
        "calls": calls,
        "prompt_tokens": prompt,
        "completion_tokens": total_tokens - prompt,
        "total_tokens": total_tokens,
        "cost_usd": cost_usd,
        "by_model": {},
        **({"unpriced_calls": unpriced, "estimated_calls": unpriced} if unpriced else {}),
    }


@pytest.mark.django_db
def test_workflow_totals_count_only_the_runs_the_user_may_see(client_for, alice, bob, staff, make_run):
    make_run(alice, usage=usage_of(100, 0.001))
    make_run(alice, usage=usage_of(50, 0.0005, calls=2, unpriced=1), status="running")
    make_run(alice)  # no call yet: counted as a run, with zeros
    make_run(alice, workflow="api-gated", usage=usage_of(7000, 1.0))  # another workflow
    make_run(bob, usage=usage_of(1000, 0.01))
    make_run(None, usage=usage_of(10, 0.0001))  # started from Python: staff only
    detail = url("workflow-detail", "api-echo")

    mine = client_for(alice).get(detail).json()["usage"]
    bobs = client_for(bob).get(detail).json()["usage"]
    everyone = client_for(staff).get(detail).json()["usage"]

    assert mine == {
        "runs": 3,
        "calls": 3,
        "prompt_tokens": 75,
        "completion_tokens": 75,
        "total_tokens": 150,
        "cost_usd": pytest.approx(0.0015),
        "unpriced_calls": 1,
        "estimated_calls": 1,
    }
    assert (bobs["runs"], bobs["total_tokens"], bobs["cost_usd"]) == (1, 1000, pytest.approx(0.01))
    assert everyone["runs"] == 5
    assert everyone["total_tokens"] == 150 + 1000 + 10
    assert everyone["cost_usd"] == pytest.approx(0.0015 + 0.01 + 0.0001)
    # The list of workflows has no totals (one query per workflow would not scale).
    assert "usage" not in client_for(alice).get(url("workflow-list")).json()[0]


@pytest.mark.django_db
def test_workflow_totals_are_zeros_without_runs(api):
    assert api.get(url("workflow-detail", "api-echo")).json()["usage"] == {
        "runs": 0,
        "calls": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": 0.0,
        "unpriced_calls": 0,
        "estimated_calls": 0,
    }


@pytest.mark.django_db
def test_workflow_totals_are_one_query_however_many_runs(api, alice, make_run):
    make_run(alice, usage=usage_of(10, 0.0001))
    detail = url("workflow-detail", "api-echo")
    with CaptureQueriesContext(connection) as one_run:
        assert api.get(detail).json()["usage"]["runs"] == 1
    for _ in range(9):
        make_run(alice, usage=usage_of(10, 0.0001))

    with CaptureQueriesContext(connection) as ten_runs:
        body = api.get(detail).json()

    assert (body["usage"]["runs"], body["usage"]["total_tokens"]) == (10, 100)
    assert len(ten_runs.captured_queries) == len(one_run.captured_queries)
    (aggregate,) = [q["sql"] for q in ten_runs.captured_queries if "SUM(" in q["sql"].upper()]
    assert "agentflow_workflowrun" in aggregate


# -- the OpenAPI schema -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_schema_describes_usage_and_budget(anonymous):
    doc = anonymous.get("/api/schema/", {"format": "json"}).json()
    schemas = doc["components"]["schemas"]

    def ref(name: str) -> list[dict[str, str]]:
        return [{"$ref": f"#/components/schemas/{name}"}]

    run, steps = schemas["Run"]["properties"], schemas["Step"]["properties"]
    assert run["usage"]["allOf"] == ref("Usage") and not run["usage"].get("nullable")
    assert run["budget"]["allOf"] == ref("Budget") and run["budget"]["nullable"] is True
    assert schemas["RunDetail"]["properties"]["usage"]["allOf"] == ref("Usage")
    assert steps["usage"]["allOf"] == ref("StepUsage") and steps["usage"]["nullable"] is True
    keys = {
        "calls", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "unpriced_calls",
        "estimated_calls",
    }  # fmt: skip
    assert set(schemas["Usage"]["required"]) == keys | {"by_model"}
    assert schemas["Usage"]["properties"]["by_model"]["additionalProperties"] == ref("ModelUsage")[0]
    assert schemas["ModelUsage"]["properties"]["cost_usd"]["nullable"] is True
    assert set(schemas["StepUsage"]["required"]) == keys | {
        "by_model",
        "provider",
        "model",
        "skipped",
        "fallbacks",
    }
    assert schemas["StepUsage"]["properties"]["fallbacks"]["items"] == ref("Fallback")[0]
    assert set(schemas["Budget"]["required"]) == {"usd", "tokens"}
    workflow = doc["paths"]["/api/workflows/{name}/"]["get"]["responses"]["200"]
    assert workflow["content"]["application/json"]["schema"] == ref("WorkflowDetail")[0]
    assert schemas["WorkflowDetail"]["properties"]["usage"]["allOf"] == ref("WorkflowUsage")
    assert set(schemas["WorkflowUsage"]["required"]) == keys | {"runs"}


# -- real runs --------------------------------------------------------------------------------------------------

PRICES = {"fake-model": {"input": 1.0, "output": 2.0}}  # USD per million tokens


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAIProcess]:
    with FakeOpenAIProcess(completion_tokens=12) as server:
        yield server


@pytest.fixture
def llm_settings(fake_server: FakeOpenAIProcess) -> Iterator[FakeOpenAIProcess]:
    """Two providers on the fake server (told apart by their keys), priced, runs executed inline."""
    fake_server.reset()
    providers = [
        {"name": "primary", "base_url": fake_server.base_url, "api_key": "key-primary"},
        {"name": "backup", "base_url": fake_server.base_url, "api_key": "key-backup"},
    ]
    llm = {"LLM_PROVIDERS": providers, "LLM_PRICES": PRICES, "LLM_STREAM_COALESCE_SECONDS": 0}
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **llm}), inline_executor():
        yield fake_server


def start(api, workflow: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(start_url(workflow), body, format="json")
    assert response.status_code == 202, response.content
    # The inline executor ran it to the end when the request's transaction committed.
    return dict(api.get(url("run-detail", response.json()["id"])).json())


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_run_with_a_fallback(api, llm_settings):
    # The first request (primary's) fails with a 500: the call moves on to the backup provider at once.
    llm_settings.fail({"status": 500, "times": 1})

    run = start(api, "llm-chats", {"providers": ["primary", "backup"], "model": "fake-model", "calls": 2})

    assert run["status"] == "completed", run["error"]
    stats = llm_settings.stats()
    assert (stats["requests"], stats["faults_injected"]) == (3, 1)
    served = stats["by_key"]
    prompt = sum(served[key]["prompt_tokens"] for key in served)
    completion = sum(served[key]["completion_tokens"] for key in served)
    assert completion == 2 * 12
    cost = round((prompt * 1.0 + completion * 2.0) / 1_000_000, 10)
    model = {
        "calls": 2,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": pytest.approx(cost),
    }
    assert run["usage"] == {
        **model, "unpriced_calls": 0, "estimated_calls": 0, "by_model": {"fake-model": model}
    }  # fmt: skip
    assert run["budget"] is None
    calls = {item["step_id"]: item["usage"] for item in run["steps"]}
    assert set(calls) == {"openai.chat#0", "openai.chat#1"}
    first, second = calls["openai.chat#0"], calls["openai.chat#1"]
    assert (first["provider"], first["model"], first["calls"]) == ("backup", "fake-model", 1)
    assert [(f["provider"], f["model"], f["error"]["status"]) for f in first["fallbacks"]] == [
        ("primary", "fake-model", 500)
    ]
    assert (second["provider"], second["fallbacks"]) == ("primary", [])
    assert first["total_tokens"] + second["total_tokens"] == prompt + completion

    totals = api.get(url("workflow-detail", "llm-chats")).json()["usage"]
    assert totals == {
        "runs": 1,
        "calls": 2,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": pytest.approx(cost),
        "unpriced_calls": 0,
        "estimated_calls": 0,
    }


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_run_stopped_by_its_budget(api, llm_settings):
    # A little over $0.03 a call (12 completion tokens at $2,500 per million, plus a short prompt): the
    # workflow's $0.05 budget is reached by its second call, so a third is never sent.
    prices = {"fake-model": {"input": 100.0, "output": 2500.0}}
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "LLM_PRICES": prices}):
        run = start(api, "llm-chats-budgeted", {"providers": ["primary"], "model": "fake-model", "calls": 5})

    assert run["status"] == "failed"
    assert run["budget"] == {"usd": 0.05, "tokens": None}
    assert run["error"]["code"] == "budget_exceeded"
    assert run["error"]["details"]["limit"] == "usd"
    assert "traceback" not in run["error"]
    assert run["usage"]["calls"] == 2 == llm_settings.stats()["requests"]
    assert run["usage"]["cost_usd"] >= 0.05
    assert [item["step_id"] for item in run["steps"]] == ["openai.chat#0", "openai.chat#1"]
