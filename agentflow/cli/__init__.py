"""Subcommands of ``python manage.py agentflow <subcommand>``.

Each module of this package that defines ``add_arguments(parser)`` and ``handle(options, out)`` is a
subcommand named after the module (``doctor.py`` is ``agentflow doctor``), with the module's docstring's first
paragraph as its help. New subcommands are new modules: nothing else needs to know about them.

``handle`` returns the process's exit status (``0`` for success); ``out`` is the command's stdout wrapper.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from types import ModuleType
from typing import Any, Protocol


class Subcommand(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def handle(self, options: dict[str, Any], out: Any) -> int: ...


def subcommands() -> dict[str, ModuleType]:
    """The subcommand modules of this package, by name (modules starting with ``_`` are helpers)."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "handle") and hasattr(module, "add_arguments"):
            found[info.name.replace("_", "-")] = module
    return dict(sorted(found.items()))
