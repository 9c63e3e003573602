#!/usr/bin/env python
"""Latency of one event from its emission to a websocket client, against raw Redis XADD -> XREAD.

    python bench/event_latency.py [--samples 2000] [--rounds 10] [--deadline 120]

Three configurations, measured interleaved (one round of each in turn), one event at a time (the next is
emitted once the previous arrived, after a short random pause, so every reader is blocked when it comes):

  (a) raw:        ``XADD`` on one connection -> ``XREAD BLOCK`` on another (redis-py asyncio + hiredis), in this
                  process: what Redis and the client library cost, the floor of any design.
  (b) sink:       ``streams.RedisSink.emit`` (the worker's appender: writer thread, fenced Lua append) ->
                  ``XREAD BLOCK`` in this process: the appender's share.
  (c) agentflow:  ``RedisSink.emit`` -> the hub of a uvicorn process serving ``tests.asgi`` (one shared XREAD,
                  fan-out) -> the run's websocket (channels consumer) -> a ``websockets`` client in this process.

Latency is ``time.perf_counter()`` at the emission to the moment the reader has the event. Targets for (c):
p50 <= 2 ms and p99 <= 10 ms. Setup: bench.settings (Redis db 14, database ``agentflow_bench``); the runs and
keys it creates are deleted at the end; the server runs in its own process group and is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
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


class Probe:
    """One configuration: ``emit(n)`` sends event n; a reader task records when each arrives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.server_cpu = 0.0  # seconds the server process spent while this configuration was measured
        self._sent: dict[int, float] = {}
        self._arrived: dict[int, asyncio.Event] = {}

    def arrived(self, n: int) -> None:
        now = time.perf_counter()
        sent = self._sent.pop(n, None)
        if sent is not None:
            self.latencies.append(now - sent)
            self._arrived.pop(n).set()

    async def one(self, n: int, emit: Callable[[int], Awaitable[None] | None]) -> None:
        self._arrived[n] = event = asyncio.Event()
        self._sent[n] = time.perf_counter()
        result = emit(n)
        if result is not None:
            await result
        await asyncio.wait_for(event.wait(), 5)


async def xread_forever(client: Any, key: str, probe: Probe) -> None:
    last = "$"
    while True:
        result = await client.xread({key: last}, block=1000)
        for _, entries in result or ():
            for entry_id, fields in entries:
                last = entry_id
                probe.arrived(_number(fields["d"]))


def _number(data: str) -> int:
    event = json.loads(data)
    return int(event["data"]["value"] if "data" in event else event["n"])


async def websocket_forever(ws: Any, probe: Probe) -> None:
    async for message in ws:
        event = json.loads(message)
        if event["type"] == "data":
            probe.arrived(int(event["data"]["value"]))


def data_event(run_id: str, n: int) -> dict[str, Any]:
    from agentflow.core import events as ev

    return ev.envelope(ev.DATA, run_id, step=None, attempt=None, epoch=1, data={"label": "bench", "value": n})


