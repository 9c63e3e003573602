import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agentflow.cli import subcommands


class Command(BaseCommand):
    help = "agentflow's command line: one subcommand per job (see `manage.py agentflow --help`)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", metavar="<subcommand>", required=True)
        for name, module in subcommands().items():
            # The docstring's first paragraph, whatever its line breaks (a summary cut at the first one
            # ended mid-sentence).
            summary = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
            module.add_arguments(sub.add_parser(name, help=summary, description=module.__doc__))

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        status = subcommands()[subcommand].handle(options, self.stdout)
        if status:
            sys.exit(status)
