from typing import Any

from django.core.management.base import BaseCommand, CommandError

from agentflow.conf import agentflow_settings
from agentflow.retention import prune


class Command(BaseCommand):
    help = (
        "Delete finished runs older than RETENTION_DAYS (with their steps and events), and archived events "
        "older than EVENT_RETENTION_DAYS, in batches. Active runs are never deleted."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )
        parser.add_argument("--batch-size", type=int, default=1000, help="Rows per batch (transaction).")

    def handle(self, *args: Any, dry_run: bool = False, batch_size: int = 1000, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if agentflow_settings.retention_days is None and agentflow_settings.event_retention_days is None:
            self.stdout.write("RETENTION_DAYS and EVENT_RETENTION_DAYS are None: nothing is ever pruned.")
        result = prune(batch_size=batch_size, dry_run=dry_run)
        counts = " ".join(f"{key}={value}" for key, value in result.as_dict().items() if key != "batches")
        self.stdout.write(
            f"would delete {counts}" if dry_run else f"deleted {counts} batches={result.batches}"
        )