async def measure(args: argparse.Namespace, server: AsgiServer, runs: Runs) -> dict[str, Probe]:
    import redis.asyncio as aredis
    import websockets
    from django.conf import settings

    from agentflow import streams

    url = settings.AGENTFLOW["REDIS_URL"]
    writer = aredis.Redis.from_url(url, decode_responses=True)
    reader = aredis.Redis.from_url(url, decode_responses=True)
    raw_run, _ = await asyncio.to_thread(runs.create)
    sink_run, _ = await asyncio.to_thread(runs.create)
    ws_run, token = await asyncio.to_thread(runs.create)
    raw_key = streams.stream_key(raw_run)
    sinks = {}
    for run_id in (sink_run, ws_run):
        claim = await asyncio.to_thread(streams.claim, run_id, 1)
        sinks[run_id] = streams.RedisSink(run_id, 1, claim)

    probes = {name: Probe(name) for name in ("raw", "sink", "agentflow")}
    emitters: dict[str, Callable[[int], Awaitable[None] | None]] = {
        "raw": lambda n: writer.xadd(raw_key, {"d": json.dumps({"n": n})}),
        "sink": lambda n: sinks[sink_run].emit(data_event(sink_run, n)),
        "agentflow": lambda n: sinks[ws_run].emit(data_event(ws_run, n)),
    }
    ws = await websockets.connect(
        server.url(ws_run, token), compression=None, ping_interval=None, max_size=None
    )
    readers = [
        asyncio.create_task(xread_forever(reader, raw_key, probes["raw"])),
        asyncio.create_task(xread_forever(aredis.Redis.from_url(url, decode_responses=True),
                                          streams.stream_key(sink_run), probes["sink"])),
        asyncio.create_task(websocket_forever(ws, probes["agentflow"])),
    ]  # fmt: skip
    try:
        await asyncio.sleep(0.3)  # every reader is blocked, the websocket is live
        n = 0
        per_round = max(1, args.samples // args.rounds)
        for round_no in range(args.rounds + 1):  # round 0 is the warm-up, not kept
            for name, probe in probes.items():
                kept, cpu = len(probe.latencies), server.cpu_seconds()
                for _ in range(per_round if round_no else min(per_round, 100)):
                    n += 1
                    await probe.one(n, emitters[name])
                    await asyncio.sleep(random.uniform(0.0002, 0.002))
                if round_no == 0:
                    del probe.latencies[kept:]
                elif name == "agentflow":
                    probe.server_cpu += server.cpu_seconds() - cpu
        return probes
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await ws.close()
        for sink in sinks.values():
            sink.close(timeout_seconds=5)
        await writer.aclose()
        await reader.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="measured events per configuration")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--deadline", type=float, default=120.0, help="abort after this many seconds")
    args = parser.parse_args()
    arm_deadline(args.deadline)
    started = time.monotonic()
    setup_django()

    runs, server, failed = Runs(), None, True
    try:
        server = AsgiServer()
        ready = server.wait_ready()
        probes = asyncio.run(measure(args, server, runs))

        print("agentflow event latency: emission -> websocket client, against raw XADD -> XREAD")
        print("=" * 100)
        for key, value in environment():
            print(f"  {key:<16} {value}")
        print(f"  {'Server':<16} uvicorn pid {server.pid}, ready after {ready:.2f}s")
        print()
        labels = {
            "raw": "(a) raw XADD -> XREAD",
            "sink": "(b) RedisSink -> XREAD",
            "agentflow": "(c) RedisSink -> hub -> ws",
        }
        for name, probe in probes.items():
            print(f"  {labels[name]:<28} {summary_ms(probe.latencies)}")
        raw, ours = probes["raw"].latencies, probes["agentflow"].latencies
        p50, p99 = percentile(ours, 50), percentile(ours, 99)
        print()
        print(f"  ratio (c)/(a): p50 {p50 / percentile(raw, 50):.2f}x   p99 {p99 / percentile(raw, 99):.2f}x")
        sink = probes["sink"].latencies
        print(
            f"  of which the appender (b)-(a): p50 {(percentile(sink, 50) - percentile(raw, 50)) * 1e3:.3f} ms;"
            f" hub + websocket (c)-(b): p50 {(p50 - percentile(sink, 50)) * 1e3:.3f} ms"
        )
        cpu = probes["agentflow"].server_cpu * 1e6 / len(ours)
        print(f"  server CPU {cpu:.0f} µs per event in (c): hub, consumer, uvicorn (10 ms clock ticks)")
        met = p50 <= 0.002 and p99 <= 0.010
        print(f"  target (c) p50 <= 2 ms and p99 <= 10 ms: {'MET' if met else 'NOT MET'}")
        print(f"\n  elapsed {time.monotonic() - started:.1f}s")
        failed = False
        return 0
    finally:
        tear_down(server, runs, failed)


if __name__ == "__main__":
    sys.exit(main())
