"""Workflows of the chaos tests (tests/chaos): steps that stream output and count their executions per epoch
in Redis, so a test can tell which incarnation ran what, and compute the output a run that never failed
produces without running one."""

from __future__ import annotations

import time
from typing import Any

import agentflow
from agentflow import component, workflow

from .workflows import count, effects


def chunk_text(index: int, chunk: int) -> str:
    return f"<{index}.{chunk}>"


def piece_text(index: int, chunks: int) -> str:
    """Everything piece ``index`` streams, in order."""
    return "".join(chunk_text(index, chunk) for chunk in range(chunks))


def expected_chaos_stream(tag: str, rounds: int, width: int, chunks: int) -> dict[str, Any]:
    """What ``chaos_stream`` produces when nothing fails: its output, each step's streamed text (by step
    id), and its workflow-level statuses."""
    steps = rounds * width
    return {
        "output": {"tag": tag, "total": sum(index * index for index in range(steps))},
        "texts": {f"chaos_piece#{index}": piece_text(index, chunks) for index in range(steps)},
        "statuses": [f"round {r}" for r in range(rounds)],
    }


@component
def chaos_piece(item: dict[str, Any]) -> int:
    """Counts its execution under the incarnation (epoch) and attempt running it, then streams ``chunks``
    chunks. With ``flaky``, a first attempt fails half-way (its partial output is void: ``step.retrying``)."""
    step = agentflow.current_step()
    epoch, attempt = (step.epoch, step.attempt) if step is not None else (0, 1)
    count(item["tag"], f"piece-{item['index']}@{epoch}.{attempt}")
    for chunk in range(item["chunks"]):
        if item.get("flaky") and attempt == 1 and chunk == item["chunks"] // 2:
            raise ConnectionError(f"piece {item['index']}: provider dropped the stream")
        agentflow.stream_output(chunk_text(item["index"], chunk))
        time.sleep(item["delay_seconds"])
    return int(item["index"]) ** 2


def is_flaky(index: int, flaky_every: int) -> bool:
    return flaky_every > 0 and index % flaky_every == 0


@workflow
async def chaos_stream(
    tag: str,
    rounds: int = 3,
    width: int = 2,
    chunks: int = 4,
    delay_seconds: float = 0.05,
    flaky_every: int = 0,
) -> dict[str, Any]:
    """``rounds`` rounds of ``width`` concurrent streaming steps (``chaos_piece#<n>``, n = round * width + k);
    with ``flaky_every`` = m > 0, the first attempt of every m-th piece fails half-way and is retried."""
    piece = chaos_piece.retry(max_attempts=2, initial_delay_seconds=0.01, jitter=False)
    total = 0
    for r in range(rounds):
        agentflow.status(f"round {r}")
        items = [
            {
                "tag": tag,
                "index": r * width + k,
                "chunks": chunks,
                "delay_seconds": delay_seconds,
                "flaky": is_flaky(r * width + k, flaky_every),
            }
            for k in range(width)
        ]
        total += sum(await agentflow.map(piece, items))
    return {"tag": tag, "total": total}


@component
def tick(tag: str, i: int) -> int:
    """A small sub-step; every third one fails (and is swallowed by its caller)."""
    count(tag, "tick")
    time.sleep(0.05)
    if i % 3 == 0:
        raise ValueError(f"tick {i} failed")
    return i


def _swallowing(tag: str, iterations: int) -> int:
    done = 0
    for i in range(iterations):
        try:  # noqa: SIM105 - the point: user code that swallows every Exception
            done += tick(tag, i)
        except Exception:
            pass
    return done


@component
def swallowing_loop(tag: str, iterations: int) -> int:
    """A step whose loop of sub-steps swallows every ``Exception``."""
    return _swallowing(tag, iterations)


@workflow
def swallow_cancel(tag: str, iterations: int = 400, in_body: bool = False) -> int:
    """The swallowing loop in a step (``swallowing_loop#0/tick#i``) or in the workflow body (``tick#i``)."""
    if in_body:
        return _swallowing(tag, iterations)
    return swallowing_loop(tag, iterations)


def resume_gate_key(tag: str) -> str:
    return f"agentflow-tests:resume-gate:{tag}"


@component
def mark(index: int, chunk: int) -> int:
    """A sub-step between two chunks: a step boundary, where a cancellation stops the piece calling it."""
    return chunk


@component
def gated_piece(item: dict[str, Any]) -> int:
    """Streams ``chunks`` chunks with a sub-step after each; a ``gated`` piece fails half-way (every attempt)
    until the test opens its tag's gate."""
    step = agentflow.current_step()
    epoch, attempt = (step.epoch, step.attempt) if step is not None else (0, 1)
    count(item["tag"], f"piece-{item['index']}@{epoch}.{attempt}")
    for chunk in range(item["chunks"]):
        if (
            item["gated"]
            and chunk == item["chunks"] // 2
            and not effects().exists(resume_gate_key(item["tag"]))
        ):
            raise RuntimeError(f"piece {item['index']}: the gate is closed")
        agentflow.stream_output(chunk_text(item["index"], chunk))
        mark(item["index"], chunk)
        time.sleep(item["delay_seconds"])
    return int(item["index"]) ** 2


@workflow(name="resumable-stream")
async def resumable_stream(
    tag: str, width: int = 3, chunks: int = 6, delay_seconds: float = 0.05, gated: list[int] | None = None
) -> dict[str, Any]:
    """``width`` concurrent streaming steps (``gated_piece#<n>``); the ``gated`` ones fail half-way for good
    (two attempts) until the test opens the gate, then the run is resumed. Or a test cancels it mid-stream."""
    piece = gated_piece.retry(max_attempts=2, initial_delay_seconds=0.01, jitter=False)
    agentflow.status("streaming")
    items = [
        {
            "tag": tag,
            "index": index,
            "chunks": chunks,
            "delay_seconds": delay_seconds,
            "gated": index in (gated or []),
        }
        for index in range(width)
    ]
    return {"tag": tag, "total": sum(await agentflow.map(piece, items))}
