"""``manage.py agentflow``: subcommands are the modules of ``agentflow.cli``."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

import agentflow


def test_version_subcommand_prints_the_version() -> None:
    out = io.StringIO()
    call_command("agentflow", "version", stdout=out)
    assert out.getvalue().strip() == agentflow.__version__


def test_unknown_subcommand_is_an_error_naming_the_choices() -> None:
    with pytest.raises(CommandError, match=r"invalid choice: 'nope'.*version"):
        call_command("agentflow", "nope")


def test_the_help_lists_every_subcommand_with_its_whole_summary() -> None:
    from agentflow.cli import subcommands
    from agentflow.management.commands.agentflow import Command

    parser = Command().create_parser("manage.py", "agentflow")
    listed = " ".join(parser.format_help().split())  # argparse wraps the summaries: compare without breaks
    for name, module in subcommands().items():
        summary = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        assert summary.endswith("."), name
        assert f"{name} {summary}" in listed, name
    # A summary whose docstring wraps is whole, not cut at its first line break.
    assert "a running one at its next step." in listed


@pytest.mark.django_db
def test_answer_subcommand_lists_and_answers_a_runs_input(django_capture_on_commit_callbacks) -> None:
    from agentflow.models import StepRun, WorkflowRun

    run = WorkflowRun.objects.create(workflow="asks-approval", status="waiting", wait_reason="input", epoch=1)
    StepRun.objects.create(
        run=run, step_id="input:go", component="input", status="waiting", attempts=0,
        input={"key": "go", "prompt": "Go?", "schema": {"type": "boolean"}}, output={"timeout_at": None},
    )  # fmt: skip
    out = io.StringIO()
    call_command("agentflow", "answer", str(run.pk), stdout=out)
    assert out.getvalue().splitlines()[:2] == ["go [waiting] Go?", '  schema: {"type": "boolean"}']

    with pytest.raises(SystemExit) as refused:
        call_command("agentflow", "answer", str(run.pk), "go", '"yes"', stdout=(out := io.StringIO()))
    assert (
        refused.value.code == 1
        and "invalid_answer" in out.getvalue()
        and "is not of type 'boolean'" in out.getvalue()
    )
    with pytest.raises(SystemExit) as not_json:
        call_command("agentflow", "answer", str(run.pk), "go", "{nope", stdout=io.StringIO())
    assert not_json.value.code == 2
    with django_capture_on_commit_callbacks():
        call_command("agentflow", "answer", str(run.pk), "go", "true", stdout=(out := io.StringIO()))
    assert out.getvalue().strip() == "answered 'go': true; the run continues"
    assert StepRun.objects.get(run=run, step_id="input:go").output["answer"] is True


def test_line_mode_says_what_a_wait_and_a_resume_are_in_words() -> None:
    from rich.console import Console

    from agentflow.cli._render import Follower
    from agentflow.client_state import apply, new_state

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    events = [
        {"id": "1-0", "type": "run.waiting", "step": None, "attempt": None, "epoch": 1,
         "data": {"reason": "input", "wake_at": None}},
        {"id": "2-0", "type": "run.waiting", "step": None, "attempt": None, "epoch": 1,
         "data": {"reason": "retry", "wake_at": "2026-12-06T10:00:00Z"}},
        {"id": "3-0", "type": "run.resumed", "step": None, "attempt": None, "epoch": 3,
         "data": {"void_steps": ["outline#0"]}},
        {"id": "4-0", "type": "run.recovered", "step": None, "attempt": None, "epoch": 4,
         "data": {"void_steps": ["a#0", "b#0"]}},
    ]  # fmt: skip
    state = new_state()
    with Follower(console, "run-1", "blog-post") as follow:
        for event in events:
            state = apply(state, event)
            follow(event, state)
    lines = out.getvalue().splitlines()
    assert "run waiting (input)" in lines  # no time-out: no "until None"
    assert "run waiting (retry) until 2026-12-06T10:00:00Z" in lines
    assert "run resumed (epoch 3): 1 step run again" in lines
    assert "run recovered (epoch 4): 2 steps run again" in lines
