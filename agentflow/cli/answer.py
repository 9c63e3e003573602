"""Answer a run's request for input: agentflow answer <run id> <key> '<JSON answer>' (no answer: list them).

Without a key, lists the run's requests for input with their status, prompt and JSON Schema. With one,
validates the answer against that request's schema and records it (``agentflow.send_input``); the run
continues on any worker. Exit status 0 on success, 1 when the answer is refused (invalid, already given,
timed out, the run finished, no such run or key), 2 when the answer is not JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run's id")
    parser.add_argument("key", nargs="?", help="the request's key (omit to list the run's requests)")
    parser.add_argument("answer", nargs="?", help="the answer as JSON, such as '{\"approved\": true}'")


def handle(options: dict[str, Any], out: Any) -> int:
    from agentflow.core.errors import AgentflowError
    from agentflow.inputs import list_inputs, send_input
    from agentflow.runs import get_run

    try:
        run = get_run(options["run"])
    except AgentflowError as exc:
        out.write(f"{exc.code}: {exc.message}")
        return 1
    if not options.get("key"):
        requests = list_inputs(run)
        if not requests:
            out.write(f"run {run.pk} has not asked for input")
        for request in requests:
            out.write(f"{request.key} [{request.status}] {request.prompt}")
            out.write(f"  schema: {json.dumps(request.schema)}")
            if request.status == "answered":
                out.write(f"  answer: {json.dumps(request.value)} by {request.answered_by or '-'}")
        return 0
    if options.get("answer") is None:
        out.write("give the answer as JSON after the key")
        return 2
    try:
        value = json.loads(options["answer"])
    except json.JSONDecodeError as exc:
        out.write(f"the answer is not JSON: {exc}")
        return 2
    try:
        answered = send_input(run, options["key"], value)
    except AgentflowError as exc:
        out.write(f"{exc.code}: {exc.message}")
        if isinstance(exc.details, list):
            for detail in exc.details:
                out.write(f"  {detail.get('field') or '(answer)'}: {detail.get('message')}")
        return 1
    out.write(f"answered {answered.key!r}: {json.dumps(answered.value)}; the run continues")
    return 0
