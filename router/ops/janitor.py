"""The janitor: the one owner of the router's periodic housekeeping.

Once a second it closes pooled server connections past their idle timeout or lifetime; every
other second it counts the live router processes (per-tenant limits are shared among them). Anything
else that must run on a timer belongs here too, so timers never hide inside sessions or pools.
It sees the router as `Housekept` (the composition root satisfies it): it must not import router.app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from router.core.pool import Pool

log = logging.getLogger(__name__)

INTERVAL = 1.0
MEMBERSHIP_EVERY = 2  # ticks between counts of live router processes


class Housekept(Protocol):
    async def refresh_membership(self) -> None: ...

    def iter_pools(self) -> Iterator[Pool]: ...


class Janitor:
    def __init__(self, router: Housekept) -> None:
        self._router = router
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(INTERVAL)
            tick += 1
            if tick % MEMBERSHIP_EVERY == 0:
                await self._router.refresh_membership()
            now = time.monotonic()
            for pool in self._router.iter_pools():
                closed = pool.reap(now)
                if closed:
                    log.debug("closed %d idle server connections of %s", closed, pool.key.label)
