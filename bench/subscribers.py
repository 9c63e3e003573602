#!/usr/bin/env python
"""500 concurrent websocket subscribers of one run on ONE server process, all receiving every event: latency
and the Redis connections the server uses, against one subscriber and against one Redis reader per subscriber.

    python bench/subscribers.py [--subscribers 500] [--events 200] [--interval-ms 20] [--deadline 180]

Every configuration receives the same paced events, emitted by ``streams.RedisSink`` (the worker's appender)
in this process every ``--interval-ms``; latency is emission -> the subscriber has the event, over every
(event, subscriber) pair, the first 10 events not counted:

  (a) 1 websocket:      one subscriber of a uvicorn process serving ``tests.asgi`` (the hub's best case).
  (b) N raw readers:    N redis-py asyncio connections in this process, each ``XREAD BLOCK`` on the stream: the
                        naive design, one Redis connection per subscriber.
  (c) N websockets:     N subscribers of the same uvicorn process, all fed by its hub's one ``XREAD``.

The server's Redis connections are counted with ``CLIENT LIST`` by the names the hub gives them
(``agentflow-hub:<host>:<pid>:reader`` / ``:pool``). All clients live in this one process, so on a small
machine their own CPU is part of the latency (reported as the spread between the first and the last
subscriber to get an event). Setup: bench.settings (Redis db 14, database ``agentflow_bench``); the runs and
keys it creates are deleted at the end; the server runs in its own process group and is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import arm_deadline
from bench._streaming import (
    AsgiServer,
    Runs,
    environment,
    percentile,
    setup_django,
    summary_ms,
    tear_down,
)

WARMUP_EVENTS = 10


class Result:
    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.spreads: list[float] = []  # per event: last arrival - first arrival
        self.connections: dict[str, int] = {}
        self.server_cpu: float | None = None


def data_event(run_id: str, n: int) -> dict[str, Any]:
    from agentflow.core import events as ev

    return ev.envelope(ev.DATA, run_id, step=None, attempt=None, epoch=1, data={"label": "bench", "value": n})


async def drive(
    run_id: str,
    subscribers: int,
    args: argparse.Namespace,
    arrivals: list[dict[int, float]],
    all_arrived: asyncio.Event,
    result: Result,
    sample_connections: Callable[[], Awaitable[dict[str, int]]] | None = None,
) -> None:
    """Emit the events, wait until every subscriber has them all, and compute the latencies."""
    from agentflow import streams

    claim = await asyncio.to_thread(streams.claim, run_id, 1)
    sink = streams.RedisSink(run_id, 1, claim)
    sent: dict[int, float] = {}
    try:
        for n in range(1, args.events + 1):
            sent[n] = time.perf_counter()
            sink.emit(data_event(run_id, n))
            if n == args.events // 2 and sample_connections is not None:
                result.connections = await sample_connections()
            await asyncio.sleep(args.interval_ms / 1000)
        await asyncio.wait_for(all_arrived.wait(), 30)
    finally:
        sink.close(timeout_seconds=5)
    for n in range(WARMUP_EVENTS + 1, args.events + 1):
        times = [arrived[n] for arrived in arrivals]
        result.latencies += [t - sent[n] for t in times]
        result.spreads.append(max(times) - min(times))


async def websockets_config(
    name: str, subscribers: int, args: argparse.Namespace, server: AsgiServer, runs: Runs
) -> Result:
    import websockets

    result = Result(name)
    run_id, token = await asyncio.to_thread(runs.create)
    arrivals: list[dict[int, float]] = [{} for _ in range(subscribers)]
    complete, all_arrived = [0], asyncio.Event()

    async def subscriber(ws: Any, arrived: dict[int, float]) -> None:
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "data":
                n = event["data"]["value"]
                arrived[n] = time.perf_counter()
                if n == args.events:
                    complete[0] += 1
                    if complete[0] == subscribers:
                        all_arrived.set()

    url = server.url(run_id, token)
    sockets: list[Any] = []
    for start in range(0, subscribers, 50):  # connect in batches, as clients of a busy page would
        batch = [
            websockets.connect(url, compression=None, ping_interval=None, open_timeout=30)
            for _ in range(start, min(subscribers, start + 50))
        ]
        sockets += await asyncio.gather(*batch)
    tasks = [asyncio.create_task(subscriber(ws, arrivals[i])) for i, ws in enumerate(sockets)]
    try:
        await asyncio.sleep(0.5)  # every socket is live (replay done, attached to the hub)
        cpu = server.cpu_seconds()
        await drive(
            run_id, subscribers, args, arrivals, all_arrived, result,
            lambda: asyncio.to_thread(server.hub_connections),
        )  # fmt: skip
        result.server_cpu = server.cpu_seconds() - cpu
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return result


async def raw_readers_config(name: str, subscribers: int, args: argparse.Namespace, runs: Runs) -> Result:
    import redis.asyncio as aredis
    from django.conf import settings

    from agentflow import streams

    result = Result(name)
    run_id, _ = await asyncio.to_thread(runs.create)
    key = streams.stream_key(run_id)
    arrivals: list[dict[int, float]] = [{} for _ in range(subscribers)]
    complete, all_arrived = [0], asyncio.Event()
    client_name = f"bench-raw-reader-{run_id[:8]}"
    clients = [
        aredis.Redis.from_url(
            settings.AGENTFLOW["REDIS_URL"], decode_responses=True, single_connection_client=True,
            client_name=client_name,
        )
        for _ in range(subscribers)
    ]  # fmt: skip

    async def reader(client: Any, arrived: dict[int, float]) -> None:
        last = "0-0"
        while True:
            response = await client.xread({key: last}, block=5000)
            for _, entries in response or ():
                for entry_id, fields in entries:
                    last = entry_id
                    n = json.loads(fields["d"])["data"]["value"]
                    arrived[n] = time.perf_counter()
                    if n == args.events:
                        complete[0] += 1
                        if complete[0] == subscribers:
                            all_arrived.set()

    async def count() -> dict[str, int]:
        clients_now = await asyncio.to_thread(streams.get_client().client_list)
        return {"reader": sum(1 for c in clients_now if c["name"] == client_name)}

    tasks = [asyncio.create_task(reader(c, arrivals[i])) for i, c in enumerate(clients)]
    try:
        await asyncio.sleep(0.5)
        await drive(run_id, subscribers, args, arrivals, all_arrived, result, count)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    return result


async def measure(args: argparse.Namespace, server: AsgiServer, runs: Runs) -> list[Result]:
    n = args.subscribers
    return [
        await websockets_config("(a) 1 websocket", 1, args, server, runs),
        await raw_readers_config(f"(b) {n} raw Redis readers", n, args, runs),
        await websockets_config(f"(c) {n} websockets, 1 server", n, args, server, runs),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--events", type=int, default=200, help="events emitted per configuration")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="pause between two events")
    parser.add_argument("--deadline", type=float, default=180.0, help="abort after this many seconds")
    args = parser.parse_args()
    if args.events <= WARMUP_EVENTS or args.subscribers < 1:
        parser.error(f"--events must exceed {WARMUP_EVENTS}, --subscribers be at least 1")
    arm_deadline(args.deadline)
    started = time.monotonic()
    setup_django()

    runs, server, failed = Runs(), None, True
    try:
        server = AsgiServer()
        ready = server.wait_ready()
        results = asyncio.run(measure(args, server, runs))

        print(
            f"agentflow fan-out: {args.subscribers} websocket subscribers of one run on one server process, "
            f"{args.events} events every {args.interval_ms:g} ms"
        )
        print("=" * 110)
        for key, value in environment():
            print(f"  {key:<16} {value}")
        print(f"  {'Server':<16} uvicorn pid {server.pid}, ready after {ready:.2f}s")
        print()
        for result in results:
            print(f"  {result.name:<32} {summary_ms(result.latencies)}")
            extra = f"spread first->last subscriber p50 {percentile(result.spreads, 50) * 1e3:.2f} ms"
            extra += f", p99 {percentile(result.spreads, 99) * 1e3:.2f} ms"
            if result.server_cpu is not None:
                per_delivery = result.server_cpu / max(1, len(result.latencies)) * 1e6
                extra += f"; server CPU {per_delivery:.1f} µs per delivery"
            print(f"  {'':<32} {extra}")
            print(f"  {'':<32} Redis connections: {result.connections or 'n/a'}")
        one, raw, ours = results
        p99 = percentile(ours.latencies, 99)
        print()
        print(
            f"  ratios (c)/(a): p50 {percentile(ours.latencies, 50) / percentile(one.latencies, 50):.2f}x"
            f"  p99 {p99 / percentile(one.latencies, 99):.2f}x   "
            f"(c)/(b): p50 {percentile(ours.latencies, 50) / percentile(raw.latencies, 50):.2f}x"
            f"  p99 {p99 / percentile(raw.latencies, 99):.2f}x"
        )
        hub = ours.connections
        total = sum(hub.values())
        print(
            f"  Redis connections of the server with {args.subscribers} subscribers: {total} "
            f"({hub.get('reader', 0)} blocking reader, {hub.get('pool', 0)} pooled) "
            f"against {raw.connections.get('reader', 0)} for one reader per subscriber"
        )
        print(
            f"  mean latency {statistics.fmean(ours.latencies) * 1e3:.2f} ms over {len(ours.latencies):,} deliveries"
        )
        print(f"\n  elapsed {time.monotonic() - started:.1f}s")
        failed = False
        return 0
    finally:
        tear_down(server, runs, failed)


if __name__ == "__main__":
    sys.exit(main())
