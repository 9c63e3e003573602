"""``manage.py agentflow start/tail/runs/show/cancel/resume`` against a live worker and the fake LLM server: what
they print and their exit status (0 only for a completed run)."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

import agentflow
from agentflow import archive, client_state
from agentflow.conf import agentflow_settings
from agentflow.models import StepRun, WorkflowRun
from agentflow.testing.fake_openai import FakeOpenAI, FakeOpenAIProcess
from tests.conftest import Worker, running_workers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-cli"


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeOpenAIProcess]:
    with FakeOpenAI.spawn(completion_tokens=10, tokens_per_second=200) as server:
        yield server


@pytest.fixture(scope="module")
def cli_settings(fake_llm: FakeOpenAIProcess) -> dict[str, Any]:
    return {
        "TASK_QUEUE": QUEUE,
        "LLM_PROVIDERS": [{"name": "fake", "base_url": fake_llm.base_url, "api_key": "k"}],
        "LLM_PRICES": {"fake-*": {"input": 0.15, "output": 0.60}},
        "LLM_PROVIDER_FAILURE_THRESHOLD": 1000,
    }


@pytest.fixture(scope="module")
def cli_worker(
    django_db_setup: None, redis_client: redis.Redis, cli_settings: dict[str, Any]
) -> Iterator[Worker]:
    with running_workers(QUEUE, cli_settings, pool="prefork", name="cli") as (worker,):
        yield worker


@pytest.fixture(autouse=True)
def _cli(cli_worker: Worker, cli_settings: dict[str, Any], fake_llm: FakeOpenAIProcess) -> Iterator[None]:
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **cli_settings}):
        fake_llm.reset()
        yield


def agentflow_cli(*args: str, out: io.StringIO | None = None) -> tuple[int, str]:
    """Run ``manage.py agentflow <args>``; its exit status and stdout."""
    out = out if out is not None else io.StringIO()
    try:
        call_command("agentflow", *args, stdout=out)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue()
    return 0, out.getvalue()


def section(output: str, title: str) -> str:
    """The text printed under the rule titled ``title`` (up to the next rule)."""
    match = re.search(rf"^─+ {re.escape(title)} ─+\n(.*?)\n─", output, re.S | re.M)
    assert match, f"no {title!r} section in:\n{output}"
    return match.group(1)


def test_start_follow_streams_the_run_and_prints_its_text_exactly_once(fake_llm: FakeOpenAIProcess) -> None:
    fake_llm.fail({"drop_after_chunks": 5}, model="fake-model")  # the outline's first stream is cut
    story = {"topic": "otters", "sections": 2, "retry_delay_seconds": 0.05}
    status, out = agentflow_cli("start", "story", "--input", json.dumps(story), "--follow")
    run = WorkflowRun.objects.get(pk=re.search(r"Started run (\S+) of workflow story", out).group(1))
    assert status == 0 and run.status == "completed"
    assert "» Outlining (0%)" in out and "» Done (100%)" in out
    assert re.search(r"↻ outline#0 attempt 1 failed: \w+.*next attempt in [\d.]+ s", out)
    assert "(void: " in out  # the cut attempt's printed text is declared void
    assert "✓ write_section#1 completed" in out
    # The summary shows the run's text as the reducer rebuilt it: exactly the output, once.
    assert section(out, "output text") == run.output["outline"]
    for label, text in run.output["sections"].items():
        assert section(out, label) == text
    assert re.search(r"usage: 3 calls, [\d,]+ tokens .*\$0\.0000\d+", out)
    assert f"run {run.pk} completed" in out


def test_tail_of_a_failed_run_replays_it_and_exits_1() -> None:
    run = agentflow.start("fails", {"tag": uuid.uuid4().hex})
    status, out = agentflow_cli("tail", str(run.pk), "--timeout", "60")
    assert status == 1
    assert "✗ doomed#0 failed: ValueError: this step always fails" in out
    assert "run.failed" in out and "error: StepFailed: " in out


def test_show_prints_the_step_tree_with_each_failed_attempt_and_the_exit_status(
    fake_llm: FakeOpenAIProcess,
) -> None:
    fake_llm.fail({"drop_after_chunks": 3}, model="fake-section")
    story = {"topic": "badgers", "sections": 2, "section_model": "fake-section", "retry_delay_seconds": 0.05}
    run = agentflow.start("story", story)
    agentflow.wait(run, timeout_seconds=60)
    status, out = agentflow_cli("show", str(run.pk))
    assert status == 0
    assert "workflow story  status completed" in out
    assert re.search(r"outline#0  completed  attempt 1", out)
    # Children under their parents; the cut stream's attempt with its error and retry delay.
    assert re.search(r"write_section#\d  completed  attempt 1\n.*openai\.chat#0  completed  attempt 2", out)
    assert re.search(r"attempt 1 \(epoch 1\) failed: \w+.*, retried after [\d.]+ s", out)
    tree_ids = set(re.findall(r"((?:write_section#\d/)?(?:openai\.chat|outline|write_section)#\d)  ", out))
    assert tree_ids == set(StepRun.objects.filter(run=run).values_list("step_id", flat=True))

    failed = agentflow.start("fails", {"tag": uuid.uuid4().hex})
    with pytest.raises(agentflow.RunFailed):
        agentflow.wait(failed, timeout_seconds=60)
    status, out = agentflow_cli("show", str(failed.pk))
    assert status == 1 and "doomed#0  failed  attempt 1" in out


def test_show_of_a_running_run_exits_4_and_cancel_wait_stops_it() -> None:
    run = agentflow.start("slow", {"tag": uuid.uuid4().hex, "steps": 40, "delay_seconds": 0.1})
    wait_for(lambda: any(e["type"] == "step.completed" for e in archive.history(str(run.pk))), 30, "a step")
    status, out = agentflow_cli("show", str(run.pk))
    assert status == 4 and "status running" in out
    status, out = agentflow_cli("cancel", str(run.pk), "--wait")
    assert status == 0
    assert f"Asked run {run.pk} to stop at its next step." in out and f"Run {run.pk} is cancelled." in out
    with pytest.raises(CommandError, match="is cancelled already") as error:
        agentflow_cli("cancel", str(run.pk))
    assert error.value.returncode == 5


def test_runs_lists_by_status_with_step_counts() -> None:
    run = agentflow.start("three-steps", {"tag": uuid.uuid4().hex})
    agentflow.wait(run, timeout_seconds=60)
    status, out = agentflow_cli("runs", "--status", "completed", "--workflow", "three-steps", "--limit", "5")
    assert status == 0
    row = next(line for line in out.splitlines() if str(run.pk) in line)
    assert re.search(rf"{run.pk}\s+three-steps\s+completed\s+3\s", row)
    with pytest.raises(CommandError, match="unknown status 'finished'"):
        agentflow_cli("runs", "--status", "finished")


def test_resume_follow_shows_only_the_new_incarnation() -> None:
    run = agentflow.start("fails", {"tag": uuid.uuid4().hex})
    with pytest.raises(agentflow.RunFailed):
        agentflow.wait(run, timeout_seconds=60)
    # The final status commits before the terminal event is appended.
    wait_for(lambda: archive.history(str(run.pk))[-1]["type"] == "run.failed", 10, "the terminal event")
    status, out = agentflow_cli("resume", str(run.pk), "--follow")
    assert status == 1  # it fails again: the step always does
    assert f"Resumed run {run.pk} (epoch 2)." in out
    # The failed step runs again: what it emitted before is void (it emitted nothing: nothing dropped).
    assert "run resumed (epoch 3): 1 step run again" in out and "run.started" not in out
    assert out.count("run.failed") == 1
    events = archive.history(str(run.pk))
    assert [e["type"] for e in events].count("run.failed") == 2
    assert client_state.reduce(events)["status"] == "failed"


def test_start_refuses_bad_input_and_unknown_workflows_with_exit_status_5() -> None:
    with pytest.raises(CommandError, match=r"(?s)invalid input.*sections") as error:
        agentflow_cli("start", "story", "--input", '{"topic": "x", "sections": "many"}')
    assert error.value.returncode == 5
    with pytest.raises(CommandError, match="--input is not JSON"):
        agentflow_cli("start", "story", "--input", "{topic")
    with pytest.raises(CommandError, match="no workflow is named 'nope'"):
        agentflow_cli("start", "nope")
    with pytest.raises(CommandError, match="no run has id"):
        agentflow_cli("tail", "not-a-run")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_tail_draws_a_live_progress_bar() -> None:
    story = {"topic": "stoats", "sections": 1, "retry_delay_seconds": 0.05}
    run = agentflow.start("story", story)
    status, out = agentflow_cli("tail", str(run.pk), out=Terminal())
    assert status == 0
    assert "\x1b[" in out and "━" in out and "story: Done" in out  # rich's live view: escape codes, a bar


def test_tail_says_what_input_a_waiting_run_needs_and_exits_4_on_its_timeout() -> None:
    run = agentflow.start("asks-approval", {"tag": uuid.uuid4().hex})
    wait_for(
        lambda: any(e["type"] == "run.waiting" for e in archive.history(str(run.pk))), 30, "the question"
    )
    status, out = agentflow_cli("tail", str(run.pk), "--timeout", "0.5")
    assert status == 4
    assert "? waiting for input 'approve': Publish " in out
    assert f"manage.py agentflow answer {run.pk} approve '<JSON>'" in out
    agentflow.send_input(run, "approve", {"approved": True})
    status, out = agentflow_cli("tail", str(run.pk), "--timeout", "60")
    assert status == 0 and "input.received input:approve" in out
