"""Run the example project end to end: ``python -m example_project``.

It needs nothing but this package installed: when no Redis answers at $REDIS_URL (default
redis://127.0.0.1:6379/0) it starts an embedded one, without $DATABASE_URL it uses SQLite in ./var/, and
without $OPENAI_API_KEY it starts agentflow's fake OpenAI-compatible server (a separate process that streams
made-up words at a realistic pace) and points the LLM provider at it. Then it migrates, starts a Celery worker
(with beat, for the monitor) in another process, starts a ``blog-post`` run, prints its events live as a
client would see them and its token usage and cost, and serves the example's web app at
http://127.0.0.1:8000/ (a form per workflow, live run pages), the admin and the API docs (user ``admin``,
password ``admin``) until Ctrl-C. The run asks for approval of its outline: answered on the terminal
(``--approve ask``, the default on a terminal) or at once (``--approve yes``, the default otherwise).

Ctrl-C stops the worker, then the fake LLM server, then the embedded Redis, and exits with status 0 while
serving (the normal end), 130 when it interrupts the run before that.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_project", description=__doc__.split("\n")[0])
    parser.add_argument("--topic", default="durable AI agents", help="what the blog post is about")
    parser.add_argument("--words", type=int, default=12, help="words per section")
    parser.add_argument("--sections", type=int, default=5, help="sections of the post, drafted at once")
    parser.add_argument(
        "--budget-usd", type=float, default=None, help="stop the run once it cost this much (default $0.05)"
    )
    parser.add_argument(
        "--no-serve", action="store_true", help="exit after the run instead of serving the admin"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--approve",
        choices=["ask", "yes"],
        default="ask" if sys.stdin.isatty() else "yes",
        help="the run asks a person to approve its outline: ask on this terminal, or approve at once",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    # Stopped with SIGTERM (not only Ctrl-C): still stop the worker and the embedded Redis on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    var_dir = Path(os.environ.get("AGENTFLOW_VAR_DIR", ROOT / "var"))
    # Beat's schedule file lives there whatever the database and Redis are (with DATABASE_URL set and a
    # Redis reachable, nothing else creates it, and beat died at start: no monitor, no schedules).
    var_dir.mkdir(parents=True, exist_ok=True)
    # What to stop on the way out, in start order; stopped in reverse: the worker first (its warm shutdown
    # still needs Redis and the LLM server), then the fake LLM server, then Redis. The children run in
    # sessions of their own, so a Ctrl-C in the terminal reaches only this process, which stops them in
    # that order.
    stoppers: list[Callable[[], None]] = []
    try:
        from example_project.embedded import describe, reachable, start_embedded_redis

        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if reachable(url):
            print(f"Redis: {describe(url)}")
        else:
            url, redis_process = start_embedded_redis(var_dir)
            stoppers.append(lambda: _stop(redis_process))
            print(f"Redis: none reachable, started an embedded one at {describe(url)}")
        os.environ["REDIS_URL"] = url

        # Before Django reads its settings: the worker and the web process inherit this environment.
        if os.environ.get("OPENAI_API_KEY"):
            model = os.environ.get("EXAMPLE_LLM_MODEL") or "gpt-4o-mini"
            base_url = os.environ.get("OPENAI_BASE_URL") or "the OpenAI API"
            print(f"LLM: {model} at {base_url} (OPENAI_API_KEY is set)")
        else:
            fake = _start_fake_openai(args.words)
            stoppers.append(fake.stop)
            os.environ.update(
                OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="fake-key", EXAMPLE_LLM_MODEL="fake-model"
            )
            print(f"LLM: no OPENAI_API_KEY, started a fake OpenAI server at {fake.base_url} (fake-model)")

        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        print(f"Database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")
        call_command("migrate", verbosity=0)
        _demo_admin()

        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "example_project", "worker", "-B",
             "-s", str(var_dir / "celerybeat-schedule"), "-Q", "agentflow,agentflow-monitor",
             "-c", "2", "-l", "warning", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
        )  # fmt: skip
        stoppers.append(lambda: _stop(worker))
        print(f"Celery worker started (pid {worker.pid})\n")

        status = _run_and_follow(
            args.topic, args.words, args.sections, args.budget_usd, args.approve, args.port
        )
        if args.no_serve:
            return 0 if status == "completed" else 1
        base = f"http://127.0.0.1:{args.port}"
        print(f"\nOpen {base}/ (user admin, password admin): a form per workflow, live run pages")
        print(f"Admin: {base}/admin/  ·  API docs: {base}/api/docs/  — Ctrl-C to stop")
        # Returns on Ctrl-C (the server handles SIGINT): the normal way to end, exit status 0.
        call_command("runserver", f"127.0.0.1:{args.port}", use_reloader=False)
        return 0
    except KeyboardInterrupt:  # Ctrl-C before serving: the run was interrupted
        print()
        return 130
    finally:
        if stoppers:
            print("Stopping...", flush=True)
        for stop in reversed(stoppers):
            # A second Ctrl-C while stopping must not leave children behind.
            with contextlib.suppress(KeyboardInterrupt):
                stop()


def _start_fake_openai(words: int) -> Any:
    """agentflow's fake OpenAI-compatible server, in its own process: every reply is ``words`` words long,
    the first byte after 200 ms, then 40 tokens a second, like a small hosted model."""
    from agentflow.testing.fake_openai import FakeOpenAIProcess

    return FakeOpenAIProcess(latency_ms=200, tokens_per_second=40, completion_tokens=max(1, words))


def _demo_admin() -> None:
    from django.contrib.auth import get_user_model

    users = get_user_model()
    if not users.objects.filter(username="admin").exists():
        users.objects.create_superuser("admin", "admin@example.com", "admin")


def _run_and_follow(
    topic: str, words: int, sections: int, budget_usd: float | None, approve: str = "yes", port: int = 8000
) -> str:
    import agentflow
    from agentflow import streams

    budget = None if budget_usd is None else {"usd": budget_usd}
    run = agentflow.start(
        "blog-post", {"topic": topic, "words_per_section": words, "sections": sections}, budget=budget
    )
    print(f"Started run {run.id} of workflow blog-post; its events:\n")
    last_id = "0-0"
    print_event = _Printer()
    while True:
        for event in streams.tail_events(str(run.id), last_id, block_ms=5000):
            last_id = event["id"]
            print_event(event)
            if event["type"] == "input.requested":
                _answer(run, event, approve, port)
            if event["type"] in ("run.completed", "run.failed", "run.cancelled"):
                run.refresh_from_db()
                print(f"\nRun {run.status} in {run.duration_seconds or 0:.1f} s with {run.step_count} steps.")
                if run.output:
                    print(f"Output: {run.output['title']!r}, {run.output['words']} words")
                    for section in run.output["sections"]:
                        print(f"  ## {section['heading']}\n     {section['text']}")
                elif run.error:
                    print(f"Error: {run.error.get('code')}: {run.error.get('message')}")
                _print_usage(run.usage or {}, run.budget or {})
                return run.status


def _answer(run: Any, event: dict[str, Any], approve: str, port: int) -> None:
    """Answer the run's request for input (the outline's approval) with ``agentflow.send_input``: what the
    REST API, the admin's form and the browser do too."""
    import agentflow

    key = event["data"]["key"]
    print(
        f"  The run waits for input {key!r}; its worker is free meanwhile. Over REST (with the server up):\n"
        "    curl -X POST -H 'Authorization: Token <token>' -H 'Content-Type: application/json' \\\n"
        f"         -d '{{\"approved\": true}}' http://127.0.0.1:{port}/api/runs/{run.id}/input/{key}/"
    )
    if approve == "yes":
        answer: dict[str, Any] = {"approved": True}
        print("  Approving it (--approve yes).")
    else:
        reply = input("  Approve this outline? [Y/n] ").strip().lower()
        answer = {"approved": reply in ("", "y", "yes")}
    agentflow.send_input(run, key, answer)


