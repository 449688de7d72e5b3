"""Tenant holds in one router process: while a coordinator (rebalance cutover, migration) holds a
tenant, its new transactions wait; the hold is acknowledged once those running have ended.

Owns: which tenants are held here (`held`, the dict sessions consult before a checkout), the
tickets of sessions waiting for a release (each failing with TenantHeld after the wait timeout),
and the drain: `hold` returns once no transaction of the tenant runs. The drain is event-driven:
whoever can end a transaction (a pool taking a connection back, a client changing tenant or
leaving) calls `changed`, and the drain re-checks then, never on a timer of its own. Also the
record of holds for metrics and the admin API: which tenants were ever held here and how often
(`held_ever`), and how long each hold lasted (`hold_seconds`), plain fields read at scrape time.

A release may have to wait for something first (`release(tenant, first=...)`: the composition root
re-reads the tenant's placement, which a move has just switched): the waiting sessions resume only
once it succeeded, so they never run where the tenant no longer is.

Must not: know how sessions or connections look (`busy` answers whether a tenant has a
transaction running), talk to the catalog (router.catalog.cluster does, and calls `hold` and
`release`), or import any protocol or network code.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from router.errors import RouterError, TenantHeld

log = logging.getLogger(__name__)

__all__ = ["HOLD_SECONDS_BUCKETS", "Durations", "HoldTicket", "Holds"]

# Upper bounds (seconds) of the hold-duration histogram's buckets; a cutover aims at < 0.25 s.
HOLD_SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Retrying what must precede a release: the first wait, and the longest.
RELEASE_RETRY_FIRST: Final = 0.05
RELEASE_RETRY_MAX: Final = 1.0


class Durations:
    """A histogram of durations in seconds: counts per bucket (`counts[i]`: at most `bounds[i]` and
    more than the bound before; the last: above every bound), their sum and number."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at most that long) per bucket, the last bound infinite."""
        result: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            result.append((bound, total))
        return result


class HoldTicket:
    """A session waiting for its tenant's hold to be released."""

    __slots__ = ("_fail", "_resume", "done", "timer")

    def __init__(self, resume: Callable[[], None], fail: Callable[[RouterError], None]) -> None:
        self._resume = resume
        self._fail = fail
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def resume(self) -> None:
        if not self.done:
            self.cancel()
            self._resume()

    def expire(self, exc: RouterError) -> None:
        if not self.done:
            self.cancel()
            self._fail(exc)

    def cancel(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()


class Holds:
    """The holds of this process. `busy(tenant)`: whether a transaction of the tenant runs now.
    `watch(callback)`: have `callback` called on every event that may end a transaction, or stop
    with None (it costs a call per transaction, so it is only on while a drain waits)."""

    def __init__(
        self,
        wait_timeout: float,
        busy: Callable[[str], bool],
        watch: Callable[[Callable[[], None] | None], None],
    ) -> None:
        self.wait_timeout = wait_timeout
        self._busy = busy
        self._watch = watch
        # Held tenants -> the sessions waiting for their release. Sessions keep this dict (the
        # same one for the router's lifetime) and look a tenant up before each checkout.
        self.held: dict[str, list[HoldTicket]] = {}
        self._drains: list[tuple[str, asyncio.Future[None]]] = []
        self._check_due = False
        # Tenant -> how many times it was held by this process (never forgets, never resets).
        self.held_ever: Counter[str] = Counter()
        # How long each hold lasted, from `hold` to the end of its `release`.
        self.hold_seconds = Durations(HOLD_SECONDS_BUCKETS)
        self._since: dict[str, float] = {}  # held tenant -> loop.time() of its `hold`

    async def hold(self, tenant: str) -> None:
        """Stop starting transactions for `tenant` and wait until those running have finished: then
        this process can acknowledge the hold. TimeoutError after the wait timeout."""
        self.held.setdefault(tenant, [])
        self.held_ever[tenant] += 1
        self._since.setdefault(tenant, asyncio.get_running_loop().time())
        if self._busy(tenant):
            drain = (tenant, asyncio.get_running_loop().create_future())
            self._drains.append(drain)
            if len(self._drains) == 1:
                self._watch(self.changed)
            try:
                await asyncio.wait_for(drain[1], self.wait_timeout)
            except TimeoutError:
                raise TimeoutError(f"transactions of tenant {tenant} did not finish in time") from None
            finally:
                self._drains.remove(drain)
                if not self._drains:
                    self._watch(None)
        log.info("tenant %s held: new transactions wait", tenant)

    def changed(self) -> None:
        """A transaction may have ended: re-check the drains once the event's own changes are
        done (a session records that it left a tenant after telling the router)."""
        if self._drains and not self._check_due:
            self._check_due = True
            asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        self._check_due = False
        for tenant, drained in self._drains:
            if not drained.done() and not self._busy(tenant):
                drained.set_result(None)

    async def release(self, tenant: str, first: Callable[[], Awaitable[object]] | None = None) -> None:
        """Let the tenant's transactions start again: the waiting sessions resume at once.

        `first`, if given, must succeed before that (re-reading where the catalog places the tenant
        now). While it raises a RouterError it is retried with a short backoff and the tenant stays
        held: its waiting sessions fail by their own wait timeout, never run where it no longer is.
        """
        if first is not None:
            await self._before_release(tenant, first)
        tickets = self.held.pop(tenant, [])
        since = self._since.pop(tenant, None)
        if since is not None:
            self.hold_seconds.observe(asyncio.get_running_loop().time() - since)
        log.info("tenant %s released: %d waiting session(s) resume", tenant, len(tickets))
        for ticket in tickets:
            ticket.resume()

    async def _before_release(self, tenant: str, first: Callable[[], Awaitable[object]]) -> None:
        pause = RELEASE_RETRY_FIRST
        while True:
            try:
                await first()
                return
            except RouterError as exc:
                log.warning(
                    "tenant %s stays held: its release cannot proceed yet (%s); retrying in %gs",
                    tenant,
                    exc.message,
                    pause,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RELEASE_RETRY_MAX)

    def wait_for_release(
        self, tenant: str, resume: Callable[[], None], fail: Callable[[RouterError], None]
    ) -> HoldTicket | None:
        """If `tenant` is held, queue `resume` for its release (failing after the wait timeout)."""
        tickets = self.held.get(tenant)
        if tickets is None:
            return None
        ticket = HoldTicket(resume, fail)
        ticket.timer = asyncio.get_running_loop().call_later(
            self.wait_timeout,
            ticket.expire,
            TenantHeld(
                f'tenant "{tenant}" is held (a move\'s cutover, or PAUSE at the admin console)'
                " and did not become available in time",
                hint="retry",
            ),
        )
        tickets.append(ticket)
        return ticket
