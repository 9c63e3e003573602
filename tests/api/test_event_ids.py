"""Event ids from clients (``after``, ``Last-Event-ID``): whatever passes ``streams.split_id`` is an id Redis
takes as the exclusive start of a range, so no malformed or out-of-range id reaches Redis as a 500 or a 503."""

from __future__ import annotations

import pytest

from agentflow import streams
from agentflow.hub import Hub
from tests.api.conftest import url

OUT_OF_RANGE = [
    "18446744073709551616-0",  # 2**64
    "1-18446744073709551616",
    "18446744073709551615-18446744073709551615",  # the largest id: Redis refuses "(" + it
    "9" * 30 + "-0",
    "0" * 100 + "1-0",  # too long to be an id, although Redis would read it
]


@pytest.mark.parametrize("after", OUT_OF_RANGE)
def test_ids_redis_cannot_take_are_malformed(after):
    with pytest.raises(ValueError, match="event id"):
        streams.split_id(after)


def test_the_edges_of_the_range_are_ids():
    assert streams.split_id("0-0") == (0, 0)
    assert streams.split_id("18446744073709551615-0") == (2**64 - 1, 0)
    assert streams.split_id("5-18446744073709551615") == (5, 2**64 - 1)
    assert streams.split_id("007-01") == (7, 1)


def test_a_subscription_refuses_them():
    with pytest.raises(ValueError):
        Hub().subscribe("run", after=OUT_OF_RANGE[0])


@pytest.mark.django_db
@pytest.mark.parametrize("after", OUT_OF_RANGE[:3])
@pytest.mark.parametrize("where", ["json", "sse after", "sse Last-Event-ID"])
def test_the_rest_api_answers_400_for_a_running_run(api, alice, make_run, after, where):
    """A running run's history is read from Redis: these were a 503 (JSON) or a torn stream (SSE)."""
    run = make_run(alice, status="running")
    headers = {} if where == "json" else {"HTTP_ACCEPT": "text/event-stream"}
    if where == "sse Last-Event-ID":
        response = api.get(url("run-events", run.pk), HTTP_LAST_EVENT_ID=after, **headers)
    else:
        response = api.get(url("run-events", run.pk), {"after": after}, **headers)
    assert response.status_code == 400
    assert b'"invalid_event_id"' in response.content
