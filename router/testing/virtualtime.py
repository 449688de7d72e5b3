"""An event loop on a virtual clock, for unit tests of code that schedules by `loop.time()`.

Owns the clock of one asyncio loop: it starts at 0 and moves only when every task waits for a
timer, jumping straight to the earliest one. Timers therefore fire in their exact order and at
their exact virtual times, however loaded the machine is, and a test "waits" 30 s in no wall time.
Sockets, threads and subprocesses still work, but time spent waiting for them does not move the
clock: the loop is meant for code whose only waits are timers and in-process events.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; when nothing is ready, moves the clock by the loop's timeout instead."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if events or timeout is None:
            # No timer pending: nothing could move the clock, so wait for I/O in real time.
            return events or super().select(timeout)
        self._clock.now += timeout
        return events


class VirtualClock:
    now: float = 0.0


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """`loop.time()` is the virtual clock; `asyncio.sleep`, `asyncio.timeout` and `call_later` follow it."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        super().__init__(selector=_JumpingSelector(self.clock))

    def time(self) -> float:
        return self.clock.now


def run_in_virtual_time(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh VirtualTimeLoop (a test's own loop, closed afterwards)."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


def in_virtual_time(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Decorate an async test to run on its own VirtualTimeLoop; pytest sees a plain test function
    with the same parameters (fixtures), so no plugin's loop is involved."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        run_in_virtual_time(test(*args, **kwargs))

    return run
