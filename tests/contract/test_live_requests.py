"""Requests that only a real server shows: bodies without a Content-Length, and clients racing with one
Idempotency-Key (on PostgreSQL, through uvicorn, as deployed)."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agentflow.models import WorkflowRun

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TIMEOUT = httpx.Timeout(30.0)


def headers(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}", "Content-Type": "application/json", **more}


def test_a_chunked_body_is_the_runs_input(contract_server, token):
    # It was taken for no body at all: the run started with the default input.
    def body() -> Iterator[bytes]:
        yield b'{"text": "chun'
        yield b'ky", "times": 2}'

    response = httpx.post(
        f"{contract_server.http}/api/workflows/contract-echo/runs/",
        content=body(),
        headers=headers(token),
        timeout=TIMEOUT,
    )
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 202, response.text
    assert response.json()["input"]["text"] == "chunky"
    assert WorkflowRun.objects.get(pk=response.json()["id"]).input["times"] == 2


def test_chunked_garbage_over_the_limit_is_413(contract_server, token):
    # 50 MB of it was accepted with 202: the limit only ever looked at Content-Length.
    chunk = b"garbage " * 8192

    def body() -> Iterator[bytes]:
        for _ in range(16 * 2**20 // len(chunk)):
            yield chunk

    response = httpx.post(
        f"{contract_server.http}/api/workflows/contract-echo/runs/",
        content=body(),
        headers=headers(token),
        timeout=TIMEOUT,
    )
    assert response.status_code == 413, response.text
    assert response.json() == {
        "code": "payload_too_large",
        "message": "The request body is larger than 1048576 bytes.",
        "details": {"max_bytes": 1048576},
    }
    assert not WorkflowRun.objects.exists()


def test_malformed_chunked_framing_is_refused_by_the_server(contract_server, token):
    request = (
        "POST /api/workflows/contract-echo/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Token {token}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\nnot-a-size\r\n{}\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", contract_server.port), timeout=10) as sock:
        sock.sendall(request.encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 400"), status_line
    assert not WorkflowRun.objects.exists()


def test_parameters_of_the_other_format_are_checked_for_an_event_stream_too(contract_server, token):
    # Each applies to JSON only, but the schema bounds it whatever the format: it was ignored.
    run = contract_server.http + "/api/workflows/contract-echo/run/"
    response = httpx.post(run + "?timeout=-1&format=sse", json={"text": "a"}, headers=headers(token))
    assert response.status_code == 400 and response.headers["Content-Type"] == "text/event-stream"
    assert '"code": "invalid_parameter"' in response.text
    assert not WorkflowRun.objects.exists()
    started = httpx.post(
        f"{contract_server.http}/api/workflows/contract-echo/runs/",
        json={"text": "a"},
        headers=headers(token),
    )
    events = f"{contract_server.http}/api/runs/{started.json()['id']}/events/"
    for query in ("?format=sse&limit=0", "?format=sse&limit="):
        response = httpx.get(events + query, headers=headers(token), timeout=TIMEOUT)
        assert response.status_code == 400, (query, response.text)
    response = httpx.get(events + "?format=sse", headers=headers(token), timeout=TIMEOUT)
    assert response.status_code == 200 and "event: run.completed" in response.text


ROUNDS = 5
PARALLEL = 16


def test_racing_starts_with_one_key_never_answer_with_the_other_inputs_run(contract_server, token):
    """16 requests at once with one new key and two bodies, 5 rounds: one run per key; each request gets
    that run if its body is the run's input, else 422 idempotency_key_reused. (In 3 of 5 rounds, some got
    202 with the other body's run: the loser of the insert race took the winner's run unchecked.)"""
    bodies = [{"text": "left"}, {"text": "right"}]
    url = f"{contract_server.http}/api/workflows/contract-echo/runs/"
    clients = [httpx.Client(timeout=TIMEOUT) for _ in range(PARALLEL)]
    try:
        for client in clients:  # connections open before the race, so that the requests start together
            assert (
                client.get(f"{contract_server.http}/api/workflows/", headers=headers(token)).status_code
                == 200
            )
        for round_ in range(ROUNDS):
            key = f"race-{round_}-{uuid.uuid4().hex}"
            barrier = threading.Barrier(PARALLEL)

            def start(
                index: int, key: str = key, barrier: threading.Barrier = barrier
            ) -> tuple[dict, httpx.Response]:
                body = bodies[index % 2]
                barrier.wait(timeout=30)
                return body, clients[index].post(
                    url, json=body, headers=headers(token, **{"Idempotency-Key": key})
                )

            with ThreadPoolExecutor(PARALLEL) as pool:
                results = list(pool.map(start, range(PARALLEL)))

            run = WorkflowRun.objects.get(idempotency_key=key)  # exactly one
            for body, response in results:
                if body["text"] == run.input["text"]:
                    assert response.status_code in (200, 202), response.text
                    assert response.json()["id"] == str(run.pk)
                    assert response.json()["input"]["text"] == body["text"]
                else:
                    assert response.status_code == 422, (round_, body, response.text)
                    assert response.json()["code"] == "idempotency_key_reused"
                    assert response.json()["details"] == {"run": str(run.pk)}
    finally:
        for client in clients:
            client.close()