def _print_usage(usage: dict[str, Any], budget: dict[str, Any]) -> None:
    """The run's LLM usage and cost, summed over its steps, against its budget."""
    cost = float(usage.get("cost_usd") or 0.0)
    print(
        f"LLM usage: {usage.get('calls', 0)} calls, {usage.get('prompt_tokens', 0)} prompt + "
        f"{usage.get('completion_tokens', 0)} completion tokens, ${cost:.6f}"
        + (f" ({usage['unpriced_calls']} calls without a price)" if usage.get("unpriced_calls") else "")
    )
    for model, counts in (usage.get("by_model") or {}).items():
        price = "no price" if counts.get("cost_usd") is None else f"${counts['cost_usd']:.6f}"
        print(f"  {model}: {counts['calls']} calls, {counts['total_tokens']} tokens, {price}")
    if budget.get("usd"):
        limit = f"{budget['usd']:.6f}".rstrip("0").rstrip(".")
        print(f"Budget: ${limit} a run, {cost / budget['usd']:.2%} used")


class _Printer:
    """Prints events as a terminal client would show them; streamed output text stays on its own lines."""

    def __init__(self) -> None:
        self.mid_line = False  # the last thing printed was output text without its newline

    def __call__(self, event: dict[str, Any]) -> None:
        kind, data = event["type"], event["data"]
        if kind == "output.delta":
            print(data["text"], end="", flush=True)
            self.mid_line = not data["text"].endswith("\n")
            return
        if self.mid_line:
            print()
            self.mid_line = False
        if kind == "status":
            print(f"  [status] {data['text']}" + (f" ({data['progress']:.0%})" if "progress" in data else ""))
        elif kind == "data" and data["label"].startswith("section "):
            print(f"  [{data['label']}] {data['value'].strip()}")  # a section's tokens, as they stream
        elif kind == "data":
            print(f"  [data] {data['label']}: {data['value']}")
        elif kind == "input.requested":
            print(f"  [input.requested] {data['key']}: {data['prompt']}")
        elif kind in ("step.started", "step.completed", "step.retrying", "step.failed"):
            print(f"  [{kind}] {event['step']} (attempt {event['attempt']})")
        elif kind != "output":
            print(f"[{kind}]")


def _stop(process: subprocess.Popen[Any]) -> None:
    # SIGTERM to the main process only: Celery then shuts its pool down warmly; Redis exits at once.
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
