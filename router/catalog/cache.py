"""The running router's copy of the tenant catalog, kept fresh by change notifications.

Owns `CatalogCache`: the in-memory map of tenants that routing reads (`get` is a dict lookup and
never awaits), and the one background task that owns the cache's catalog connection and does all
of its I/O: LISTEN/NOTIFY re-reads the tenants named, a periodic full refresh replaces the whole
map and is the fallback that also reconnects, and `refresh` re-reads tenants on demand (a hold's
release: the tenant must resume where the catalog places it now, not where a NOTIFY still on its
way would leave it). While the catalog is unreachable the cache keeps serving the last state it knew.

Must not: edit the catalog (router/catalog/store.py does), decide placement, or block the router's
hot path.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import gc
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import asyncpg

from router.catalog.access import OUTAGES, connect, describe_dsn, is_open, not_initialised, unavailable
from router.catalog.schema import DEFAULT_SCHEMA, RELOAD_ALL, Tenant, TenantQueries, tenant_from_row
from router.core.background import BackgroundService
from router.dbconnect import close_connection
from router.errors import CatalogUnavailable, RouterError

log = logging.getLogger(__name__)

_APP_NAME: Final = "tenant-router-catalog-cache"
# Tenants built (or compared) between two yields to the event loop during a full reload.
_RELOAD_SLICE: Final = 2000
# More changed tenants than this in one wake-up are cheaper to reload all at once.
_MAX_BATCH: Final = 500


class CatalogCache(BackgroundService):
    """The running router's copy of the catalog: `get` is synchronous; a background task keeps it fresh.

    One task owns the cache's connection and does all of its I/O, so reads and reloads are applied
    in the order they were issued. A NOTIFY re-reads one tenant; every `refresh_interval` seconds a
    full reload replaces the whole map. A lost connection is retried at once, then at each refresh;
    until it comes back the last known map keeps being served.
    """

    def __init__(
        self,
        dsn: str,
        schema: str = DEFAULT_SCHEMA,
        refresh_interval: float = 30.0,
        *,
        on_change: Callable[[str], None] | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        if refresh_interval <= 0:
            raise ValueError("refresh_interval must be positive")
        super().__init__(log)
        self._dsn = dsn
        self._q = TenantQueries(schema)
        self._interval = refresh_interval
        self._timeout = connect_timeout
        self._where = describe_dsn(dsn)
        self.on_change = on_change
        self._tenants: dict[str, Tenant] = {}
        self._conn: Any = None
        self._pending: set[str] = set()
        # `refresh` calls waiting for the background task: the tenants to re-read, and their waiter.
        self._refreshes: builtins.list[tuple[frozenset[str], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._last_full_refresh: float | None = None

    # -- reading (the router's hot path) --

    def get(self, tenant_id: str) -> Tenant | None:
        return self._tenants.get(tenant_id)

    def __len__(self) -> int:
        return len(self._tenants)

    def pin_locally(self, pins: Mapping[str, str]) -> None:
        """Apply catalog pins this process has just written, without waiting for their NOTIFY
        (a reload must not route a moved tenant before its pin is in force here)."""
        for tenant_id, shard in pins.items():
            tenant = self._tenants.get(tenant_id)
            if tenant is not None and tenant.shard is None:
                self._tenants[tenant_id] = dataclasses.replace(tenant, shard=shard)
                self._changed(tenant_id)

    def snapshot(self) -> dict[str, Tenant]:
        """A copy of the current map, for listings (not for the hot path: it is O(n))."""
        return dict(self._tenants)

    @property
    def last_full_refresh(self) -> float | None:
        """loop.time() of the last successful full load, or None before the first."""
        return self._last_full_refresh

    @property
    def connected(self) -> bool:
        return is_open(self._conn)

    @property
    def channel(self) -> str:
        return self._q.channel

    # -- lifecycle --

    async def _begin(self) -> None:
        """Load the whole catalog and start listening; raise CatalogUnavailable if it cannot be reached."""
        await self._reconnect(notify=False)
        self._spawn(
            self._run(),
            name=f"catalog-cache:{self._q.schema}",
            # Outages are handled inside _run; anything escaping it is a bug.
            crash_message="catalog cache: refresh task died; the cache is frozen from now on",
        )

    async def _end(self) -> None:
        self._settle(
            self._take_refreshes(), CatalogUnavailable(f"tenant catalog at {self._where}: the catalog cache stopped")
        )
        await self._drop_connection()

    def request_refresh(self) -> None:
        """Ask the background task for a full reload now (returns before it is done)."""
        self._pending.add(RELOAD_ALL)
        self._wake.set()

    async def refresh(self, tenant_ids: Iterable[str]) -> None:
        """Re-read these tenants from the catalog now; return once the cache holds what the catalog
        said, and `on_change` was called for each of them (changed or not: whatever was resolved
        from them is dropped, as their NOTIFY would). The background task does it, in order with
        everything else it applies, so a full reload already in flight cannot overwrite it with
        older rows. Raises CatalogUnavailable when the catalog cannot be read now (one attempt,
        reconnecting first if needed; the cache keeps what it had): retrying is the caller's call.
        """
        if not self.running:
            raise CatalogUnavailable(f"tenant catalog at {self._where}: the catalog cache is not running")
        done = asyncio.get_running_loop().create_future()
        self._refreshes.append((frozenset(tenant_ids), done))
        self._wake.set()
        await done

    # -- the background task --

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self._interval
        retry_now = False
        while self.running:
            if not retry_now:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
                # arrives just as the event is set, and stop() would then wait forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_full - loop.time())):
                        await self._wake.wait()
            self._wake.clear()
            if not self.running:
                return
            due = loop.time() >= next_full
            # A connection that was up and is now closed was lost just now (e.g. terminated).
            just_lost = self._conn is not None and self._conn.is_closed()
            reconnecting = not self.connected
            refreshes = self._take_refreshes()
            try:
                if reconnecting:
                    if not (due or retry_now or just_lost or refreshes):
                        continue
                    retry_now = False
                    next_full = loop.time() + self._interval
                    await self._reconnect(notify=True)
                    log.info("catalog cache: reconnected to %s", self._where)
                    self._refreshed(refreshes)  # the full load read them afresh
                    continue
                batch, self._pending = self._pending, set()
                forced = frozenset[str]().union(*(ids for ids, _ in refreshes))
                if due or RELOAD_ALL in batch or len(batch | forced) > _MAX_BATCH:
                    next_full = loop.time() + self._interval
                    await self._load_all(notify=True)
                elif batch or forced:
                    await self._load_some(sorted(batch | forced))
                self._refreshed(refreshes)
            except OUTAGES as exc:
                # Keep serving the last known map. A connection that worked until now gets one
                # immediate retry; after that, reconnecting waits for the refresh tick.
                retry_now = not reconnecting
                log.warning(
                    "catalog cache: %s; serving %d cached tenants, retrying %s",
                    exc,
                    len(self._tenants),
                    "now" if retry_now else f"in {max(0.0, next_full - loop.time()):.1f}s",
                )
                failure = exc if isinstance(exc, RouterError) else unavailable(self._where, exc, self._timeout)
                self._settle(refreshes, failure)
                await self._drop_connection()
            except BaseException:
                self._refreshes[:0] = refreshes  # cancelled (stop): `_end` fails them
                raise

    def _take_refreshes(self) -> builtins.list[tuple[frozenset[str], asyncio.Future[None]]]:
        refreshes, self._refreshes = self._refreshes, []
        return [(ids, done) for ids, done in refreshes if not done.done()]  # done: its caller gave up

    def _refreshed(self, refreshes: builtins.list[tuple[frozenset[str], asyncio.Future[None]]]) -> None:
        """The tenants of these `refresh` calls were just read: drop what was resolved from them."""
        for tenant_id in sorted(frozenset[str]().union(*(ids for ids, _ in refreshes))):
            self._changed(tenant_id)
        self._settle(refreshes, None)

    @staticmethod
    def _settle(
        refreshes: builtins.list[tuple[frozenset[str], asyncio.Future[None]]], failure: RouterError | None
    ) -> None:
        for _ids, done in refreshes:
            if done.done():
                continue
            if failure is None:
                done.set_result(None)
            else:
                done.set_exception(failure)

    async def _reconnect(self, *, notify: bool) -> None:
        await self._drop_connection()
        conn = await connect(self._dsn, self._timeout, _APP_NAME)
        try:
            conn.add_termination_listener(self._on_terminated)
            # LISTEN before loading, so a change made during the load is announced afterwards.
            await conn.add_listener(self._q.channel, self._on_notify)
            self._conn = conn
            self._pending.clear()
            await self._load_all(notify=notify)
        except BaseException:
            self._conn = None
            conn.terminate()
            raise

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        await close_connection(conn, self._timeout)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._pending.add(payload)
        self._wake.set()

    def _on_terminated(self, conn: object) -> None:
        if conn is self._conn:
            self._wake.set()

    async def _fetch(self, sql: str, *args: object) -> builtins.list[Any]:
        try:
            return list(await self._conn.fetch(sql, *args, timeout=self._timeout))
        except asyncpg.UndefinedTableError as exc:
            raise not_initialised(self._where, self._q.schema) from exc

    async def _load_all(self, *, notify: bool) -> None:
        # Read and built in pages that yield to the event loop: with 100 000 tenants a full reload
        # must not stall every client of this worker. A change racing the pages is also notified,
        # and notifications are applied after the reload.
        fresh: dict[str, Tenant] = {}
        last = ""
        while True:
            rows = await self._fetch(self._q.select_page, last, _RELOAD_SLICE)
            # Tenants hold no reference cycles: skip collector passes over the objects being
            # built (each full pass over a large cache is a stall of its own).
            collecting = gc.isenabled()
            gc.disable()
            try:
                fresh.update((t.id, t) for t in map(tenant_from_row, rows))
            finally:
                if collecting:
                    gc.enable()
            if len(rows) < _RELOAD_SLICE:
                break
            last = rows[-1]["id"]
        old, self._tenants = self._tenants, fresh
        self._last_full_refresh = asyncio.get_running_loop().time()
        if notify:
            for count, tenant_id in enumerate(old.keys() | fresh.keys(), 1):
                if old.get(tenant_id) != fresh.get(tenant_id):
                    self._changed(tenant_id)
                if count % _RELOAD_SLICE == 0:
                    await asyncio.sleep(0)

    async def _load_some(self, tenant_ids: builtins.list[str]) -> None:
        rows = await self._fetch(self._q.select_many, tenant_ids)
        found = {t.id: t for t in map(tenant_from_row, rows)}
        for tenant_id in tenant_ids:
            before = self._tenants.get(tenant_id)
            after = found.get(tenant_id)
            if after is None:
                self._tenants.pop(tenant_id, None)
            else:
                self._tenants[tenant_id] = after
            if before != after:
                self._changed(tenant_id)

    def _changed(self, tenant_id: str) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(tenant_id)
        except Exception:
            log.exception("catalog cache: on_change callback failed for tenant %r", tenant_id)
