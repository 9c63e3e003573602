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
