#!/usr/bin/env python
"""Many concurrent websocket subscribers of one run on ONE server process, all receiving every event: latency,
server CPU per delivery and the Redis connections the server uses, against the floors measured beside them.

    python bench/subscribers.py [--subscribers 500] [--more 2000] [--events 200] [--interval-ms 20]
                                [--client lean|websockets] [--deadline 300]

Every configuration receives the same paced events, emitted by ``streams.RedisSink`` (the worker's appender)
in this process every ``--interval-ms``; latency is emission -> the subscriber has the event, over every
(event, subscriber) pair, the first 10 events not counted. Measurement starts once every subscriber is live.

  (a) 1 websocket:        one subscriber of a uvicorn process serving ``tests.asgi`` (the hub's best case).
  (b) N raw readers:      N redis-py asyncio connections in this process, each ``XREAD BLOCK`` on the stream: the
                          naive design, one Redis connection per subscriber.
  (c) N websockets:       N subscribers of the same uvicorn process, all fed by its hub's one ``XREAD``.
  (d) floor, ASGI send:   N subscribers of a bare ASGI app (``bench/_bare_asgi.py``: no Django, no Channels, no
                          hub) under the same uvicorn, one ``XREAD`` and one ``websocket.send`` per socket.
  (e) floor, frames:      the same bare app building each frame once and writing it to each socket's transport:
                          what the server and the kernel cost per delivery, the floor of this design.
  (f) --more websockets:  (c) with more subscribers (reported, no target).

Server CPU per delivery is the server process's CPU time (``/proc``) while the events are emitted, divided by
the deliveries. Targets for (c): <= 15 µs of server CPU per delivery, p50 <= 5 ms and p99 <= 25 ms.

All clients live in this one process. ``--client lean`` (default) parses frames in ``data_received``
(``bench/_wsclient.py``), as a browser does natively; ``--client websockets`` uses the ``websockets`` library,
about 25 µs of client CPU per message, so 500 of them saturate this process before the server and the latency
becomes theirs (the client CPU per delivery is printed either way). Setup: bench.settings (``BENCH_REDIS_URL``,
``BENCH_DB_NAME``); the runs and keys it creates are deleted at the end; the servers run in their own process
groups and are always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
TARGET_CPU_US = 15.0
TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0


class Result:
    def __init__(self, name: str, subscribers: int) -> None:
        self.name = name
        self.subscribers = subscribers
        self.latencies: list[float] = []
        self.spreads: list[float] = []  # per event: last arrival - first arrival
        self.connections: dict[str, int] = {}
        self.server_cpu_us: float | None = None  # per delivery
        self.client_cpu_us: float | None = None  # per delivery, this process

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


def data_event(run_id: str, n: int) -> dict[str, Any]:
    from agentflow.core import events as ev

    return ev.envelope(ev.DATA, run_id, step=None, attempt=None, epoch=1, data={"label": "bench", "value": n})


def new_run(runs: Runs) -> tuple[str, str]:
    """A running run whose stream holds its ``run.queued``, as every started run's does."""
    from agentflow import streams
    from agentflow.core import events as ev

    run_id, token = runs.create()
    streams.announce(run_id, ev.envelope(ev.RUN_QUEUED, run_id, step=None, attempt=None, epoch=0, data={}))
    return run_id, token


def value_of(message: str | bytes) -> int | None:
    """The ``n`` of a benchmark ``data`` event (compact JSON, ``data`` last), None for any other event: cheaper
    than decoding the whole event, so that 500 clients in one process stay cheaper than the server."""
    if isinstance(message, str):
        message = message.encode()
    if b'"type":"data"' not in message:
        return None
    start = message.rindex(b'"value":') + 8
    return int(message[start : message.index(b"}", start)])


