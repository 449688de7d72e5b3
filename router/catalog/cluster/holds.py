"""Holds on a tenant, from the side that requests them: put one in the catalog, wait until every
live router instance acknowledges it, release it.

Owns: the rows of the catalog's `holds` and `hold_acks` tables and their NOTIFY channels
(`holds_channel`, `acks_channel`), the SQL over them that both sides use (`hold_sql`), the `Hold`
record, and `HoldCoordinator` (puts a hold on a tenant and waits until every live instance
acknowledges it, or removes it again and raises `HoldNotAcknowledged`). Which instances must
acknowledge follows the registry's liveness (router/catalog/cluster/registry.py).

Holds expire: each one has `expires_at` (the catalog's clock), after which it counts as released
everywhere, so a coordinator that dies holding a tenant holds it for `ttl` seconds at most. Whoever
acts on a hold's strength (a move switching the tenant's placement) checks, in its own
transaction, that the hold is still in force: `HoldSql.hold_alive`.

Must not: make tenants wait itself (each instance's `HoldParticipant` runs the router's callbacks),
decide when a hold is needed (rebalancing and migrations do), or touch shard servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from router.catalog.access import OUTAGES, connection
from router.catalog.cluster.registry import (
    APP_NAME,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_STALE_AFTER,
    fresh,
    no_cluster_tables,
)
from router.catalog.schema import DEFAULT_SCHEMA, validate_schema
from router.errors import ClusterError, HoldNotAcknowledged, TenantAlreadyHeld
from router.isolation import quote_ident, quote_literal, validate_tenant_id

log = logging.getLogger(__name__)

# A coordinator re-reads acknowledgements and liveness this often even without a notification.
DEFAULT_ACK_POLL_INTERVAL: Final = 0.25
# How long a hold lasts if its coordinator never releases it (it died, or lost the catalog).
DEFAULT_HOLD_TTL: Final = 30.0
# A hold is alive while `expires_at` is NULL (never expires: holds made before catalog version 3)
# or later than the catalog's clock plus a margin in seconds (the placeholder's number).
_ALIVE = "(expires_at IS NULL OR expires_at > clock_timestamp() + ${} * interval '1 second')"


def holds_channel(schema: str) -> str:
    """The NOTIFY channel on which holds are announced (payload: the hold id)."""
    validate_schema(schema)
    return f"{schema}_holds"


def acks_channel(schema: str) -> str:
    """The NOTIFY channel on which acknowledgements are announced (payload: the hold id)."""
    validate_schema(schema)
    return f"{schema}_acks"


class HoldSql:
    """The SQL text over holds and their acknowledgements for one catalog schema, built once.

    `hold_alive` is for whoever acts on a hold's strength: "SELECT EXISTS (SELECT 1 FROM s.holds
    WHERE hold_id = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp() + $2 * interval
    '1 second'))", true while hold $1 exists and stays in force for $2 more seconds. A move runs it
    inside the transaction that switches the tenant's placement, as the last statement before
    COMMIT, with $2 covering the commit (a second is plenty): routers release an expired hold only
    once the catalog's clock passes `expires_at`, so a switch committed within the margin is seen
    by every router's release (which re-reads the tenant's placement first).
    """

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        self.schema = schema
        self.holds_channel = holds_channel(schema)
        self.acks_channel = acks_channel(schema)
        # A coordinator that died leaves its row behind (tenant_id is the key): once expired it
        # stands in nobody's way. Returns what was removed, for the log.
        self.delete_expired = (
            f"DELETE FROM {s}.holds WHERE tenant_id = $1 AND expires_at <= clock_timestamp()"
            " RETURNING hold_id, reason, expires_at"
        )
        self.insert_hold = (
            f"INSERT INTO {s}.holds (tenant_id, hold_id, reason, expires_at)"
            " VALUES ($1, $2, $3, clock_timestamp() + $4 * interval '1 second')"
            " RETURNING requested_at, expires_at"
        )
        self.live_ids = f"SELECT instance_id FROM {s}.instances WHERE {fresh('', 1)}"
        self.hold_alive = f"SELECT EXISTS (SELECT 1 FROM {s}.holds WHERE hold_id = $1 AND {_ALIVE.format(2)})"
        self.ack_status = (
            f"SELECT i.instance_id, {fresh('i.', 2)} AS live,"
            f" EXISTS (SELECT 1 FROM {s}.hold_acks a WHERE a.hold_id = $1 AND a.instance_id = i.instance_id) AS acked"
            f" FROM {s}.instances i"
        )
        # Whether the hold was still in force when removed (an expired one was released already).
        # One statement (one round trip, its own transaction): the hold goes and is announced.
        self.delete_hold = (
            f"WITH released AS (DELETE FROM {s}.holds WHERE hold_id = $1"
            " RETURNING tenant_id, (expires_at IS NULL OR expires_at > clock_timestamp()) AS alive)"
            " SELECT tenant_id, alive, pg_notify($2, $1) FROM released"
        )
        self.notify = "SELECT pg_notify($1, $2)"
        # Every hold row, saying which have expired (they count as released) and how many seconds
        # the others have left (NULL: never expire), so a participant wakes when one expires.
        self.current_holds = (
            "SELECT hold_id, tenant_id, reason, coalesce(expires_at <= clock_timestamp(), false) AS expired,"
            " extract(epoch FROM expires_at - clock_timestamp())::float8 AS remaining"
            f" FROM {s}.holds"
        )
        # Idempotent, so it can be repeated on every poll; announced only when the row is new.
        self.ack = (
            f"WITH added AS (INSERT INTO {s}.hold_acks (hold_id, instance_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING hold_id)"
            f" SELECT pg_notify({quote_literal(self.acks_channel)}, hold_id) FROM added"
        )


@functools.lru_cache(maxsize=16)
def hold_sql(schema: str) -> HoldSql:
    return HoldSql(schema)


@dataclass(frozen=True, slots=True)
class Hold:
    """A hold every required instance acknowledged; release it with `HoldCoordinator.release_hold`."""

    hold_id: str
    tenant_id: str
    reason: str
    requested_at: datetime
    acknowledged_by: tuple[str, ...]
    # The catalog's time after which the hold counts as released everywhere (routers let the
    # tenant's transactions run again within their poll interval).
    expires_at: datetime


# Tasks that must finish even if whoever started them is cancelled (removing an aborted hold).
_detached: set[asyncio.Task[None]] = set()


class HoldCoordinator:
    """Requests and releases holds. Stateless between calls: each call uses its own connection, so
    one coordinator may hold several tenants at once."""

    def __init__(
        self,
        dsn: str,
        schema: str = DEFAULT_SCHEMA,
        *,
        stale_after: float = DEFAULT_STALE_AFTER,
        poll_interval: float = DEFAULT_ACK_POLL_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._dsn = dsn
        self._sql = hold_sql(schema)
        self.stale_after = stale_after
        self._poll = poll_interval
        self._timeout = connect_timeout

    def connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A catalog connection of the coordinator's own, for a caller that holds and releases on
        one connection (`conn=`): a cutover then does not pay for connecting while it holds."""
        return connection(
            self._dsn, self._sql.schema, self._timeout, f"{APP_NAME}-coordinator", missing=no_cluster_tables
        )

    def _connection(self, conn: Any = None) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.connection() if conn is None else contextlib.nullcontext(conn)

    async def request_hold(
        self, tenant_id: str, reason: str, *, timeout: float, ttl: float = DEFAULT_HOLD_TTL, conn: Any = None
    ) -> Hold:
        """Hold `tenant_id` on every live instance, or raise with no hold left behind.

        The instances that must acknowledge are those live when the hold is created, plus any that
        turn live while we wait. One that goes stale still has to acknowledge (it may be cut off
        from the catalog but still serving clients); one that deregisters (clean stop) no longer
        does. Raises HoldNotAcknowledged after `timeout` seconds, TenantAlreadyHeld if the tenant
        has a hold in force already. On any failure, cancellation included, the hold is removed again.

        The hold expires `ttl` seconds after it is made (the catalog's clock) unless released
        before: `ttl` must exceed `timeout`, and bounds how long a coordinator that dies holding
        the tenant keeps it held. An expired hold of the tenant (a dead coordinator's) is removed
        first. `conn`: a connection from `connection()` to work on (else one of its own).
        """
        validate_tenant_id(tenant_id)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if ttl <= timeout:
            raise ValueError(f"ttl ({ttl:g}s) must be longer than timeout ({timeout:g}s)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        hold_id = uuid.uuid4().hex
        sql = self._sql
        wake = asyncio.Event()

        def on_ack(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            if payload == hold_id:
                wake.set()

        async with self._connection(conn) as conn:
            # LISTEN before the hold exists, so no acknowledgement can slip by unannounced.
            await conn.add_listener(sql.acks_channel, on_ack)
            try:
                async with conn.transaction():
                    for row in await conn.fetch(sql.delete_expired, tenant_id, timeout=self._timeout):
                        log.warning(
                            "hold %s on tenant %r (%s) expired at %s without being released; removed",
                            row["hold_id"],
                            tenant_id,
                            row["reason"],
                            row["expires_at"],
                        )
                    try:
                        made = await conn.fetchrow(
                            sql.insert_hold, tenant_id, hold_id, reason, ttl, timeout=self._timeout
                        )
                    except asyncpg.UniqueViolationError as exc:
                        raise TenantAlreadyHeld(f"tenant {tenant_id!r} is already held") from exc
                    live = await conn.fetch(sql.live_ids, self.stale_after, timeout=self._timeout)
                    await conn.execute(sql.notify, sql.holds_channel, hold_id, timeout=self._timeout)
                required = {row["instance_id"] for row in live}
                log.info(
                    "hold %s on tenant %r (%s): waiting for %d instance(s); expires in %gs",
                    hold_id,
                    tenant_id,
                    reason,
                    len(live),
                    ttl,
                )
                acked = await self._await_acks(conn, tenant_id, hold_id, required, deadline, wake, timeout)
            except TenantAlreadyHeld:
                raise
            except BaseException:
                # Also when the commit itself failed: whether the hold exists is unknown then.
                await self._abort(hold_id, tenant_id)
                raise
            finally:
                if not conn.is_closed():
                    await conn.remove_listener(sql.acks_channel, on_ack)
        log.info("hold %s on tenant %r: acknowledged by %s", hold_id, tenant_id, ", ".join(acked) or "nobody")
        return Hold(hold_id, tenant_id, reason, made["requested_at"], acked, made["expires_at"])

    async def hold_alive(self, hold_id: str, margin: float = 0.0) -> bool:
        """Whether the hold exists and stays in force for `margin` more seconds (`HoldSql.hold_alive`
        on a connection of its own; a move runs that SQL inside its switch transaction instead)."""
        async with self._connection() as conn:
            return bool(await conn.fetchval(self._sql.hold_alive, hold_id, margin, timeout=self._timeout))

    async def release_hold(self, hold_id: str, *, conn: Any = None) -> bool:
        """Remove the hold; False if it was not in force any more: gone already, or expired (the
        routers released it then, on their own). `conn`: as for `request_hold`."""
        sql = self._sql
        async with self._connection(conn) as conn:
            row = await conn.fetchrow(sql.delete_hold, hold_id, sql.holds_channel, timeout=self._timeout)
        if row is None:
            return False
        if not row["alive"]:
            log.warning("hold %s on tenant %r had expired before its release", hold_id, row["tenant_id"])
            return False
        log.info("hold %s on tenant %r released", hold_id, row["tenant_id"])
        return True

    async def _await_acks(
        self,
        conn: Any,
        tenant_id: str,
        hold_id: str,
        required: set[str],
        deadline: float,
        wake: asyncio.Event,
        timeout: float,
    ) -> tuple[str, ...]:
        loop = asyncio.get_running_loop()
        sql = self._sql
        while True:
            wake.clear()
            if not await conn.fetchval(sql.hold_alive, hold_id, 0.0, timeout=self._timeout):
                raise ClusterError(
                    f"hold {hold_id} on tenant {tenant_id!r} was released (or expired) while being acknowledged"
                )
            rows = await conn.fetch(sql.ack_status, hold_id, self.stale_after, timeout=self._timeout)
            registered: dict[str, tuple[bool, bool]] = {r["instance_id"]: (r["live"], r["acked"]) for r in rows}
            required |= {instance for instance, (live, _) in registered.items() if live}
            missing = sorted(i for i in required if i in registered and not registered[i][1])
            if not missing:
                return tuple(sorted(i for i in required if i in registered))
            remaining = deadline - loop.time()
            if remaining <= 0:
                states = ", ".join(f"{i} ({'live' if registered[i][0] else 'stale'})" for i in missing)
                raise HoldNotAcknowledged(
                    f"hold on tenant {tenant_id!r} was not acknowledged within {timeout:g}s by {states};"
                    " the hold was removed",
                    tenant_id=tenant_id,
                    hold_id=hold_id,
                    missing=tuple(missing),
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self._poll, remaining)):
                    await wake.wait()

    async def _abort(self, hold_id: str, tenant_id: str) -> None:
        """Remove a hold that did not succeed, on a connection of its own (the waiting one may be
        broken or busy with a cancelled query), and finish even if our caller is cancelled."""

        async def remove() -> None:
            try:
                await self.release_hold(hold_id)
            except OUTAGES as exc:
                log.error(
                    "hold %s on tenant %r could not be removed (%s); the tenant stays held until it is released",
                    hold_id,
                    tenant_id,
                    exc,
                )

        task = asyncio.create_task(remove(), name=f"abort-hold:{hold_id}")
        _detached.add(task)
        task.add_done_callback(_detached.discard)
        await asyncio.shield(task)
