"""Start a run of a workflow: agentflow start <workflow> --input '<json>' [--follow]."""

from __future__ import annotations

import argparse
import json
from typing import Any

from django.core.management.base import CommandError

from ._follow import EXIT_ERROR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", help="the workflow's registered name")
    parser.add_argument("--input", default="{}", help="the run's input as a JSON object (default {})")
    parser.add_argument("--follow", action="store_true", help="follow the run until it ends (see tail)")
    parser.add_argument("--owner", help="username of the run's owner (default: none, visible to staff)")
    parser.add_argument("--budget-usd", type=float, help="stop the run once it cost this much")
    parser.add_argument("--idempotency-key", help="the same key, owner and workflow give back the first run")


def handle(options: dict[str, Any], out: Any) -> int:
    from ..core.errors import InvalidInput, WorkflowNotFound
    from ..runs import start
    from . import tail

    try:
        data = json.loads(options["input"])
    except json.JSONDecodeError as exc:
        raise CommandError(f"--input is not JSON: {exc}", returncode=EXIT_ERROR) from None
    if not isinstance(data, dict):
        raise CommandError(
            '--input must be a JSON object, such as \'{"topic": "otters"}\'', returncode=EXIT_ERROR
        )
    owner = _owner(options.get("owner"))
    budget = None if options.get("budget_usd") is None else {"usd": options["budget_usd"]}
    try:
        run = start(
            options["workflow"],
            data,
            owner=owner,
            budget=budget,
            idempotency_key=options.get("idempotency_key"),
        )
    except (WorkflowNotFound, InvalidInput) as exc:
        details = "".join(
            f"\n  {item.get('field') or '(input)'}: {item.get('message')}"
            for item in (exc.details if isinstance(exc.details, list) else [])
        )
        raise CommandError(f"{exc}{details}", returncode=EXIT_ERROR) from None
    out.write(f"Started run {run.pk} of workflow {run.workflow}")
    if not options["follow"]:
        return 0
    return tail.follow_and_report(str(run.pk), out)


def _owner(username: str | None) -> Any:
    if not username:
        return None
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
    if user is None:
        raise CommandError(f"no user is named {username!r}", returncode=EXIT_ERROR)
    return user
