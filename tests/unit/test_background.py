"""The lifecycle of background services (router/core/background.py), without sockets: start, stop,
`async with`, a failed start, and the report of a task that dies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from router.core.background import BackgroundService, cancel_and_wait

LOGGER = "tests.background"


async def idle() -> None:
    """Wait until cancelled."""
    await asyncio.Event().wait()


class Service(BackgroundService):
    """A service whose `_begin` spawns `workers` tasks that run until cancelled, and records what
    happens to it in `events`."""

    def __init__(self, workers: int = 1, *, fail_begin: bool = False) -> None:
        super().__init__(logging.getLogger(LOGGER))
        self.workers = workers
        self.fail_begin = fail_begin
        self.events: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def _begin(self) -> None:
        self.events.append(f"begin running={self.running}")
        for index in range(self.workers):
            self.tasks.append(self.spawn(self._work(index), f"worker {index}"))
        await asyncio.sleep(0)  # let the workers start
        if self.fail_begin:
            raise ConnectionError("catalog unreachable")

    async def _end(self) -> None:
        # Every task must have ended before the service releases what it holds.
        self.events.append(f"end, all done={all(task.done() for task in self.tasks)}")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self._spawn(coro, name=name, crash_message=f"{name} died; nothing works any more")

    async def _work(self, index: int) -> None:
        try:
            await idle()
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # a task that takes a while to wind down is still waited for
            self.events.append(f"worker {index} wound down")
            raise


async def test_start_runs_begin_and_stop_cancels_and_waits_before_end() -> None:
    service = Service(workers=2)
    assert not service.running
    await service.start()
    assert service.running
    assert not any(task.done() for task in service.tasks)
    await service.stop()
    assert not service.running
    assert all(task.cancelled() for task in service.tasks)
    first, *wound_down, last = service.events
    assert first == "begin running=True"
    assert sorted(wound_down) == ["worker 0 wound down", "worker 1 wound down"]  # in any order
    assert last == "end, all done=True"


async def test_a_second_start_is_refused_until_stopped() -> None:
    service = Service()
    await service.start()
    try:
        with pytest.raises(RuntimeError, match="Service already started"):
            await service.start()
        assert len(service.tasks) == 1
    finally:
        await service.stop()
    await service.start()  # a stopped service may start again
    await service.stop()
    assert len(service.tasks) == 2 and all(task.cancelled() for task in service.tasks)


async def test_async_with_starts_and_stops() -> None:
    async with Service() as service:
        assert service.running
        task = service.tasks[0]
        assert not task.done()
    assert not service.running and task.cancelled()
    assert service.events[-1] == "end, all done=True"


async def test_stopping_twice_or_unstarted_is_harmless() -> None:
    service = Service()
    await service.stop()
    await service.start()
    await service.stop()
    await service.stop()
    assert service.events.count("end, all done=True") == 3


async def test_a_failed_start_cancels_what_it_spawned_and_can_be_retried() -> None:
    service = Service(workers=2, fail_begin=True)
    with pytest.raises(ConnectionError, match="catalog unreachable"):
        await service.start()
    assert not service.running
    assert all(task.cancelled() for task in service.tasks)
    assert "worker 1 wound down" in service.events
    service.fail_begin = False
    async with service:
        assert service.running


async def test_a_task_that_dies_is_reported_at_critical_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def crash() -> None:
        raise ZeroDivisionError("a bug")

    service = Service(workers=0)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with service:
            task = service.spawn(crash(), "refresher")
            await asyncio.wait([task])
            await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.CRITICAL
    assert record.getMessage() == "refresher died; nothing works any more"
    assert record.exc_info is not None and isinstance(record.exc_info[1], ZeroDivisionError)


async def test_tasks_that_end_normally_or_are_cancelled_are_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    async def finish() -> None:
        await asyncio.sleep(0)

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with Service() as service:
            done = service.spawn(finish(), "finisher")
            await asyncio.wait([done])
        # stop() cancelled the worker: cancellation is how a service ends, not a crash.
    assert service.tasks[0].cancelled()
    assert [r for r in caplog.records if r.name == LOGGER] == []


async def test_stop_neither_raises_a_crash_nor_waits_for_finished_tasks(caplog: pytest.LogCaptureFixture) -> None:
    async def crash() -> None:
        raise ValueError("bug")

    service = Service(workers=0)
    await service.start()
    with caplog.at_level(logging.CRITICAL, logger=LOGGER):
        task = service.spawn(crash(), "crasher")
        await asyncio.wait([task])
        await service.stop()  # the crash was reported, not re-raised here
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


async def test_stop_waits_for_a_task_spawned_while_stopping() -> None:
    service = Service(workers=0)
    late: list[asyncio.Task[None]] = []

    async def spawns_when_cancelled() -> None:
        try:
            await idle()
        finally:
            late.append(service.spawn(idle(), "late"))

    await service.start()
    service.spawn(spawns_when_cancelled(), "spawner")
    await asyncio.sleep(0)
    await service.stop()
    assert len(late) == 1 and late[0].cancelled()


async def test_stop_does_not_swallow_its_own_cancellation() -> None:
    service = Service()
    await service.start()
    stopping = asyncio.create_task(service.stop())
    await asyncio.sleep(0)  # stop() is now waiting for the worker to wind down
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await asyncio.wait(service.tasks)  # the worker was cancelled all the same


async def test_cancel_and_wait_returns_at_once_for_finished_tasks() -> None:
    async def nothing() -> None:
        pass

    task = asyncio.create_task(nothing())
    await task
    await cancel_and_wait([task])
    await cancel_and_wait([])
    assert task.done() and not task.cancelled()
