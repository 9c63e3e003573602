#!/usr/bin/env python
"""Replay of a 10,000-event history to a reconnecting websocket client, against raw XRANGE of the same events.

    python bench/replay.py [--events 10000] [--reps 11] [--deadline 120]

A finished run has ``--events`` + 1 events in its stream (run.started, output deltas of ~120 bytes, output,
run.completed). A client reconnects with ``after=<first event id>``: it is owed exactly ``--events`` events,
then the close (1000). Measured interleaved, after one warm-up of each:

  (a) raw XRANGE:     the same entries read with ``XRANGE`` in pages of 1,000 by redis-py asyncio (hiredis) in
                      this process, decoded to dicts: the floor of any replay from Redis.
  (b) from Redis:     connect the websocket to a uvicorn process serving ``tests.asgi`` until the last event has
                      arrived (each message decoded as JSON, ids checked) -- the hub replays the stream.
  (c) from the DB:    the same with the stream gone (expired): the history comes from the RunEvent archive.
  (d) bare server:    the same client and stream, served by a bare ASGI app under the same uvicorn
                      (``bench/_bare_asgi.py``: XRANGE pages, each written as one block of pre-encoded frames):
                      the floor of any websocket replay from Redis with this client.

Targets: (b) <= 1.3x (a), (c) <= 2.5x (a). (d)/(a) is what the websocket client alone costs above the raw
read (the ``websockets`` library parses each frame in Python): no server can go below it. Setup:
bench.settings (``BENCH_REDIS_URL``, ``BENCH_DB_NAME``); the runs and keys it creates are deleted at the end;
the servers run in their own process groups and are always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import arm_deadline
from bench._streaming import AsgiServer, Runs, environment, setup_django, tear_down


def build_history(run_id: str, events: int) -> list[str]:
    """Append ``events`` + 1 events (the shape of a streamed LLM answer) to the run's stream; their ids."""
    from agentflow import streams
    from agentflow.core import events as ev
    from agentflow.core.serialization import dumps

    client, key = streams.get_client(), streams.stream_key(run_id)

    def envelope(type: str, data: dict[str, Any]) -> str:
        return dumps(ev.envelope(type, run_id, step=None, attempt=None, epoch=1, data=data))

    payloads = [envelope(ev.RUN_STARTED, {})]
    chunk = "The otter (Lutrinae) is a semiaquatic mammal; this chunk stands for one streamed delta. "
    payloads += [envelope(ev.OUTPUT_DELTA, {"text": f"{n:05d} {chunk}"}) for n in range(events - 2)]
    payloads += [envelope(ev.OUTPUT, {"value": "..."}), envelope(ev.RUN_COMPLETED, {"duration_seconds": 1.0})]
    ids: list[str] = []
    for start in range(0, len(payloads), 1000):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[start : start + 1000]:
            pipe.xadd(key, {"d": payload})
        ids += pipe.execute()
    return ids


async def raw_xrange(client: Any, key: str, after: str, expected: int) -> float:
    started = time.perf_counter()
    got, start = 0, f"({after}"
    while True:
        entries = await client.xrange(key, min=start, max="+", count=1000)
        events = [{"id": entry_id, **json.loads(fields["d"])} for entry_id, fields in entries]
        got += len(events)
        if len(entries) < 1000:
            break
        start = f"({entries[-1][0]}"
    elapsed = time.perf_counter() - started
    assert got == expected, (got, expected)
    return elapsed


async def websocket_replay(url: str, ids: list[str]) -> tuple[float, float]:
    """Seconds from connecting until the last event arrived, and until the close."""
    import websockets

    started = time.perf_counter()
    async with websockets.connect(
        url, compression=None, ping_interval=None, max_size=None, max_queue=None
    ) as ws:
        n = 1
        async for message in ws:
            event = json.loads(message)
            if event["id"] != ids[n]:
                raise AssertionError(f"event {n}: {event['id']} instead of {ids[n]}")
            n += 1
            if n == len(ids):
                last = time.perf_counter() - started
        if ws.close_code != 1000 or n != len(ids):
            raise AssertionError(f"closed with {ws.close_code} after {n - 1} events")
    return last, time.perf_counter() - started


TARGET_REDIS = 1.3
TARGET_DB = 2.5


