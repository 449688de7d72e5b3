"""Tenant holds without servers: waiting sessions and their release or expiry, and the drain that
acknowledges a hold, woken by events (a connection coming back, a client leaving), never by polling.
On the virtual clock: waits of seconds take no wall time, and a poll would show as a re-check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from router.core.holds import Holds
from router.errors import RouterError, TenantHeld
from router.testing.virtualtime import in_virtual_time

WAIT = 10.0


class Tenants:
    """Which tenants have a transaction running, counting how often the holds asked."""

    def __init__(self, *busy: str) -> None:
        self.running = set(busy)
        self.asked = 0

    def busy(self, tenant: str) -> bool:
        self.asked += 1
        return tenant in self.running


class Watch:
    """The composition root's side of `watch`: what callback is installed now."""

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None
        self.calls: list[bool] = []

    def __call__(self, callback: Callable[[], None] | None) -> None:
        self.callback = callback
        self.calls.append(callback is not None)


class Session:
    def __init__(self) -> None:
        self.resumed = 0
        self.failed: list[RouterError] = []

    def resume(self) -> None:
        self.resumed += 1

    def fail(self, exc: RouterError) -> None:
        self.failed.append(exc)


def make(*busy: str) -> tuple[Holds, Tenants, Watch]:
    tenants, watch = Tenants(*busy), Watch()
    return Holds(WAIT, tenants.busy, watch), tenants, watch


async def turns(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@in_virtual_time
async def test_a_tenant_not_held_is_not_waited_for() -> None:
    holds, _, _ = make()
    session = Session()
    assert holds.wait_for_release("acme", session.resume, session.fail) is None
    assert holds.held == {}


@in_virtual_time
async def test_sessions_wait_for_the_release_which_resumes_them_at_once() -> None:
    holds, tenants, watch = make()
    await holds.hold("acme")  # nothing running: acknowledged at once, nothing watched
    assert "acme" in holds.held and watch.calls == [] and tenants.asked == 1
    first, second = Session(), Session()
    assert holds.wait_for_release("acme", first.resume, first.fail) is not None
    holds.wait_for_release("acme", second.resume, second.fail)
    assert len(holds.held["acme"]) == 2
    await holds.release("acme")
    assert (first.resumed, second.resumed) == (1, 1)  # in the release itself, not on a later turn
    assert holds.held == {}
    await asyncio.sleep(WAIT * 2)
    assert first.failed == [] and second.failed == []  # their timers went with them


@in_virtual_time
async def test_a_session_waits_no_longer_than_the_wait_timeout() -> None:
    loop = asyncio.get_running_loop()
    holds, _, _ = make()
    await holds.hold("acme")
    session, gone = Session(), Session()
    holds.wait_for_release("acme", session.resume, session.fail)
    ticket = holds.wait_for_release("acme", gone.resume, gone.fail)
    assert ticket is not None
    ticket.cancel()  # that client disconnected
    started = loop.time()
    await asyncio.sleep(WAIT + 0.001)
    assert [type(e) for e in session.failed] == [TenantHeld]
    assert session.failed[0].message == 'tenant "acme" is being moved and did not become available in time'
    assert loop.time() - started == pytest.approx(WAIT, abs=0.01)
    await holds.release("acme")
    assert session.resumed == 0 and gone.resumed == 0 and gone.failed == []


@in_virtual_time
async def test_the_drain_ends_on_the_event_that_ends_the_last_transaction() -> None:
    holds, tenants, watch = make("acme")
    hold = asyncio.get_running_loop().create_task(holds.hold("acme"))
    await turns()
    assert not hold.done() and "acme" in holds.held
    assert watch.callback == holds.changed  # pools report returns while a drain waits
    asked = tenants.asked
    await asyncio.sleep(WAIT / 2)
    assert tenants.asked == asked  # no polling: nothing is re-checked without an event
    holds.changed()  # a connection came back, but acme's transaction still runs
    await turns()
    assert not hold.done() and tenants.asked == asked + 1
    tenants.running.clear()
    holds.changed()
    holds.changed()  # several events in one turn: one re-check
    await turns()
    assert hold.done() and tenants.asked == asked + 2
    await hold
    assert watch.callback is None and watch.calls == [True, False]


@in_virtual_time
async def test_a_drain_that_does_not_end_in_time_fails_and_stops_watching() -> None:
    holds, _, watch = make("acme")
    with pytest.raises(TimeoutError, match="transactions of tenant acme did not finish in time"):
        await holds.hold("acme")
    assert watch.callback is None
    holds.changed()  # nothing to re-check: no error, no call scheduled
    assert "acme" in holds.held  # as before the drain: the coordinator's participant releases it


@in_virtual_time
async def test_drains_of_two_tenants_end_each_on_its_own() -> None:
    holds, tenants, watch = make("acme", "globex")
    loop = asyncio.get_running_loop()
    acme, globex = loop.create_task(holds.hold("acme")), loop.create_task(holds.hold("globex"))
    await turns()
    tenants.running.discard("globex")
    holds.changed()
    await turns()
    assert globex.done() and not acme.done()
    assert watch.callback is not None  # still watching for acme
    tenants.running.clear()
    holds.changed()
    await turns()
    assert acme.done() and watch.callback is None
