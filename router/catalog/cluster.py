"""What router instances agree on through the catalog: who is running, and holds they acknowledge.

Owns: the rows of the catalog's `instances`, `holds` and `hold_acks` tables (their DDL is catalog
migration 2); `InstanceRegistry` (one row per running router instance, kept fresh by a heartbeat
task that reconnects on its own); `list_instances` (what `tenant-router instances` shows);
`HoldCoordinator` (puts a hold on a tenant and waits until every live instance acknowledges it, or
removes it again and raises `HoldNotAcknowledged`); and `HoldParticipant` (an instance's side: it
sees holds appear and disappear, runs the router's callbacks, and writes the acknowledgements).

Liveness is judged with the catalog database's clock only (`now()` against `heartbeat_at`), so clock
skew between router hosts cannot make an instance look live or stale.

Must not: implement any consensus of its own (the catalog database is the single point of
agreement), make tenants wait itself (the router's `on_hold`/`on_release` callbacks do), decide when
a hold is needed (rebalancing and migrations do), touch shard servers, or parse arguments and print.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import logging
import os
import socket
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Self

import asyncpg

from router import __version__
from router.catalog.store import (
    _CONNECTION_ERRORS,
    DEFAULT_SCHEMA,
    CatalogError,
    _connect,
    _unavailable,
    _validate_schema,
    describe_dsn,
)
from router.dbconnect import close_connection
from router.errors import CatalogUnavailable, RouterError
from router.isolation import quote_ident, quote_literal, validate_tenant_id

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL: Final = 1.0
DEFAULT_STALE_AFTER: Final = 5.0
# A participant re-reads the holds this often even without a notification (lost NOTIFY, reconnect).
DEFAULT_HOLD_POLL_INTERVAL: Final = 1.0
# A coordinator re-reads acknowledgements and liveness this often even without a notification.
DEFAULT_ACK_POLL_INTERVAL: Final = 0.25
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
_APP_NAME: Final = "tenant-router-cluster"
# What a background task survives by dropping its connection and trying again later (the
# connection errors include asyncpg's InternalClientError after a terminated backend).
_OUTAGES: Final = (
    CatalogUnavailable,
    CatalogError,
    *_CONNECTION_ERRORS,
    asyncpg.PostgresError,
)


# --- errors --------------------------------------------------------------------------------------


class ClusterError(RouterError):
    """Router instances could not agree on something through the catalog."""

    sqlstate = "55000"
    severity = "ERROR"


class TenantAlreadyHeld(ClusterError):
    """A hold was requested on a tenant that already has one."""

    sqlstate = "55006"


class HoldNotAcknowledged(ClusterError):
    """Some instance that had to acknowledge a hold did not in time; the hold was removed again."""

    sqlstate = "55P03"

    def __init__(self, message: str, *, tenant_id: str, hold_id: str, missing: tuple[str, ...]) -> None:
        super().__init__(
            message,
            hint="an instance that does not acknowledge is hung, overloaded or cut off from the catalog;"
            " see `tenant-router instances`",
        )
        self.tenant_id = tenant_id
        self.hold_id = hold_id
        self.missing = missing


# --- names ---------------------------------------------------------------------------------------


def holds_channel(schema: str) -> str:
    """The NOTIFY channel on which holds are announced (payload: the hold id)."""
    _validate_schema(schema)
    return f"{schema}_holds"


def acks_channel(schema: str) -> str:
    """The NOTIFY channel on which acknowledgements are announced (payload: the hold id)."""
    _validate_schema(schema)
    return f"{schema}_acks"


def default_instance_id(host: str | None, port: int) -> str:
    """`hostname:port`, the id a router instance registers under.

    `host` is the machine's name (None: `socket.gethostname()`), not the listen address, which is
    the same on every machine (127.0.0.1, 0.0.0.0). `port` is the bound port, never 0.
    """
    if not 0 < port <= 65535:
        raise ValueError(f"instance port must be the bound port (1-65535), not {port}")
    return f"{host or socket.gethostname()}:{port}"


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One registry row, with its heartbeat age and liveness as the catalog's clock sees them."""

    instance_id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    workers: int
    version: str
    labels: Mapping[str, Any]
    heartbeat_age: float  # seconds
    live: bool

    def render(self) -> str:
        """One line for `tenant-router instances`."""
        return (
            f"{self.instance_id:<32} host={self.host} pid={self.pid} workers={self.workers}"
            f" started={self.started_at.isoformat(timespec='seconds')}"
            f" heartbeat={self.heartbeat_age:.1f}s ago {'live' if self.live else 'stale'}"
        )


