"""Circuit breakers per provider, in each worker process: a provider that keeps failing is skipped a while.

Without one, every call to a provider that is down would first wait for that provider's failure (a time-out
can take long) before falling back. After ``LLM_PROVIDER_FAILURE_THRESHOLD`` consecutive transient failures
(5xx, connection errors, time-outs, cut streams; not 429s, which say the provider is up) a provider's
breaker opens: calls go straight to the next provider for ``LLM_PROVIDER_COOLDOWN_SECONDS``. Then calls try
it again; one more failure opens it again at once, one success closes it. When every provider serving a
model is open, calls try them all in order anyway: skipping them all would fail for sure.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..conf import agentflow_settings


@dataclass(slots=True)
class _State:
    failures: int = 0
    open_until: float = 0.0


class Breakers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}

    def is_open(self, provider: str) -> bool:
        with self._lock:
            state = self._states.get(provider)
            return state is not None and time.monotonic() < state.open_until

    def succeeded(self, provider: str) -> None:
        with self._lock:
            self._states.pop(provider, None)

    def failed(self, provider: str) -> bool:
        """Count a transient failure; return True if it opened the breaker."""
        threshold = int(agentflow_settings.llm_provider_failure_threshold)
        with self._lock:
            state = self._states.setdefault(provider, _State())
            state.failures += 1
            if state.failures < threshold:
                return False
            state.open_until = time.monotonic() + float(agentflow_settings.llm_provider_cooldown_seconds)
            state.failures = threshold - 1  # after the cool-down, one more failure opens it again
            return True

    def reset(self) -> None:
        with self._lock:
            self._states.clear()


breakers = Breakers()
"""This process's breakers (``breakers.reset()`` in tests)."""
