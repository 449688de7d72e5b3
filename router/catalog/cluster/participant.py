"""An instance's side of holds: see them appear and disappear, run the router's callbacks, and
write the acknowledgements.

Owns `HoldParticipant` and the stages one hold goes through on this instance (`_Stage`, changed
only by `_Entry.move`). A hold past its `expires_at` (router/catalog/cluster/holds.py) is gone as
far as the participant is concerned: it is released here as if its coordinator had released it,
with a warning, within a poll interval of its expiry (sooner: the participant also wakes when the
earliest hold it knows is due to expire).

Must not: decide anything about a hold (the coordinator requests and releases it), make tenants
wait itself (the router's `on_hold`/`on_release` callbacks do), or touch shard servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from router.catalog.access import OUTAGES, connect, describe_dsn, is_open, translated
from router.catalog.cluster.holds import hold_sql
from router.catalog.cluster.registry import APP_NAME, DEFAULT_CONNECT_TIMEOUT, no_cluster_tables
from router.core.background import BackgroundService
from router.dbconnect import close_connection

log = logging.getLogger(__name__)

# A participant re-reads the holds this often even without a notification (lost NOTIFY, reconnect).
DEFAULT_HOLD_POLL_INTERVAL: Final = 1.0
# Past a hold's expiry by the catalog's clock, waking this much later absorbs rounding.
_EXPIRY_SLACK: Final = 0.01


class _Stage(enum.Enum):
    """Where one hold is on this instance. Changed only by `_Entry.move`."""

    WAITING = "waiting"  # an earlier hold on the same tenant is still being released
    ENTERING = "entering"  # on_hold is running
    HELD = "held"  # on_hold returned; acknowledged (again on every poll) while the hold exists
    FAILED = "failed"  # on_hold raised; never acknowledged, so the coordinator gives up
    RELEASING = "releasing"  # the hold is gone; on_release is running
    DONE = "done"


_NEXT: Final[Mapping[_Stage, frozenset[_Stage]]] = {
    _Stage.WAITING: frozenset({_Stage.ENTERING, _Stage.DONE}),  # DONE: released before on_hold was due
    _Stage.ENTERING: frozenset({_Stage.HELD, _Stage.FAILED}),
    _Stage.HELD: frozenset({_Stage.RELEASING}),
    _Stage.FAILED: frozenset({_Stage.RELEASING}),
    _Stage.RELEASING: frozenset({_Stage.DONE}),
    _Stage.DONE: frozenset(),
}
_SETTLED: Final = frozenset({_Stage.HELD, _Stage.FAILED, _Stage.DONE})


@dataclass(eq=False)
class _Entry:
    hold_id: str
    tenant_id: str
    reason: str
    stage: _Stage = _Stage.WAITING
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # the hold left the catalog
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # on_hold finished (or was skipped)
    task: asyncio.Task[None] | None = None
    acked: bool = False

    def move(self, stage: _Stage) -> None:
        if stage not in _NEXT[self.stage]:
            raise RuntimeError(f"hold {self.hold_id}: no transition {self.stage.name} -> {stage.name}")
        self.stage = stage
        if stage in _SETTLED:
            self.settled.set()


HoldCallback = Callable[[str], Awaitable[None]]


class HoldParticipant(BackgroundService):
    """This instance's side of holds: sees them through LISTEN (and a poll as the fallback that
    also reconnects), calls `on_hold(tenant_id)`, then acknowledges; calls `on_release(tenant_id)`
    once the hold is gone.

    `on_release` follows every `on_hold`, even one that raised (it may have half-applied); holds on
    the same tenant are handled one after another, so a release never overtakes the next hold.
    Callbacks run in tasks of their own, so a slow drain of one tenant delays no other tenant's
    acknowledgement. `start` returns once every hold already in the catalog has been entered and
    acknowledged. `stop` abandons everything, calling neither callback: it is for an instance that
    is going away (the coordinator then gives up on holds it never acknowledged).
    """

    def __init__(
        self,
        dsn: str,
        schema: str,
        instance_id: str,
        on_hold: HoldCallback,
        on_release: HoldCallback,
        *,
        poll_interval: float = DEFAULT_HOLD_POLL_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        super().__init__(log)
        self.instance_id = instance_id
        self._on_hold = on_hold
        self._on_release = on_release
        self._dsn = dsn
        self._sql = hold_sql(schema)
        self._where = describe_dsn(dsn)
        self._poll = poll_interval
        self._timeout = connect_timeout
        self._conn: Any = None
        self._entries: dict[str, _Entry] = {}
        self._wake = asyncio.Event()
        self._next_expiry: float | None = None  # seconds from the last sync to the next expiry

    @property
    def held_tenants(self) -> frozenset[str]:
        """Tenants for which on_hold was called and on_release has not finished yet."""
        busy = {_Stage.ENTERING, _Stage.HELD, _Stage.FAILED, _Stage.RELEASING}
        return frozenset(e.tenant_id for e in self._entries.values() if e.stage in busy)

    @property
    def connected(self) -> bool:
        return is_open(self._conn)

    async def _begin(self) -> None:
        try:
            with translated(self._where, self._sql.schema, self._timeout, missing=no_cluster_tables):
                await self._reconnect()
                await self._sync()
                # The router must not serve a tenant that is held already: enter those holds first.
                await asyncio.gather(*(entry.settled.wait() for entry in self._entries.values()))
                await self._sync()
        except BaseException:
            await self._end()
            raise
        self._spawn(
            self._run(),
            name=f"hold-participant:{self.instance_id}",
            # Outages are handled inside _run; anything escaping it is a bug.
            crash_message=f"hold participant {self.instance_id}: task died",
        )

    # -- the background task (the only one doing I/O) --

    async def _run(self) -> None:
        while True:
            wait = self._poll if self._next_expiry is None else min(self._poll, self._next_expiry + _EXPIRY_SLACK)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            reconnecting = not self.connected
            try:
                async with asyncio.timeout(self._timeout):
                    if reconnecting:
                        await self._reconnect()
                    await self._sync()
                if reconnecting:
                    log.info("hold participant %s: reconnected to the catalog", self.instance_id)
            except OUTAGES as exc:
                log.log(
                    logging.DEBUG if reconnecting else logging.WARNING,
                    "hold participant %s: %s; retrying every %gs",
                    self.instance_id,
                    exc,
                    self._poll,
                )
                await self._drop_connection()

    async def _sync(self) -> None:
        """Compare the catalog's holds with ours: enter new ones, release vanished and expired ones,
        acknowledge the ones we hold."""
        rows = await self._conn.fetch(self._sql.current_holds, timeout=self._timeout)
        current: dict[str, tuple[str, str]] = {}
        expired: set[str] = set()
        remaining: list[float] = []
        for row in rows:
            if row["expired"]:
                expired.add(row["hold_id"])
                continue
            current[row["hold_id"]] = (row["tenant_id"], row["reason"])
            if row["remaining"] is not None:
                remaining.append(max(0.0, row["remaining"]))
        self._next_expiry = min(remaining, default=None)
        for entry in self._entries.values():
            if entry.hold_id not in current and not entry.gone.is_set():
                if entry.hold_id in expired:
                    log.warning(
                        "hold participant %s: hold %s on %r (%s) expired without being released; releasing it",
                        self.instance_id,
                        entry.hold_id,
                        entry.tenant_id,
                        entry.reason,
                    )
                entry.gone.set()
        for hold_id, (tenant_id, reason) in current.items():
            if hold_id not in self._entries:
                self._enter(hold_id, tenant_id, reason)
        for entry in list(self._entries.values()):
            if entry.stage is _Stage.HELD and not entry.gone.is_set():
                await self._acknowledge(entry)

    def _enter(self, hold_id: str, tenant_id: str, reason: str) -> None:
        earlier = [e.task for e in self._entries.values() if e.tenant_id == tenant_id and e.task is not None]
        entry = _Entry(hold_id, tenant_id, reason)
        self._entries[hold_id] = entry
        entry.task = self._spawn(
            self._lifecycle(entry, earlier),
            name=f"hold:{hold_id}",
            crash_message=f"hold participant {self.instance_id}: hold {hold_id}: task died",
        )
        entry.task.add_done_callback(functools.partial(self._finished, entry))

    async def _lifecycle(self, entry: _Entry, earlier: list[asyncio.Task[None]]) -> None:
        if earlier:
            await asyncio.wait(earlier)
        if entry.gone.is_set():
            entry.move(_Stage.DONE)
            return
        entry.move(_Stage.ENTERING)
        try:
            await self._on_hold(entry.tenant_id)
        except Exception:
            # The callback boundary: its failure must not take the participant down. Not
            # acknowledging is the answer; the coordinator times out and removes the hold.
            log.exception("hold participant %s: on_hold(%r) failed", self.instance_id, entry.tenant_id)
            entry.move(_Stage.FAILED)
        else:
            entry.move(_Stage.HELD)
        self._wake.set()  # acknowledge now, not at the next poll
        await entry.gone.wait()
        entry.move(_Stage.RELEASING)
        try:
            await self._on_release(entry.tenant_id)
        except Exception:
            log.exception("hold participant %s: on_release(%r) failed", self.instance_id, entry.tenant_id)
        entry.move(_Stage.DONE)

    def _finished(self, entry: _Entry, task: asyncio.Task[None]) -> None:
        if self._entries.get(entry.hold_id) is entry and entry.stage is _Stage.DONE:
            del self._entries[entry.hold_id]

    async def _acknowledge(self, entry: _Entry) -> None:
        try:
            await self._conn.execute(self._sql.ack, entry.hold_id, self.instance_id, timeout=self._timeout)
        except asyncpg.ForeignKeyViolationError:
            self._wake.set()  # the hold went away meanwhile; the next sync releases it
            return
        if not entry.acked:
            entry.acked = True
            log.info(
                "hold participant %s: acknowledged hold %s on %r", self.instance_id, entry.hold_id, entry.tenant_id
            )

    # -- connection --

    async def _reconnect(self) -> None:
        await self._drop_connection()
        conn = await connect(self._dsn, self._timeout, f"{APP_NAME}-participant")
        try:
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(self._sql.holds_channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        await close_connection(conn, self._timeout)

    async def _end(self) -> None:
        # Every task is cancelled (by stop, or start failing): forget the holds, calling no callback.
        self._entries = {}
        await self._drop_connection()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    def _on_terminated(self, conn: object) -> None:
        if conn is self._conn:
            self._wake.set()