class Arrivals:
    """When each subscriber got each event; ``live`` once each got something (agentflow: run.queued)."""

    def __init__(self, subscribers: int, events: int) -> None:
        self.times: list[dict[int, float]] = [{} for _ in range(subscribers)]
        self.events = events
        self.seen = 0
        self.complete = 0
        self.live = asyncio.Event()
        self.done = asyncio.Event()

    def handler(self, index: int) -> Callable[[Any, float], None]:
        arrived, first = self.times[index], [True]

        def on_message(message: Any, now: float) -> None:
            if first[0]:
                first[0] = False
                self.seen += 1
                if self.seen == len(self.times):
                    self.live.set()
            n = value_of(message)
            if n is not None:
                arrived[n] = now
                if n == self.events:
                    self.complete += 1
                    if self.complete == len(self.times):
                        self.done.set()

        return on_message


async def drive(
    run_id: str,
    args: argparse.Namespace,
    arrivals: Arrivals,
    result: Result,
    server: AsgiServer | None = None,
    sample_connections: Callable[[], Awaitable[dict[str, int]]] | None = None,
) -> None:
    """Emit the events, wait until every subscriber has them all, and compute the latencies and CPU."""
    from agentflow import streams

    claim = await asyncio.to_thread(streams.claim, run_id, 1)
    sink = streams.RedisSink(run_id, 1, claim)
    sent: dict[int, float] = {}
    server_cpu = server.cpu_seconds() if server is not None else 0.0
    client_cpu = os.times()
    try:
        for n in range(1, args.events + 1):
            sent[n] = time.perf_counter()
            sink.emit(data_event(run_id, n))
            if n == args.events // 2 and sample_connections is not None:
                result.connections = await sample_connections()
            await asyncio.sleep(args.interval_ms / 1000)
        await asyncio.wait_for(arrivals.done.wait(), 60)
    finally:
        sink.close(timeout_seconds=5)
    deliveries = args.events * len(arrivals.times)
    now = os.times()
    result.client_cpu_us = (now.user - client_cpu.user + now.system - client_cpu.system) / deliveries * 1e6
    if server is not None:
        result.server_cpu_us = (server.cpu_seconds() - server_cpu) / deliveries * 1e6
    for n in range(WARMUP_EVENTS + 1, args.events + 1):
        times = [arrived[n] for arrived in arrivals.times]
        result.latencies += [t - sent[n] for t in times]
        result.spreads.append(max(times) - min(times))


async def open_clients(url: str, arrivals: Arrivals, kind: str) -> tuple[list[Any], list[asyncio.Task[None]]]:
    """Connect one client per subscriber (in batches of 50, as the clients of a busy page would)."""
    from bench._wsclient import connect

    clients: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    count = len(arrivals.times)
    if kind == "lean":
        for start in range(0, count, 50):
            batch = range(start, min(count, start + 50))
            clients += await asyncio.gather(*(connect(url, arrivals.handler(i)) for i in batch))
        return clients, tasks

    import websockets

    async def read(ws: Any, on_message: Callable[[Any, float], None]) -> None:
        async for message in ws:
            on_message(message, time.perf_counter())

    for start in range(0, count, 50):
        batch = range(start, min(count, start + 50))
        clients += await asyncio.gather(
            *(websockets.connect(url, compression=None, ping_interval=None, open_timeout=60) for _ in batch)
        )
        tasks += [asyncio.create_task(read(clients[i], arrivals.handler(i))) for i in batch]
    return clients, tasks


async def close_clients(clients: list[Any], tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        if hasattr(client, "abort"):
            client.abort()
    await asyncio.gather(*(c.close() for c in clients if not hasattr(c, "abort")), return_exceptions=True)


async def websockets_config(
    name: str,
    subscribers: int,
    args: argparse.Namespace,
    server: AsgiServer,
    runs: Runs,
    path: str | None = None,
) -> Result:
    """``subscribers`` websockets of one run: agentflow's route, or ``path`` of the bare app (``{key}``)."""
    from agentflow import streams

    result = Result(name, subscribers)
    run_id, token = await asyncio.to_thread(new_run, runs)
    arrivals = Arrivals(subscribers, args.events)
    url = (
        server.url(run_id, token) if path is None else server.ws + path.format(key=streams.stream_key(run_id))
    )
    clients, tasks = await open_clients(url, arrivals, args.client)
    try:
        if path is None:  # every subscriber has replayed run.queued and is attached to the hub
            await asyncio.wait_for(arrivals.live.wait(), 60)
        else:  # registered on accept; let the bare app's reader start
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.2)
        sample = (lambda: asyncio.to_thread(server.hub_connections)) if path is None else None
        await drive(run_id, args, arrivals, result, server, sample)
    finally:
        await close_clients(clients, tasks)
    return result


