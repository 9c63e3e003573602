"""The hub in this process, against the test Redis: the seam between replay and live tail, isolation of slow
subscribers, surviving a lost Redis connection, and waking the reader for new streams."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from agentflow import hub as hub_module
from agentflow import streams
from agentflow.core import events as ev
from agentflow.core.serialization import dumps
from agentflow.hub import Batch, Event, Hub, SubscriptionDropped, get_hub
from agentflow.models import RunStatus, WorkflowRun
from agentflow.sse import event_stream_response, stream_is_over

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WAIT = 5.0  # seconds: the bound of every wait for an event


@pytest.fixture
def run_id(redis_client) -> str:
    return str(WorkflowRun.objects.create(workflow="slow", status=RunStatus.RUNNING).pk)


def append(run_id: str, type: str = ev.STATUS, **data: Any) -> str:
    """XADD one event the way the worker's append script stores it."""
    event = ev.envelope(type, run_id, step=None, attempt=None, epoch=1, data=data)
    return str(streams.get_client().xadd(streams.stream_key(run_id), {"d": dumps(event)}))


def run(main: Callable[[Hub], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(hub)`` in a fresh event loop and close the hub afterwards."""

    async def wrapper() -> None:
        hub = get_hub()
        try:
            await asyncio.wait_for(main(hub), 30)
        finally:
            await hub.aclose()

    asyncio.run(wrapper())


async def ids(subscription, n: int) -> list[str]:
    got = []
    for _ in range(n):
        event = await subscription.get(WAIT)
        assert event is not None, f"no event within {WAIT}s after {got}"
        got.append(event.id)
    return got


async def connected(redis_client, name: str) -> list[dict[str, Any]]:
    """The Redis clients called ``name``, once there is one (bounded: nothing announces a connection)."""
    deadline = time.monotonic() + WAIT
    while not (clients := [c for c in redis_client.client_list() if c["name"] == name]):
        assert time.monotonic() < deadline, f"no Redis client named {name}"
        await asyncio.sleep(0.01)
    return clients


def test_hub_ahead_of_a_replay_is_caught_up_without_gap_or_duplicate(run_id):
    async def main(hub: Hub) -> None:
        e1 = append(run_id)
        async with hub.subscribe(run_id) as a, hub.subscribe(run_id) as b:
            assert await ids(a, 1) == [e1]  # a is live: the hub watches the stream from e1
            await b._replay_page()  # b's history ends at e1...
            e2, e3 = append(run_id), append(run_id)
            assert await ids(a, 2) == [e2, e3]  # ...while the hub already read on to e3
            assert await ids(b, 3) == [e1, e2, e3]  # b fetched the difference when it attached
            e4 = append(run_id)
            assert await ids(b, 1) == [e4] and await ids(a, 1) == [e4]
            e5 = append(run_id, ev.RUN_COMPLETED)
            assert await ids(b, 1) == [e5]
            with pytest.raises(StopAsyncIteration):
                await b.get(WAIT)
            assert b.end_reason == "terminal"

    run(main)


def test_a_replay_ahead_of_the_hub_gets_no_duplicate(run_id):
    async def main(hub: Hub) -> None:
        e1 = append(run_id)
        async with hub.subscribe(run_id) as a:
            assert await ids(a, 1) == [e1]
            e2 = append(run_id)  # nothing awaited: the hub has not read it yet
            async with hub.subscribe(run_id) as b:
                assert await ids(b, 2) == [e1, e2]
                e3 = append(run_id, ev.RUN_COMPLETED)
                assert [event.id async for event in b] == [e3]
            assert await ids(a, 2) == [e2, e3]

    run(main)


def test_every_subscriber_gets_each_event_once(run_id):
    async def main(hub: Hub) -> None:
        first = append(run_id, ev.RUN_STARTED)
        subscriptions = [hub.subscribe(run_id) for _ in range(20)]
        later = [hub.subscribe(run_id, after=first) for _ in range(5)]

        async def producer() -> list[str]:
            appended = []
            for n in range(50):
                appended.append(append(run_id, n=n))
                if n % 7 == 0:
                    await asyncio.sleep(0.005)
            appended.append(append(run_id, ev.RUN_COMPLETED))
            return appended

        async def consume(subscription) -> list[str]:
            async with subscription:
                return [event.id async for event in subscription]

        results = await asyncio.gather(producer(), *(consume(s) for s in subscriptions + later))
        appended = results[0]
        for got in results[1:21]:
            assert got == [first, *appended]
        for got in results[21:]:
            assert got == appended
        assert hub.stats()["subscribers"] == 0

    run(main)


def test_a_future_after_id_does_not_make_the_hub_skip_events(run_id):
    async def main(hub: Hub) -> None:
        e1 = append(run_id)
        async with hub.subscribe(run_id, after="99999999999999-0") as ahead, hub.subscribe(run_id) as a:
            assert await ahead.get(0.2) is None  # attached first, watching from the stream's real end
            e2 = append(run_id)
            assert await ids(a, 2) == [e1, e2]

    run(main)


def test_a_slow_subscriber_is_dropped_without_delaying_the_others(run_id):
    async def main(hub: Hub) -> None:
        first = append(run_id)
        async with hub.subscribe(run_id) as slow, hub.subscribe(run_id) as fast:
            assert await ids(slow, 1) == [first] and await ids(fast, 1) == [first]

            async def producer() -> list[str]:
                appended = []
                for _ in range(20):
                    appended.append(append(run_id))
                    await asyncio.sleep(0.01)
                return appended

            task = asyncio.create_task(producer())
            got = await ids(fast, 20)
            assert got == await task  # never held back by `slow`, which reads nothing meanwhile
            delivered = []
            with pytest.raises(SubscriptionDropped) as dropped:
                while True:
                    event = await slow.get(WAIT)
                    assert event is not None
                    delivered.append(event.id)
            assert dropped.value.reason == "overflow" and "fell 5 events behind" in str(dropped.value)
            assert delivered == got[: len(delivered)] and len(delivered) <= 5
            assert hub.stats()["dropped"] == 1

    with override_settings(AGENTFLOW={**settings.AGENTFLOW, "SUBSCRIBER_QUEUE_SIZE": 5}):
        run(main)


def test_a_sink_takes_live_events_without_waking_the_subscriber(run_id):
    """The websocket's path: every live event is written from the hub's reader; the subscriber's task only
    wakes for the terminal event, which ends the iteration as if it had been taken with get()."""

    async def main(hub: Hub) -> None:
        first = append(run_id)
        sunk: list[str] = []
        async with hub.subscribe(run_id) as sub:
            sub.sink = lambda batch: sunk.extend(e.id for e in batch.events) is None

            async def consume() -> list[str]:
                return [event.id async for event in sub]

            consumer = asyncio.create_task(consume())
            await parked(sub)
            appended = [append(run_id) for _ in range(19)] + [append(run_id, ev.RUN_COMPLETED)]
            taken = await asyncio.wait_for(consumer, WAIT)
            assert taken == [first]  # the history through get(); nothing live
            assert sunk == appended and sub.last_id == appended[-1] and sub.end_reason == "terminal"

    run(main)


def test_events_read_together_reach_a_sink_in_one_batch(run_id):
    """What the reader finds at once (a burst of tokens, or a server that fell behind) is one write per
    subscriber: the batch's frames are its events' frames, joined once for every subscriber."""

    async def main(hub: Hub) -> None:
        append(run_id)
        batches: list[list[str]] = [[], []]
        frames: list[bytes] = []
        async with hub.subscribe(run_id) as a, hub.subscribe(run_id) as b:
            for n, sub in enumerate((a, b)):
                await ids(sub, 1)
                sub.sink = lambda batch, n=n: (
                    batches[n].append([e.id for e in batch.events]) or frames.append(batch.frames) or True
                )
            consumers = [asyncio.create_task(a.get(WAIT)), asyncio.create_task(b.get(WAIT))]
            await parked(a)
            await parked(b)
            pipe = streams.get_client().pipeline(transaction=True)  # one command for Redis: one XREAD reply
            for n in range(5):
                event = ev.envelope(ev.STATUS, run_id, step=None, attempt=None, epoch=1, data={"n": n})
                pipe.xadd(streams.stream_key(run_id), {"d": dumps(event)})
            appended = [str(i) for i in pipe.execute()]
            deadline = time.monotonic() + WAIT
            while not all(batches):
                assert time.monotonic() < deadline, "the sinks got nothing"
                await asyncio.sleep(0.005)
            assert batches == [[appended], [appended]]
            assert frames[0] is frames[1]  # joined once
            entries = streams.get_client().xrange(streams.stream_key(run_id), appended[0], appended[-1])
            assert frames[0] == b"".join(Event.from_entry(i, fields).frame for i, fields in entries)
            for task in consumers:
                task.cancel()

    run(main)


async def parked(sub: Any) -> None:
    """Once ``sub`` delivered its history and waits for live events (bounded)."""
    deadline = time.monotonic() + WAIT
    while not sub._parked:
        assert time.monotonic() < deadline, "the subscription never went live"
        await asyncio.sleep(0.005)


def test_events_a_sink_refuses_keep_their_order(run_id):
    """A sink that cannot write (a client's socket buffer is full) leaves the event queued; nothing it accepts
    later overtakes what is queued, and ready_now() hands the queue over in one batch."""

    async def main(hub: Hub) -> None:
        append(run_id)
        accept = [True]
        delivered: list[str] = []
        sunk = []

        def sink(batch: Batch) -> bool:
            if accept[0]:
                delivered.extend(e.id for e in batch.events)
                sunk.extend(e.id for e in batch.events)
            return accept[0]

        async with hub.subscribe(run_id) as sub:
            await ids(sub, 1)
            sub.sink = sink
            batches: list[int] = []

            async def consume() -> None:
                async for event in sub:
                    batch = [event, *sub.ready_now()]
                    batches.append(len(batch))
                    delivered.extend(e.id for e in batch)
                    await asyncio.sleep(0.02)  # waiting for the socket to drain: new events queue up
                    accept[0] = True

            consumer = asyncio.create_task(consume())
            appended = []
            for n in range(60):
                accept[0] = accept[0] and n % 7 != 3  # the socket fills now and then
                appended.append(append(run_id, n=n))
                if n % 5 == 0:
                    await asyncio.sleep(0.01)
            appended.append(append(run_id, ev.RUN_COMPLETED))
            await asyncio.wait_for(consumer, WAIT)
            assert delivered == appended
            assert 0 < len(sunk) < len(appended) and max(batches) > 1  # what queued up went in one go

    run(main)


def test_ready_now_takes_history_pages_and_stops_where_get_must_look(run_id):
    async def main(hub: Hub) -> None:
        appended = [append(run_id, t) for t in (ev.RUN_STARTED, ev.STATUS, ev.RUN_FAILED, ev.RUN_STARTED)]
        async with hub.subscribe(run_id) as sub:
            first = await sub.get(WAIT)
            assert first is not None and first.id == appended[0]
            # The rest of the page, a terminal event included: get() would return them without waiting.
            assert [e.id for e in sub.ready_now()] == appended[1:]
            assert sub.ready_now() == [] and sub.last_id == appended[-1]
            later = append(run_id, ev.RUN_COMPLETED)
            assert await ids(sub, 1) == [later]

    run(main)


def test_the_reader_survives_a_lost_redis_connection(run_id, redis_client):
    async def main(hub: Hub) -> None:
        e1 = append(run_id)
        async with hub.subscribe(run_id) as sub:
            assert await ids(sub, 1) == [e1]
            name = f"{hub.name}:reader"
            (reader,) = await connected(redis_client, name)
            redis_client.client_kill_filter(_id=reader["id"])
            appended = [append(run_id) for _ in range(5)]
            assert await ids(sub, 5) == appended
            assert hub.stats()["reconnects"] >= 1
            assert [c["name"] for c in redis_client.client_list()].count(name) == 1

    run(main)


def test_a_new_stream_wakes_the_blocked_reader(run_id):
    other = str(WorkflowRun.objects.create(workflow="slow", status=RunStatus.RUNNING).pk)

    async def main(hub: Hub) -> None:
        append(run_id)
        async with hub.subscribe(run_id) as a:
            await ids(a, 1)
            await asyncio.sleep(0.1)  # the reader is now blocked (up to BLOCK_SECONDS) on `run_id` alone
            first = append(other)
            async with hub.subscribe(other) as b:
                assert await ids(b, 1) == [first]
                started = time.monotonic()
                second = append(other)
                assert await ids(b, 1) == [second]
                assert time.monotonic() - started < 1.0 < hub_module.BLOCK_SECONDS
            assert hub.stats()["wakes"] >= 1

    run(main)


def test_a_resumed_run_replays_past_its_first_terminal_event(run_id):
    async def main(hub: Hub) -> None:
        appended = [
            append(run_id, t)
            for t in (ev.RUN_STARTED, ev.RUN_FAILED, ev.RUN_STARTED, ev.OUTPUT, ev.RUN_COMPLETED)
        ]
        async with hub.subscribe(run_id) as sub:
            assert [event.id async for event in sub] == appended

    run(main)


def test_archive_when_the_stream_is_gone(run_id):
    from agentflow.archive import archive_events

    appended = [append(run_id, t) for t in (ev.RUN_STARTED, ev.STATUS, ev.OUTPUT, ev.RUN_COMPLETED)]
    archive_events(run_id)
    streams.get_client().delete(streams.stream_key(run_id))
    WorkflowRun.objects.filter(pk=run_id).update(status=RunStatus.COMPLETED)

    async def main(hub: Hub) -> None:
        async with hub.subscribe(run_id, after=appended[0]) as sub:
            assert [event.id async for event in sub] == appended[1:]
        assert hub.stats()["streams"] == 0  # served from the DB without watching anything

    run(main)


def test_archive_pages_of_every_size_replay_the_exact_history(run_id, monkeypatch):
    """A first page of PAGE events (a quick first byte), then pages of ARCHIVE_PAGE, from any ``after``."""
    from asgiref.sync import sync_to_async

    from agentflow.archive import archive_events, archived_events

    monkeypatch.setattr(hub_module, "PAGE", 3)
    monkeypatch.setattr(hub_module, "ARCHIVE_PAGE", 5)
    appended = [append(run_id, ev.RUN_STARTED)] + [append(run_id, n=n) for n in range(13)]
    # Whatever a step id, a label or a value can hold must come out as the same JSON.
    odd = ev.envelope(
        ev.DATA,
        run_id,
        step='a"b\\c/d#0\n',
        attempt=2,
        epoch=3,
        data={"ünï": ['"', "\\", "\u0001\t", 1.5, None, "🦦"]},
    )
    appended.append(str(streams.get_client().xadd(streams.stream_key(run_id), {"d": dumps(odd)})))
    appended.append(append(run_id, ev.RUN_COMPLETED))
    archive_events(run_id)
    streams.get_client().delete(streams.stream_key(run_id))
    WorkflowRun.objects.filter(pk=run_id).update(status=RunStatus.COMPLETED)

    async def main(hub: Hub) -> None:
        for start in (None, 0, 2, 7, 13, 15):
            after = appended[start] if start is not None else None
            async with hub.subscribe(run_id, after=after) as sub:
                got = [event async for event in sub]
            assert [e.id for e in got] == appended[(start + 1) if start is not None else 0 :]
            # The JSON PostgreSQL builds is the events the ORM reads (a differently written counterpart).
            expected = await sync_to_async(archived_events)(run_id, after=after)
            assert [e.as_dict() for e in got] == expected

    run(main)


def test_archive_then_stream_when_the_stream_lost_its_older_events(run_id):
    """A Redis restarted without persistence: the archive has the older events, the stream the newer ones."""
    from agentflow.archive import archive_events, history

    older = [append(run_id, t) for t in (ev.RUN_QUEUED, ev.RUN_STARTED, ev.STATUS)]
    archive_events(run_id)
    streams.get_client().delete(streams.stream_key(run_id))
    newer = [append(run_id, t) for t in (ev.STATUS, ev.OUTPUT)]
    everything = older + newer
    assert [e["id"] for e in history(run_id)] == everything
    assert [e["id"] for e in history(run_id, after=older[0], limit=3)] == everything[1:4]
    assert [e["id"] for e in history(run_id, after=older[-1])] == newer

    async def main(hub: Hub) -> None:
        async with hub.subscribe(run_id) as sub:
            assert await ids(sub, 5) == everything
            last = append(run_id, ev.RUN_COMPLETED)
            assert await ids(sub, 1) == [last]  # then live
        async with hub.subscribe(run_id, after=older[1]) as sub:
            assert await ids(sub, 4) == [*everything[2:], last]
        async with hub.subscribe(run_id, after=newer[0]) as sub:
            assert await ids(sub, 2) == [newer[1], last]

    run(main)


def test_closing_the_hub_drops_its_subscribers(run_id):
    async def main(hub: Hub) -> None:
        first = append(run_id)
        async with hub.subscribe(run_id) as live:
            assert await ids(live, 1) == [first]
            waiting = asyncio.create_task(live.get(WAIT))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await hub.aclose()
            assert time.monotonic() - started < 1.0  # the blocked reader is cancelled, not waited for
            with pytest.raises(SubscriptionDropped) as dropped:
                await waiting
            assert dropped.value.reason == "closed"
        with pytest.raises(RuntimeError):
            hub.subscribe(run_id)
        assert get_hub() is not hub  # the loop gets a new one

    run(main)


def test_malformed_after_is_a_value_error(run_id):
    async def main(hub: Hub) -> None:
        with pytest.raises(ValueError):
            hub.subscribe(run_id, after="nope")

    run(main)


def test_event_json_matches_the_parsed_entry():
    fields = {"d": dumps(ev.envelope(ev.DATA, "r", step="s#0", attempt=1, epoch=2, data={"v": 'ünï \n"q"'}))}
    event = Event.from_entry("1700000000000-3", fields)
    assert event.type == ev.DATA and event.key == (1700000000000, 3)
    assert json.loads(event.json) == streams.parse_entry("1700000000000-3", fields) == event.as_dict()
    assert "\n" not in event.json  # one SSE data line
    odd = Event.from_entry("1-0", {"d": json.dumps({"run": "r", "type": "status", "data": {}})})
    assert odd.type == "status" and json.loads(odd.json)["id"] == "1-0"


def test_event_stream_response_without_io():
    response = event_stream_response("6264b0ba-42d6-47b5-b38d-28ef6a1975c1", None)
    assert response.is_async and response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache" and response["X-Accel-Buffering"] == "no"
    with pytest.raises(ValueError):
        event_stream_response("6264b0ba-42d6-47b5-b38d-28ef6a1975c1", "bad")


def test_stream_is_over():
    finished = WorkflowRun(status=RunStatus.COMPLETED, last_event_id="5-0")
    assert stream_is_over(finished, "5-0") and stream_is_over(finished, "6-0")
    assert not stream_is_over(finished, "4-9") and not stream_is_over(finished, None)
    assert not stream_is_over(WorkflowRun(status=RunStatus.RUNNING, last_event_id="5-0"), "5-0")
