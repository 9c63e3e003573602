import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agentflow.cli import subcommands


class Command(BaseCommand):
    help = "agentflow's command line: one subcommand per job (see `manage.py agentflow --help`)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", metavar="<subcommand>", required=True)
        for name, module in subcommands().items():
            summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
            module.add_arguments(sub.add_parser(name, help=summary, description=module.__doc__))

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        status = subcommands()[subcommand].handle(options, self.stdout)
        if status:
            sys.exit(status)