async def raw_readers_config(name: str, subscribers: int, args: argparse.Namespace, runs: Runs) -> Result:
    import redis.asyncio as aredis
    from django.conf import settings

    from agentflow import streams

    result = Result(name, subscribers)
    run_id, _ = await asyncio.to_thread(new_run, runs)
    key = streams.stream_key(run_id)
    arrivals = Arrivals(subscribers, args.events)
    client_name = f"bench-raw-reader-{run_id[:8]}"
    clients = [
        aredis.Redis.from_url(
            settings.AGENTFLOW["REDIS_URL"], decode_responses=True, single_connection_client=True,
            client_name=client_name,
        )
        for _ in range(subscribers)
    ]  # fmt: skip

    async def reader(client: Any, on_message: Callable[[Any, float], None]) -> None:
        last = "$"
        while True:
            response = await client.xread({key: last}, block=5000)
            for _, entries in response or ():
                now = time.perf_counter()
                for entry_id, fields in entries:
                    last = entry_id
                    on_message(fields["d"], now)

    async def count() -> dict[str, int]:
        clients_now = await asyncio.to_thread(streams.get_client().client_list)
        return {"reader": sum(1 for c in clients_now if c["name"] == client_name)}

    tasks = [asyncio.create_task(reader(c, arrivals.handler(i))) for i, c in enumerate(clients)]
    try:
        await asyncio.sleep(1.0)
        await drive(run_id, args, arrivals, result, None, count)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    return result


async def measure(args: argparse.Namespace, server: AsgiServer, bare: AsgiServer, runs: Runs) -> list[Result]:
    n = args.subscribers
    results = [
        await websockets_config("(a) 1 websocket", 1, args, server, runs),
        await raw_readers_config(f"(b) {n} raw Redis readers", n, args, runs),
        await websockets_config(f"(c) {n} websockets, agentflow", n, args, server, runs),
        await websockets_config(
            f"(d) {n} websockets, bare ASGI send", n, args, bare, runs, "/live/asgi/{key}/"
        ),
        await websockets_config(
            f"(e) {n} websockets, bare frames", n, args, bare, runs, "/live/frame/{key}/"
        ),
    ]
    if args.more:
        results.append(
            await websockets_config(f"(f) {args.more} websockets, agentflow", args.more, args, server, runs)
        )
    return results