@dataclass(frozen=True, slots=True)
class Hold:
    """A hold every required instance acknowledged; release it with `HoldCoordinator.release_hold`."""

    hold_id: str
    tenant_id: str
    reason: str
    requested_at: datetime
    acknowledged_by: tuple[str, ...]


def _instance_from_row(row: Mapping[str, Any]) -> InstanceInfo:
    return InstanceInfo(
        instance_id=row["instance_id"],
        host=row["host"],
        pid=row["pid"],
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
        workers=row["workers"],
        version=row["version"],
        labels=types.MappingProxyType(json.loads(row["labels"])),
        heartbeat_age=float(row["age"]),
        live=bool(row["live"]),
    )


# --- SQL and connections -------------------------------------------------------------------------


def _fresh(alias: str, param: int) -> str:
    """SQL: the instance row `alias` heartbeated within `$param` seconds, by the catalog's clock."""
    return f"{alias}heartbeat_at > now() - ${param}::float8 * interval '1 second'"


class _Sql:
    """The SQL text for one catalog schema, built once."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        self.schema = schema
        self.holds_channel = holds_channel(schema)
        self.acks_channel = acks_channel(schema)
        # registry
        self.instances = (
            "SELECT instance_id, host, pid, started_at, heartbeat_at, workers, version, labels::text AS labels,"
            f" extract(epoch FROM now() - heartbeat_at)::float8 AS age, {_fresh('', 1)} AS live"
            f" FROM {s}.instances ORDER BY instance_id"
        )
        self.claimant = (
            f"SELECT host, pid, {_fresh('', 2)} AS live FROM {s}.instances WHERE instance_id = $1 FOR UPDATE"
        )
        self.register = (
            f"INSERT INTO {s}.instances (instance_id, host, pid, started_at, heartbeat_at, workers, version, labels)"
            " VALUES ($1, $2, $3, coalesce($4, now()), now(), $5, $6, $7::jsonb)"
            " ON CONFLICT (instance_id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,"
            " started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, workers = EXCLUDED.workers,"
            " version = EXCLUDED.version, labels = EXCLUDED.labels"
            " RETURNING started_at"
        )
        self.forget_acks = f"DELETE FROM {s}.hold_acks WHERE instance_id = $1"
        self.heartbeat = (
            f"UPDATE {s}.instances SET heartbeat_at = now() WHERE instance_id = $1 AND host = $2 AND pid = $3"
        )
        self.deregister = f"DELETE FROM {s}.instances WHERE instance_id = $1 AND host = $2 AND pid = $3"
        # holds
        self.insert_hold = (
            f"INSERT INTO {s}.holds (tenant_id, hold_id, reason) VALUES ($1, $2, $3) RETURNING requested_at"
        )
        self.live_ids = f"SELECT instance_id FROM {s}.instances WHERE {_fresh('', 1)}"
        self.hold_exists = f"SELECT EXISTS (SELECT 1 FROM {s}.holds WHERE hold_id = $1)"
        self.ack_status = (
            f"SELECT i.instance_id, {_fresh('i.', 2)} AS live,"
            f" EXISTS (SELECT 1 FROM {s}.hold_acks a WHERE a.hold_id = $1 AND a.instance_id = i.instance_id) AS acked"
            f" FROM {s}.instances i"
        )
        self.delete_hold = f"DELETE FROM {s}.holds WHERE hold_id = $1 RETURNING tenant_id"
        self.notify = "SELECT pg_notify($1, $2)"
        self.current_holds = f"SELECT hold_id, tenant_id FROM {s}.holds"
        # Idempotent, so it can be repeated on every poll; announced only when the row is new.
        self.ack = (
            f"WITH added AS (INSERT INTO {s}.hold_acks (hold_id, instance_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING hold_id)"
            f" SELECT pg_notify({quote_literal(self.acks_channel)}, hold_id) FROM added"
        )


@functools.lru_cache(maxsize=16)
def _sql(schema: str) -> _Sql:
    return _Sql(schema)


@contextlib.contextmanager
def _translated(where: str, schema: str, timeout: float) -> Iterator[None]:
    """Driver errors -> CatalogUnavailable (connection lost) or CatalogError (tables missing)."""
    try:
        yield
    except asyncpg.UndefinedTableError as exc:
        raise CatalogError(
            f"the tenant catalog at {where} has no cluster tables in schema {schema!r}",
            hint="run `tenant-router catalog init` to create or migrate it",
        ) from exc
    except _CONNECTION_ERRORS as exc:
        raise _unavailable(where, exc, timeout) from exc


@contextlib.asynccontextmanager
async def _connection(dsn: str, schema: str, timeout: float, role: str) -> AsyncIterator[Any]:
    """One short-lived catalog connection, with driver errors translated."""
    where = describe_dsn(dsn)
    conn = await _connect(dsn, timeout, f"{_APP_NAME}-{role}")
    try:
        with _translated(where, schema, timeout):
            yield conn
    finally:
        await close_connection(conn, timeout)


def _usable(conn: Any) -> bool:
    return conn is not None and not conn.is_closed()


async def _cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until they are done, without swallowing our own cancellation."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)


def _report_crash(what: str, task: asyncio.Task[None]) -> None:
    # Outages are handled inside the tasks; anything escaping one is a bug and must not pass silently.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.critical("%s: task died", what, exc_info=exc)


# Tasks that must finish even if whoever started them is cancelled (removing an aborted hold).
_detached: set[asyncio.Task[None]] = set()


# --- registry ------------------------------------------------------------------------------------


async def list_instances(
    dsn: str,
    schema: str = DEFAULT_SCHEMA,
    *,
    stale_after: float = DEFAULT_STALE_AFTER,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> list[InstanceInfo]:
    """Every registered instance, live or stale, ordered by id."""
    sql = _sql(schema)
    async with _connection(dsn, schema, connect_timeout, "list") as conn:
        rows = await conn.fetch(sql.instances, stale_after, timeout=connect_timeout)
    return [_instance_from_row(row) for row in rows]


class InstanceRegistry:
    """This router instance's row in the catalog's registry, kept fresh by a heartbeat task.

    `start` registers (raising CatalogUnavailable if the catalog cannot be reached) and starts the
    heartbeat; the heartbeat survives catalog outages by reconnecting on the next beat, and
    registers again if its row was deleted. `stop` ends the heartbeat and deletes the row: call it
    only once this instance serves no client any more, because a deregistered instance is no longer
    asked to acknowledge holds. An instance that dies without `stop` turns stale after `stale_after`.
    """

    def __init__(
        self,
        dsn: str,
        schema: str,
        instance_id: str,
        *,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        stale_after: float = DEFAULT_STALE_AFTER,
        workers: int = 1,
        labels: Mapping[str, Any] | None = None,
        host: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if stale_after <= heartbeat_interval:
            raise ValueError("stale_after must be longer than heartbeat_interval, or live instances look stale")
        if not instance_id:
            raise ValueError("instance_id must not be empty")
        self.instance_id = instance_id
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.workers = workers
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self._labels = json.dumps(dict(labels or {}), sort_keys=True)
        self._dsn = dsn
        self._sql = _sql(schema)
        self._where = describe_dsn(dsn)
        self._timeout = connect_timeout
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._started_at: datetime | None = None

    @property
    def heartbeat_task(self) -> asyncio.Task[None] | None:
        """The running heartbeat (for supervision; cancelling it makes this instance go stale)."""
        return self._task

    @property
    def started_at(self) -> datetime | None:
        return self._started_at

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("InstanceRegistry already started")
        try:
            with _translated(self._where, self._sql.schema, self._timeout):
                await self._reconnect()
                await self._register(first=True)
        except BaseException:
            await self._drop_connection()
            raise
        self._task = asyncio.create_task(self._beat(), name=f"instance-heartbeat:{self.instance_id}")
        self._task.add_done_callback(functools.partial(_report_crash, f"instance registry {self.instance_id}"))
        log.info("instance registry: registered %s (pid %d)", self.instance_id, self.pid)

    async def stop(self) -> None:
        """Stop the heartbeat and delete this instance's row (if the catalog can be reached)."""
        task, self._task = self._task, None
        if task is not None:
            await _cancel_and_wait([task])
        try:
            if not _usable(self._conn):
                await self._reconnect()
            await self._conn.execute(self._sql.deregister, self.instance_id, self.host, self.pid, timeout=self._timeout)
        except _OUTAGES as exc:
            log.warning(
                "instance registry: could not deregister %s (%s); it turns stale after %gs",
                self.instance_id,
                exc,
                self.stale_after,
            )
        finally:
            await self._drop_connection()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def all_instances(self) -> list[InstanceInfo]:
        return await list_instances(
            self._dsn, self._sql.schema, stale_after=self.stale_after, connect_timeout=self._timeout
        )

    async def live_instances(self) -> list[InstanceInfo]:
        return [info for info in await self.all_instances() if info.live]

    # -- internals --

    async def _reconnect(self) -> None:
        await self._drop_connection()
        self._conn = await _connect(self._dsn, self._timeout, f"{_APP_NAME}-registry")

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        await close_connection(conn, self._timeout)

    async def _register(self, *, first: bool) -> None:
        """Upsert our row. The first time, also forget acknowledgements a previous incarnation of this
        id left behind: this process holds nothing yet."""
        conn, sql = self._conn, self._sql
        async with conn.transaction():
            other = await conn.fetchrow(sql.claimant, self.instance_id, self.stale_after, timeout=self._timeout)
            if other is not None and other["live"] and (other["host"], other["pid"]) != (self.host, self.pid):
                # Registering anyway: an instance that serves clients must be visible, or holds would
                # not wait for it. Two processes sharing an id is a configuration mistake to fix.
                log.warning(
                    "instance registry: %s is also registered by %s pid %d with a fresh heartbeat;"
                    " two routers share this instance id",
                    self.instance_id,
                    other["host"],
                    other["pid"],
                )
            self._started_at = await conn.fetchval(
                sql.register,
                self.instance_id,
                self.host,
                self.pid,
                None if first else self._started_at,
                self.workers,
                __version__,
                self._labels,
                timeout=self._timeout,
            )
            if first:
                await conn.execute(sql.forget_acks, self.instance_id, timeout=self._timeout)

    async def _heartbeat(self) -> None:
        if not _usable(self._conn):
            await self._reconnect()
            await self._register(first=False)
            return
        status = await self._conn.execute(self._sql.heartbeat, self.instance_id, self.host, self.pid)
        if status != "UPDATE 1":
            log.warning("instance registry: the row of %s was gone; registering again", self.instance_id)
            await self._register(first=False)

    async def _beat(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                # A catalog that stops answering must not hang the heartbeat: give up, reconnect next beat.
                async with asyncio.timeout(self._timeout):
                    await self._heartbeat()
            except _OUTAGES as exc:
                # The first failure is worth a warning; repeating it every beat is noise.
                log.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "instance registry: heartbeat of %s failed (%s); retrying every %gs",
                    self.instance_id,
                    exc,
                    self.heartbeat_interval,
                )
                failing = True
                await self._drop_connection()
            else:
                if failing:
                    log.info("instance registry: heartbeat of %s is back", self.instance_id)
                failing = False


