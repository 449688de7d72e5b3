"""The lifecycle every background service of the router shares: start, stop, `async with`, and
the report of a task that dies.

Owns `BackgroundService`, the base of the services that work in asyncio tasks of their own: the
catalog cache, the cluster's instance registry and hold participant, the health monitor and the
shards.yaml file watcher. `start` refuses a second start and runs the service's `_begin` (prepare,
then spawn its tasks with `_spawn`); `stop` cancels every task the service spawned that is still
running, waits until each has ended, then runs the service's `_end` (close what it holds). Services
handle their outages inside their tasks, so a task ending with an exception is a bug: it is logged
at CRITICAL on the service's logger with the service's own message, never passed over in silence.

Must not: know what a service does, retry or restart a task that died, or import anything but
asyncio and logging (it is part of the protocol-agnostic core: no driver, socket or protocol).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, Self


class BackgroundService:
    """Base of a service whose work runs in asyncio tasks; subclasses implement `_begin` and `_end`."""

    def __init__(self, log: logging.Logger) -> None:
        self._service_log = log
        self._spawned: set[asyncio.Task[None]] = set()
        self._started = False

    @property
    def running(self) -> bool:
        """Started and not stopped (its tasks may have died meanwhile: see the CRITICAL log)."""
        return self._started

    async def start(self) -> None:
        """Run `_begin`; if it fails (or is cancelled), cancel what it spawned and re-raise."""
        if self._started:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._started = True
        try:
            await self._begin()
        except BaseException:
            self._started = False
            await self._cancel_spawned()
            raise

    async def stop(self) -> None:
        """Cancel every task this service spawned, wait until they have ended, then run `_end`."""
        self._started = False
        await self._cancel_spawned()
        await self._end()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _begin(self) -> None:
        """Prepare (connect, load) and spawn the service's tasks. `running` is already True here.
        On failure it releases what it took itself; `start` cancels the tasks it spawned."""

    async def _end(self) -> None:
        """Release what the service holds; every task it spawned has ended by now."""

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str, crash_message: str) -> asyncio.Task[None]:
        """Run `coro` as a task of this service: `stop` cancels it and waits for it, and if it ends
        with an exception, `crash_message` is logged at CRITICAL with the traceback."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        task.add_done_callback(functools.partial(report_crash, self._service_log, crash_message))
        return task

    async def _cancel_spawned(self) -> None:
        # Until none is left running: a task being cancelled should not spawn another, but if it
        # did, that one must not outlive the service either.
        while pending := [task for task in self._spawned if not task.done()]:
            await cancel_and_wait(pending)


def report_crash(log: logging.Logger, message: str, task: asyncio.Task[None]) -> None:
    """A done callback: log `message` at CRITICAL if `task` ended with an exception."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.critical(message, exc_info=exc)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until they are done, without swallowing our own cancellation (if the
    caller is cancelled meanwhile, it gets the CancelledError) or raising theirs."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
