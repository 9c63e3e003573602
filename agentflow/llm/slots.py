"""Concurrency limits for provider calls, usable from threads and from any number of event loops at once.

A run's limit is shared by its async tasks and, when sync components fan out, its threads; a worker's limit
by every run the process executes, each on its own event loop. ``asyncio.Semaphore`` belongs to one loop
and ``threading.Semaphore`` blocks a loop, so this is both: waiters are served in arrival order, a freed
slot is handed straight to the next one (a thread's event, or a loop's future set thread-safely).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Slots:
    def __init__(self, limit: int) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise TypeError(f"a concurrency limit must be an int >= 1, not {limit!r}")
        self.limit = limit
        self.in_use = 0
        self._lock = threading.Lock()
        self._waiters: collections.deque[Any] = collections.deque()

    def _take(self) -> bool:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return True
        return False

    def acquire(self, check: Callable[[], None] | None = None) -> None:
        """Take a slot, blocking; ``check()`` runs every half second and may raise to stop waiting."""
        with self._lock:
            if self._take():
                return
            event = threading.Event()
            self._waiters.append(event)
        while not event.wait(0.5):
            if check is None:
                continue
            try:
                check()
            except BaseException:
                with self._lock:
                    if event in self._waiters:
                        self._waiters.remove(event)
                        raise
                self.release()  # the slot was handed over meanwhile: give it back
                raise

    @contextlib.contextmanager
    def held(self, check: Callable[[], None] | None = None) -> Iterator[None]:
        """``with slots.held(check):`` a slot for the block (see :meth:`acquire`)."""
        self.acquire(check)
        try:
            yield
        finally:
            self.release()

    async def aacquire(self) -> None:
        with self._lock:
            if self._take():
                return
            future = asyncio.get_running_loop().create_future()
            entry = (future.get_loop(), future)
            self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)
            # Otherwise the hand-over is under way: _grant sees the cancelled future and releases.
            raise

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if isinstance(waiter, threading.Event):
                    waiter.set()
                    return
                loop, future = waiter
                if loop.is_closed():
                    continue
                loop.call_soon_threadsafe(self._grant, future)
                return
            self.in_use -= 1

    def _grant(self, future: asyncio.Future[None]) -> None:
        if future.done():  # cancelled while the slot was on its way
            self.release()
        else:
            future.set_result(None)

    def __enter__(self) -> Slots:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    async def __aenter__(self) -> Slots:
        await self.aacquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