async def measure(
    args: argparse.Namespace, server: AsgiServer, bare: AsgiServer, runs: Runs
) -> dict[str, list[float]]:
    import redis.asyncio as aredis
    from django.conf import settings

    from agentflow import streams
    from agentflow.archive import archive_events
    from agentflow.models import RunStatus, WorkflowRun

    redis_run, redis_token = await asyncio.to_thread(runs.create, status=RunStatus.COMPLETED)
    db_run, db_token = await asyncio.to_thread(runs.create, status=RunStatus.COMPLETED)
    ids = await asyncio.to_thread(build_history, redis_run, args.events)
    db_ids = await asyncio.to_thread(build_history, db_run, args.events)
    await asyncio.to_thread(archive_events, db_run)
    await asyncio.to_thread(streams.get_client().delete, streams.stream_key(db_run))
    await asyncio.to_thread(
        lambda: WorkflowRun.objects.filter(pk__in=[redis_run, db_run]).update(last_event_id=ids[-1])
    )

    client = aredis.Redis.from_url(settings.AGENTFLOW["REDIS_URL"], decode_responses=True)
    key = streams.stream_key(redis_run)
    configs = {
        "raw": lambda: raw_xrange(client, key, ids[0], args.events),
        "redis": lambda: websocket_replay(server.url(redis_run, redis_token, after=ids[0]), ids),
        "db": lambda: websocket_replay(server.url(db_run, db_token, after=db_ids[0]), db_ids),
        "bare": lambda: websocket_replay(f"{bare.ws}/replay/{key}/?after={ids[0]}", ids),
    }
    samples: dict[str, list[float]] = {name: [] for name in configs}
    closes: list[float] = []
    try:
        for rep in range(args.reps + 1):  # rep 0 warms up
            for name, fn in configs.items():
                result = await fn()
                if rep:
                    if isinstance(result, tuple):
                        samples[name].append(result[0])
                        if name == "redis":
                            closes.append(result[1])
                    else:
                        samples[name].append(result)
        samples["redis-close"] = closes
        return samples
    finally:
        await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events the reconnecting client is owed")
    parser.add_argument("--reps", type=int, default=11, help="measured repetitions of each configuration")
    parser.add_argument("--deadline", type=float, default=120.0, help="abort after this many seconds")
    args = parser.parse_args()
    if args.events < 10:
        parser.error("--events must be at least 10")
    arm_deadline(args.deadline)
    started = time.monotonic()
    setup_django()

    runs, server, bare, failed = Runs(), None, None, True
    try:
        server = AsgiServer()
        bare = AsgiServer(app="bench._bare_asgi:app")
        ready = server.wait_ready()
        bare.wait_ready()
        samples = asyncio.run(measure(args, server, bare, runs))

        print(
            f"agentflow replay: {args.events:,} events to a reconnecting websocket client, against raw XRANGE"
        )
        print("=" * 100)
        for key, value in environment():
            print(f"  {key:<16} {value}")
        print(f"  {'Server':<16} uvicorn pid {server.pid}, ready after {ready:.2f}s")
        print(f"  {'Repetitions':<16} 1 warm-up, {args.reps} measured (interleaved)")
        print()
        labels = {
            "raw": "(a) raw XRANGE, paged, decoded",
            "redis": "(b) websocket replay from Redis",
            "redis-close": "    ... until the close frame",
            "db": "(c) websocket replay from the DB",
            "bare": "(d) bare server, same client",
        }
        print(f"  {'':<36}{'median':>10}{'min':>10}{'max':>10}  ms   {'events/s (median)':>18}")
        for name, label in labels.items():
            values = samples[name]
            med = statistics.median(values)
            print(
                f"  {label:<36}{med * 1e3:10.1f}{min(values) * 1e3:10.1f}{max(values) * 1e3:10.1f}"
                f"      {args.events / med:>15,.0f}"
            )

        def paired(name: str, floor_name: str = "raw") -> float:
            """The median over repetitions of (name / floor) within each repetition: the configurations of one
            repetition run back to back, so a burst of the machine's other work skews both."""
            return statistics.median(x / y for x, y in zip(samples[name], samples[floor_name], strict=True))

        raw, ours = statistics.median(samples["raw"]), statistics.median(samples["redis"])
        db = statistics.median(samples["db"])
        print()
        print(
            f"  ratios to the raw read (a), median of each repetition's: (b) {paired('redis'):.2f}x, "
            f"(c) {paired('db'):.2f}x, (d) {paired('bare'):.2f}x; to the bare server (d): "
            f"(b) {paired('redis', 'bare'):.2f}x, (c) {paired('db', 'bare'):.2f}x"
        )
        for label, name, target in (
            ("(b) from Redis", "redis", TARGET_REDIS),
            ("(c) from the DB", "db", TARGET_DB),
        ):
            ratio = paired(name)
            verdict = "MET" if ratio <= target else "NOT MET"
            value = statistics.median(samples[name])
            print(f"  target {label} <= {target}x (a): {verdict} ({ratio:.2f}x; median {value * 1e3:.0f} ms)")
        print(
            f"  (the floor of any server with this client, (d), is {paired('bare'):.2f}x (a): the websockets client "
            f"parses each frame in Python; medians (a) {raw * 1e3:.0f} ms, (b) {ours * 1e3:.0f} ms, "
            f"(c) {db * 1e3:.0f} ms)"
        )
        print(f"\n  elapsed {time.monotonic() - started:.1f}s")
        failed = False
        return 0
    finally:
        tear_down(server, runs, failed)
        if bare is not None:
            bare.stop(failed=failed)


if __name__ == "__main__":
    sys.exit(main())
