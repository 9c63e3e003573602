"""WORKER_GC_FREEZE: a worker process freezes its start-up heap once ready, unless told not to (the wiring in
a real worker: tests/integration/test_engine.py::test_worker_processes_freeze_their_start_up_heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.test import override_settings

from agentflow.tasks import freeze_startup_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process keeps its usual collector


def test_the_heap_is_frozen_once_a_worker_process_is_ready(unfrozen):
    freeze_startup_heap()
    assert gc.get_freeze_count() > 10_000


def test_worker_gc_freeze_false_leaves_the_collector_alone(unfrozen):
    with override_settings(AGENTFLOW={**settings.AGENTFLOW, "WORKER_GC_FREEZE": False}):
        freeze_startup_heap()
    assert gc.get_freeze_count() == 0
