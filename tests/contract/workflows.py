"""The workflows of the contract tests' server: inputs of many shapes, each run over in a moment."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from agentflow import component, workflow


class Address(BaseModel):
    city: str
    zip: str | None = None


@component
def shout(text: str, times: int, mode: str) -> str:
    text = text * times
    return text.upper() if mode == "upper" else text


@workflow(name="contract-echo", description="Echo the input: one step.")
def contract_echo(
    text: str,
    times: Annotated[int, Field(ge=1, le=3)] = 1,
    tags: tuple[str, ...] = (),
    ratio: float = 0.5,
    flag: bool = False,
    mode: Literal["plain", "upper"] = "plain",
    address: Address | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {"text": shout(text, times, mode), "tags": list(tags), "ratio": ratio, "flag": flag, "meta": meta}


@component
def refuse(reason: str) -> str:
    raise RuntimeError(f"refused: {reason}")


@workflow(name="contract-fails")
def contract_fails(reason: str = "no") -> str:
    """Fail at once (a failed run, for resume)."""
    return refuse(reason)
