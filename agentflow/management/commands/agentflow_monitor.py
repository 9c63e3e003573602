import time
from typing import Any

from django.core.management.base import BaseCommand

from agentflow.conf import agentflow_settings
from agentflow.monitor import check_runs


class Command(BaseCommand):
    help = "Recover runs whose worker died, send lost or unsent run messages again, repair missing terminal events."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--loop", action="store_true", help="Keep checking, every --interval seconds.")
        parser.add_argument(
            "--interval", type=float, default=None, help="Seconds between checks with --loop."
        )

    def handle(self, *args: Any, loop: bool = False, interval: float | None = None, **options: Any) -> None:
        interval = interval or agentflow_settings.heartbeat_interval_seconds
        while True:
            report = check_runs()
            if any(report.as_dict().values()) or not loop:
                self.stdout.write(" ".join(f"{key}={value}" for key, value in report.as_dict().items()))
            if not loop:
                return
            time.sleep(interval)