# --- holds: coordinator --------------------------------------------------------------------------


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
        self._sql = _sql(schema)
        self.stale_after = stale_after
        self._poll = poll_interval
        self._timeout = connect_timeout

    async def request_hold(self, tenant_id: str, reason: str, *, timeout: float) -> Hold:
        """Hold `tenant_id` on every live instance, or raise with no hold left behind.

        The instances that must acknowledge are those live when the hold is created, plus any that
        turn live while we wait. One that goes stale still has to acknowledge (it may be cut off
        from the catalog but still serving clients); one that deregisters (clean stop) no longer
        does. Raises HoldNotAcknowledged after `timeout` seconds, TenantAlreadyHeld if the tenant
        has a hold already. On any failure, cancellation included, the hold is removed again.
        """
        validate_tenant_id(tenant_id)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        hold_id = uuid.uuid4().hex
        sql = self._sql
        wake = asyncio.Event()

        def on_ack(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            if payload == hold_id:
                wake.set()

        async with _connection(self._dsn, sql.schema, self._timeout, "coordinator") as conn:
            # LISTEN before the hold exists, so no acknowledgement can slip by unannounced.
            await conn.add_listener(sql.acks_channel, on_ack)
            try:
                async with conn.transaction():
                    try:
                        requested_at = await conn.fetchval(
                            sql.insert_hold, tenant_id, hold_id, reason, timeout=self._timeout
                        )
                    except asyncpg.UniqueViolationError as exc:
                        raise TenantAlreadyHeld(f"tenant {tenant_id!r} is already held") from exc
                    live = await conn.fetch(sql.live_ids, self.stale_after, timeout=self._timeout)
                    await conn.execute(sql.notify, sql.holds_channel, hold_id, timeout=self._timeout)
                required = {row["instance_id"] for row in live}
                log.info("hold %s on tenant %r (%s): waiting for %d instance(s)", hold_id, tenant_id, reason, len(live))
                acked = await self._await_acks(conn, tenant_id, hold_id, required, deadline, wake, timeout)
            except TenantAlreadyHeld:
                raise
            except BaseException:
                # Also when the commit itself failed: whether the hold exists is unknown then.
                await self._abort(hold_id, tenant_id)
                raise
        log.info("hold %s on tenant %r: acknowledged by %s", hold_id, tenant_id, ", ".join(acked) or "nobody")
        return Hold(hold_id, tenant_id, reason, requested_at, acked)

    async def release_hold(self, hold_id: str) -> bool:
        """Remove the hold; False if it did not exist (any more)."""
        sql = self._sql
        async with _connection(self._dsn, sql.schema, self._timeout, "coordinator") as conn, conn.transaction():
            tenant_id = await conn.fetchval(sql.delete_hold, hold_id, timeout=self._timeout)
            if tenant_id is not None:
                await conn.execute(sql.notify, sql.holds_channel, hold_id, timeout=self._timeout)
        if tenant_id is not None:
            log.info("hold %s on tenant %r released", hold_id, tenant_id)
        return tenant_id is not None

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
            if not await conn.fetchval(sql.hold_exists, hold_id, timeout=self._timeout):
                raise ClusterError(f"hold {hold_id} on tenant {tenant_id!r} was released while being acknowledged")
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
            except _OUTAGES as exc:
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


# --- holds: participant --------------------------------------------------------------------------


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


class HoldParticipant:
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
        self.instance_id = instance_id
        self._on_hold = on_hold
        self._on_release = on_release
        self._dsn = dsn
        self._sql = _sql(schema)
        self._where = describe_dsn(dsn)
        self._poll = poll_interval
        self._timeout = connect_timeout
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._entries: dict[str, _Entry] = {}
        self._wake = asyncio.Event()

    @property
    def held_tenants(self) -> frozenset[str]:
        """Tenants for which on_hold was called and on_release has not finished yet."""
        busy = {_Stage.ENTERING, _Stage.HELD, _Stage.FAILED, _Stage.RELEASING}
        return frozenset(e.tenant_id for e in self._entries.values() if e.stage in busy)

    @property
    def connected(self) -> bool:
        return _usable(self._conn)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("HoldParticipant already started")
        try:
            with _translated(self._where, self._sql.schema, self._timeout):
                await self._reconnect()
                await self._sync()
                # The router must not serve a tenant that is held already: enter those holds first.
                await asyncio.gather(*(entry.settled.wait() for entry in self._entries.values()))
                await self._sync()
        except BaseException:
            await self._shutdown()
            raise
        self._task = asyncio.create_task(self._run(), name=f"hold-participant:{self.instance_id}")
        self._task.add_done_callback(functools.partial(_report_crash, f"hold participant {self.instance_id}"))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await _cancel_and_wait([task])
        await self._shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the background task (the only one doing I/O) --

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
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
            except _OUTAGES as exc:
                log.log(
                    logging.DEBUG if reconnecting else logging.WARNING,
                    "hold participant %s: %s; retrying every %gs",
                    self.instance_id,
                    exc,
                    self._poll,
                )
                await self._drop_connection()

    async def _sync(self) -> None:
        """Compare the catalog's holds with ours: enter new ones, release vanished ones, acknowledge
        the ones we hold."""
        rows = await self._conn.fetch(self._sql.current_holds, timeout=self._timeout)
        current: dict[str, str] = {row["hold_id"]: row["tenant_id"] for row in rows}
        for entry in self._entries.values():
            if entry.hold_id not in current:
                entry.gone.set()
        for hold_id, tenant_id in current.items():
            if hold_id not in self._entries:
                self._enter(hold_id, tenant_id)
        for entry in list(self._entries.values()):
            if entry.stage is _Stage.HELD and not entry.gone.is_set():
                await self._acknowledge(entry)

    def _enter(self, hold_id: str, tenant_id: str) -> None:
        earlier = [e.task for e in self._entries.values() if e.tenant_id == tenant_id and e.task is not None]
        entry = _Entry(hold_id, tenant_id)
        self._entries[hold_id] = entry
        entry.task = asyncio.create_task(self._lifecycle(entry, earlier), name=f"hold:{hold_id}")
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
        _report_crash(f"hold participant {self.instance_id}: hold {entry.hold_id}", task)

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
        conn = await _connect(self._dsn, self._timeout, f"{_APP_NAME}-participant")
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

    async def _shutdown(self) -> None:
        entries, self._entries = list(self._entries.values()), {}
        await _cancel_and_wait(e.task for e in entries if e.task is not None)
        await self._drop_connection()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    def _on_terminated(self, conn: object) -> None:
        if conn is self._conn:
            self._wake.set()
