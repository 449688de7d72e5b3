"""The test helpers that replace sleeping: waiting for a condition with a deadline, and the
virtual-clock event loop. Both run here on clocks the test drives, never on wall time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from router.testing.virtualtime import run_in_virtual_time
from router.testing.waiting import WaitTimeout, wait_until, wait_until_async


class FakeClock:
    """A monotonic clock that moves only when the helper pauses; records the pauses."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def counting(values: list[object]) -> Iterator[object]:
    yield from values
    while True:
        yield values[-1]


def test_returns_the_first_value_that_satisfies_the_condition() -> None:
    clock, values = FakeClock(), counting([0, 1, 2, 3, 4])
    got = wait_until(lambda: next(values), "three", within=1.0, until=lambda n: n == 3, clock=clock, pause=clock.pause)
    assert got == 3
    assert clock.pauses == [0.02, 0.02, 0.02]


def test_a_condition_met_at_once_does_not_pause() -> None:
    clock = FakeClock()
    assert wait_until(lambda: "ready", "ready", within=0.0, clock=clock, pause=clock.pause) == "ready"
    assert clock.pauses == []


def test_timeout_names_what_was_awaited_and_the_last_value_seen() -> None:
    clock, values = FakeClock(), counting([1, 2, 3])
    with pytest.raises(WaitTimeout) as info:
        wait_until(
            lambda: next(values),
            "the pool to drain",
            within=0.5,
            until=lambda n: n == 0,
            interval=0.2,
            clock=clock,
            pause=clock.pause,
        )
    assert str(info.value) == "not within 0.5s: the pool to drain; last value seen: 3"
    assert isinstance(info.value, AssertionError)
    # Never sleeps past the deadline, and looks once more when it is reached.
    assert clock.pauses == pytest.approx([0.2, 0.2, 0.1])


def test_a_callable_description_is_built_only_on_failure() -> None:
    clock, built = FakeClock(), []

    def describe() -> str:
        built.append(1)
        return "the log says: ready"

    assert wait_until(lambda: True, describe, within=1.0, clock=clock, pause=clock.pause)
    assert built == []
    with pytest.raises(WaitTimeout, match="the log says: ready; last value seen: False"):
        wait_until(lambda: False, describe, within=0.1, clock=clock, pause=clock.pause)
    assert built == [1]


def test_ignored_exceptions_count_as_not_yet_and_are_reported() -> None:
    clock, attempts = FakeClock(), []

    def connect() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError(111, "Connection refused")
        return "connected"

    assert wait_until(connect, "a connection", within=1.0, ignoring=(OSError,), clock=clock, pause=clock.pause) == (
        "connected"
    )
    assert len(attempts) == 3

    def refused() -> str:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(WaitTimeout, match=r"last raised ConnectionRefusedError: \[Errno 111\] Connection refused$"):
        wait_until(refused, "a connection", within=0.1, ignoring=(OSError,), clock=clock, pause=clock.pause)


def test_other_exceptions_propagate_at_once() -> None:
    clock = FakeClock()

    def broken() -> int:
        raise KeyError("no such tenant")

    with pytest.raises(KeyError):
        wait_until(broken, "a tenant", within=5.0, ignoring=(OSError,), clock=clock, pause=clock.pause)
    assert clock.pauses == []


def test_async_waits_for_awaitable_and_plain_probes_in_loop_time() -> None:
    async def main() -> tuple[float, float, object]:
        loop = asyncio.get_running_loop()
        ready = loop.time() + 1.0
        values = counting([None, None, "row"])

        async def fetch() -> object:
            await asyncio.sleep(0)
            return next(values)

        started = loop.time()
        row = await wait_until_async(fetch, "the row", within=2.0, interval=0.25)
        took = loop.time() - started
        flag = await wait_until_async(lambda: loop.time() >= ready, "one second", within=5.0, interval=0.25)
        return took, loop.time() - started, (row, flag)

    took, total, got = run_in_virtual_time(main())
    assert got == ("row", True)
    assert took == pytest.approx(0.5) and total == pytest.approx(1.0)


def test_async_timeout_reports_the_last_value() -> None:
    async def main() -> None:
        n = iter(range(1000))
        await wait_until_async(lambda: next(n), "ten", within=1.0, until=lambda v: v >= 10, interval=0.25)

    with pytest.raises(WaitTimeout, match=r"^not within 1s: ten; last value seen: 4$"):
        run_in_virtual_time(main())


def test_virtual_clock_fires_timers_in_order_at_their_times() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []

        async def at(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            fired.append((name, loop.time()))

        await asyncio.gather(at("late", 3600.0), at("early", 0.5), at("middle", 60.0))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10.0):
                await asyncio.Event().wait()
        fired.append(("timeout", loop.time()))
        return fired

    assert run_in_virtual_time(main()) == [("early", 0.5), ("middle", 60.0), ("late", 3600.0), ("timeout", 3610.0)]
