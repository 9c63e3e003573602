"""Print agentflow's version."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def handle(options: dict[str, Any], out: Any) -> int:
    import agentflow

    out.write(agentflow.__version__)
    return 0