def run_clients(main: Any) -> Any:
    """Run the clients on uvloop when it is installed (uvicorn's ``standard`` extra brings it): the server runs
    on it too, and the clients, which stand for many browsers, should cost this process as little as they can."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--more", type=int, default=2000, help="subscribers of the extra point (0: skip it)")
    parser.add_argument("--events", type=int, default=200, help="events emitted per configuration")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="pause between two events")
    parser.add_argument("--client", choices=["lean", "websockets"], default="lean")
    parser.add_argument("--deadline", type=float, default=300.0, help="abort after this many seconds")
    args = parser.parse_args()
    if args.events <= WARMUP_EVENTS or args.subscribers < 1:
        parser.error(f"--events must exceed {WARMUP_EVENTS}, --subscribers be at least 1")
    arm_deadline(args.deadline)
    started = time.monotonic()
    setup_django()

    runs, server, bare, failed = Runs(), None, None, True
    try:
        server = AsgiServer()
        bare = AsgiServer(app="bench._bare_asgi:app")
        ready = server.wait_ready()
        bare.wait_ready()
        results = run_clients(measure(args, server, bare, runs))

        print(
            f"agentflow fan-out: {args.subscribers} websocket subscribers of one run on one server process, "
            f"{args.events} events every {args.interval_ms:g} ms, {args.client} clients"
        )
        print("=" * 110)
        for key, value in environment():
            print(f"  {key:<16} {value}")
        print(f"  {'Server':<16} uvicorn pid {server.pid}, ready after {ready:.2f}s; bare app pid {bare.pid}")
        print()
        for result in results:
            print(f"  {result.name:<36} {summary_ms(result.latencies)}")
            extra = f"spread first->last subscriber p50 {percentile(result.spreads, 50) * 1e3:.2f} ms"
            extra += f", p99 {percentile(result.spreads, 99) * 1e3:.2f} ms"
            if result.server_cpu_us is not None:
                extra += f"; server CPU {result.server_cpu_us:.1f} µs per delivery"
            extra += f"; client CPU {result.client_cpu_us:.1f} µs"
            print(f"  {'':<36} {extra}")
            if result.connections:
                print(f"  {'':<36} Redis connections: {result.connections}")
        one, raw, ours, asgi_floor, frame_floor = results[:5]
        assert ours.server_cpu_us is not None and frame_floor.server_cpu_us is not None
        assert asgi_floor.server_cpu_us is not None
        print()
        print(
            f"  server CPU per delivery: floor (e) {frame_floor.server_cpu_us:.1f} µs, uvicorn's ASGI send (d) "
            f"{asgi_floor.server_cpu_us:.1f} µs, agentflow (c) {ours.server_cpu_us:.1f} µs: ratio "
            f"{ours.server_cpu_us / frame_floor.server_cpu_us:.2f}x the floor; agentflow's own share "
            f"{ours.server_cpu_us - frame_floor.server_cpu_us:.1f} µs"
        )
        print(
            f"  latency p50/p99: (c) {ours.p(50) * 1e3:.2f}/{ours.p(99) * 1e3:.2f} ms, floor (e) "
            f"{frame_floor.p(50) * 1e3:.2f}/{frame_floor.p(99) * 1e3:.2f} ms, 1 subscriber (a) "
            f"{one.p(50) * 1e3:.2f}/{one.p(99) * 1e3:.2f} ms; (c)/(e) p50 {ours.p(50) / frame_floor.p(50):.2f}x, "
            f"(c)/(a) p50 {ours.p(50) / one.p(50):.2f}x, (c)/(b) p50 {ours.p(50) / raw.p(50):.2f}x"
        )
        hub = ours.connections
        print(
            f"  Redis connections of the server with {args.subscribers} subscribers: {sum(hub.values())} "
            f"({hub.get('reader', 0)} blocking reader, {hub.get('pool', 0)} pooled) against "
            f"{raw.connections.get('reader', 0)} for one reader per subscriber"
        )
        print(
            f"  target server CPU per delivery <= {TARGET_CPU_US:g} µs: "
            f"{verdict(ours.server_cpu_us <= TARGET_CPU_US)} ({ours.server_cpu_us:.1f} µs)"
        )
        print(
            f"  target {args.subscribers} subscribers p50 <= {TARGET_P50_MS:g} ms: "
            f"{verdict(ours.p(50) * 1e3 <= TARGET_P50_MS)} ({ours.p(50) * 1e3:.2f} ms); "
            f"p99 <= {TARGET_P99_MS:g} ms: {verdict(ours.p(99) * 1e3 <= TARGET_P99_MS)} ({ours.p(99) * 1e3:.2f} ms)"
        )
        if len(results) > 5:
            more = results[5]
            print(
                f"  {more.subscribers} subscribers (no target): p50 {more.p(50) * 1e3:.2f} ms, p99 "
                f"{more.p(99) * 1e3:.2f} ms, server CPU {more.server_cpu_us:.1f} µs per delivery"
            )
        print(
            f"  mean latency (c) {statistics.fmean(ours.latencies) * 1e3:.2f} ms over {len(ours.latencies):,}"
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
