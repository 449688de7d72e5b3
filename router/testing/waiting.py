"""Waiting for state with a deadline: the one way tests and the harness wait for something to happen.

Owns polling a probe until its value satisfies a condition, and failing with `WaitTimeout` that says
what was awaited, for how long, and the last value (or exception) the probe gave. It must not be
used to let time pass: a test that means elapsed time sleeps, and says so in a comment.

The clock and the pause are parameters so that the helpers' own tests run without wall time.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypedDict, TypeVar, Unpack, overload

T = TypeVar("T")
Description: TypeAlias = str | Callable[[], str]  # what is awaited; a callable is evaluated only on failure
Until: TypeAlias = Callable[[T], object]
Probe: TypeAlias = Callable[[], T]

_NOTHING_SEEN = object()


class WaitTimeout(AssertionError):
    """A condition was not met by its deadline. An AssertionError, so pytest reports it as a failure."""

    def __init__(self, what: str, within: float, last: object) -> None:
        if isinstance(last, BaseException):
            seen = f"the probe last raised {type(last).__name__}: {last}"
        elif last is _NOTHING_SEEN:
            seen = "the probe was never called"
        else:
            seen = f"last value seen: {last!r}"
        super().__init__(f"not within {within:g}s: {what}; {seen}")
        self.what, self.within, self.last = what, within, last


class _Looks:
    """What both waits share: the deadline, and the last value or exception the probe gave."""

    def __init__(self, what: str | Callable[[], str], within: float, now: float) -> None:
        self._what, self._within, self._deadline = what, within, now + within
        self.last: object = _NOTHING_SEEN

    def pause(self, now: float, interval: float) -> float:
        """How long to pause before the next look; WaitTimeout when the deadline has passed."""
        remaining = self._deadline - now
        if remaining <= 0:
            raise WaitTimeout(self._what() if callable(self._what) else self._what, self._within, self.last)
        return min(interval, remaining)


def wait_until(
    probe: Callable[[], T],
    what: str | Callable[[], str],
    *,
    within: float,
    until: Callable[[T], object] = bool,
    ignoring: tuple[type[Exception], ...] = (),
    interval: float = 0.02,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], object] = time.sleep,
) -> T:
    """Call `probe` every `interval` seconds until `until(value)` is true; return that value.

    `what` names what is awaited (a callable is evaluated only on failure, e.g. to add a log).
    Exceptions of the `ignoring` types count as "not yet"; any other propagates at once. The probe
    is called once more at the deadline, so a condition met just in time is not reported missing.
    """
    looks = _Looks(what, within, clock())
    while True:
        try:
            looks.last = value = probe()
        except ignoring as exc:
            looks.last = exc
        else:
            if until(value):
                return value
        pause(looks.pause(clock(), interval))


class Pacing(TypedDict, total=False):
    """wait_until_async's optional keywords, as its overloads spell them."""

    ignoring: tuple[type[Exception], ...]
    interval: float
    clock: Callable[[], float] | None


@overload
async def wait_until_async(
    probe: Probe[Awaitable[T]], what: Description, *, within: float, until: Until[T] = ..., **pacing: Unpack[Pacing]
) -> T: ...
@overload
async def wait_until_async(
    probe: Probe[T], what: Description, *, within: float, until: Until[T] = ..., **pacing: Unpack[Pacing]
) -> T: ...


async def wait_until_async(
    probe: Callable[[], Any],
    what: str | Callable[[], str],
    *,
    within: float,
    until: Callable[[Any], object] = bool,
    ignoring: tuple[type[Exception], ...] = (),
    interval: float = 0.02,
    clock: Callable[[], float] | None = None,
) -> Any:
    """`wait_until` for the event loop: the probe may be a plain function or return an awaitable,
    and the pauses let other tasks run. The clock defaults to the running loop's."""
    now = clock if clock is not None else asyncio.get_running_loop().time
    looks = _Looks(what, within, now())
    while True:
        try:
            result = probe()
            value = await result if inspect.isawaitable(result) else result
            looks.last = value
        except ignoring as exc:
            looks.last = exc
        else:
            if until(value):
                return value
        await asyncio.sleep(looks.pause(now(), interval))
