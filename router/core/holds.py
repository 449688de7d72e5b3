"""Tenant holds in one router process: while a coordinator (rebalance cutover, migration) holds a
tenant, its new transactions wait; the hold is acknowledged once those running have ended.

Owns: which tenants are held here (`held`, the dict sessions consult before a checkout), the
tickets of sessions waiting for a release (each failing with TenantHeld after the wait timeout),
and the drain: `hold` returns once no transaction of the tenant runs. The drain is event-driven:
whoever can end a transaction (a pool taking a connection back, a client changing tenant or
leaving) calls `changed`, and the drain re-checks then, never on a timer of its own.

Must not: know how sessions or connections look (`busy` answers whether a tenant has a
transaction running), talk to the catalog (router.catalog.cluster does, and calls `hold` and
`release`), or import any protocol or network code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from router.errors import RouterError, TenantHeld

log = logging.getLogger(__name__)

__all__ = ["HoldTicket", "Holds"]


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

    async def hold(self, tenant: str) -> None:
        """Stop starting transactions for `tenant` and wait until those running have finished: then
        this process can acknowledge the hold. TimeoutError after the wait timeout."""
        self.held.setdefault(tenant, [])
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

    async def release(self, tenant: str) -> None:
        tickets = self.held.pop(tenant, [])
        log.info("tenant %s released: %d waiting session(s) resume", tenant, len(tickets))
        for ticket in tickets:
            ticket.resume()

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
            TenantHeld(f'tenant "{tenant}" is being moved and did not become available in time', hint="retry"),
        )
        tickets.append(ticket)
        return ticket
