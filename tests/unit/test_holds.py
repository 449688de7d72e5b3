"""Tenant holds without servers: waiting sessions and their release or expiry, and the drain that
acknowledges a hold, woken by events (a connection coming back, a client leaving), never by polling;
the record of which tenants were held and for how long; a release that must re-read the tenant's
placement first, retried while the catalog is unreadable. On the virtual clock: waits of seconds
take no wall time, and a poll would show as a re-check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from router.core.holds import Durations, Holds
from router.errors import CatalogUnavailable, RouterError, TenantHeld
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
    assert session.failed[0].message == (
        'tenant "acme" is held (a move\'s cutover, or PAUSE at the admin console) and did not become available in time'
    )
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


# --- the record of holds: held_ever and their durations ------------------------------------------


@in_virtual_time
async def test_every_hold_is_counted_per_tenant_and_timed_from_hold_to_release() -> None:
    holds, tenants, _ = make("acme")
    loop = asyncio.get_running_loop()
    acme = loop.create_task(holds.hold("acme"))
    await asyncio.sleep(0.003)  # acme's transaction runs for 3 ms: the drain is part of the hold
    tenants.running.clear()
    holds.changed()
    await acme
    await asyncio.sleep(0.017)
    await holds.release("acme")  # 20 ms in all
    await holds.hold("globex")
    await asyncio.sleep(3.0)
    await holds.release("globex")
    await holds.hold("acme")
    await holds.release("acme")  # at once
    assert holds.held_ever == {"acme": 2, "globex": 1}
    assert "initech" not in holds.held_ever  # never held: not counted
    durations = holds.hold_seconds
    assert durations.count == 3
    assert durations.sum == pytest.approx(3.02, abs=1e-6)
    cumulative = dict(durations.cumulative())
    assert cumulative[0.005] == 1  # the immediate one
    assert cumulative[0.01] == 1 and cumulative[0.025] == 2  # 20 ms: in the 25 ms bucket
    assert cumulative[2.5] == 2 and cumulative[5.0] == 3  # 3 s
    assert cumulative[float("inf")] == 3 and list(cumulative)[-1] == float("inf")


@in_virtual_time
async def test_a_hold_whose_drain_timed_out_is_still_recorded() -> None:
    holds, _, _ = make("acme")
    with pytest.raises(TimeoutError):
        await holds.hold("acme")
    assert holds.held_ever == {"acme": 1}
    await holds.release("acme")
    assert holds.hold_seconds.count == 1 and holds.hold_seconds.sum == pytest.approx(WAIT)


def test_durations_fall_in_the_bucket_whose_bound_they_reach() -> None:
    durations = Durations((0.1, 1.0))
    for seconds in (0.1, 0.1000001, 1.0, 7.0):
        durations.observe(seconds)
    assert durations.counts == [1, 2, 1]
    assert durations.cumulative() == [(0.1, 1), (1.0, 3), (float("inf"), 4)]
    with pytest.raises(ValueError, match="increasing"):
        Durations((1.0, 0.1))


# --- a release that must re-read the tenant's placement first -----------------------------------


class Placement:
    """What the release must do first: re-read the catalog, which fails `outage` times."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.reads: list[float] = []

    async def read(self) -> None:
        self.reads.append(asyncio.get_running_loop().time())
        if len(self.reads) <= self.outage:
            raise CatalogUnavailable("tenant catalog at 127.0.0.1:5432 is unavailable: connection refused")


@in_virtual_time
async def test_sessions_resume_only_after_the_placement_was_read() -> None:
    holds, _, _ = make()
    await holds.hold("acme")
    session = Session()
    holds.wait_for_release("acme", session.resume, session.fail)
    order: list[str] = []

    async def first() -> None:
        order.append(f"read, {session.resumed} resumed")

    await holds.release("acme", first=first)
    assert order == ["read, 0 resumed"] and session.resumed == 1 and holds.held == {}


@in_virtual_time
async def test_a_release_that_cannot_read_the_catalog_keeps_the_tenant_held_and_retries() -> None:
    loop = asyncio.get_running_loop()
    holds, _, _ = make()
    await holds.hold("acme")
    early, late = Session(), Session()
    holds.wait_for_release("acme", early.resume, early.fail)
    placement = Placement(outage=6)  # 0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 1.0 s of retries
    started = loop.time()
    release = loop.create_task(holds.release("acme", first=placement.read))
    await asyncio.sleep(1.0)
    assert not release.done() and "acme" in holds.held  # still held: nothing resumed on a stale placement
    holds.wait_for_release("acme", late.resume, late.fail)  # a session arriving meanwhile waits too
    await release
    assert [round(t - started, 3) for t in placement.reads] == [0.0, 0.05, 0.15, 0.35, 0.75, 1.55, 2.55]
    assert early.resumed == 1 and late.resumed == 1 and "acme" not in holds.held


@in_virtual_time
async def test_waiting_sessions_fail_by_their_own_timeout_while_the_catalog_stays_unreadable() -> None:
    holds, _, _ = make()
    await holds.hold("acme")
    session = Session()
    holds.wait_for_release("acme", session.resume, session.fail)
    placement = Placement(outage=1000)
    release = asyncio.get_running_loop().create_task(holds.release("acme", first=placement.read))
    await asyncio.sleep(WAIT + 1)
    assert [type(e) for e in session.failed] == [TenantHeld] and session.resumed == 0
    assert "acme" in holds.held and not release.done()
    release.cancel()  # the participant stopping (the router going away)
    await asyncio.wait([release])
