"""The registry of running router instances: one catalog row each, kept fresh by a heartbeat.

Owns: the rows of the catalog's `instances` table (its DDL is catalog migration 2);
`InstanceRegistry` (this instance's row, kept fresh by a heartbeat task that reconnects on its
own); `list_instances` (what `tenant-router instances` shows); and what "live" means (`fresh`: a
heartbeat within `stale_after` seconds by the catalog database's clock only, so clock skew between
router hosts cannot make an instance look live or stale), which the holds build on.

Must not: know about holds beyond forgetting a previous incarnation's acknowledgements, implement
any consensus of its own (the catalog database is the single point of agreement), or parse
arguments and print.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import types
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from router import __version__
from router.catalog.access import OUTAGES, connect, connection, describe_dsn, is_open, translated
from router.catalog.schema import DEFAULT_SCHEMA
from router.core.background import BackgroundService
from router.dbconnect import close_connection
from router.errors import CatalogError
from router.isolation import quote_ident

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL: Final = 1.0
DEFAULT_STALE_AFTER: Final = 5.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
APP_NAME: Final = "tenant-router-cluster"


def default_instance_id(host: str | None, port: int) -> str:
    """`hostname:port`, the id a router instance registers under.

    `host` is the machine's name (None: `socket.gethostname()`), not the listen address, which is
    the same on every machine (127.0.0.1, 0.0.0.0). `port` is the bound port, never 0.
    """
    if not 0 < port <= 65535:
        raise ValueError(f"instance port must be the bound port (1-65535), not {port}")
    return f"{host or socket.gethostname()}:{port}"


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


def no_cluster_tables(where: str, schema: str) -> CatalogError:
    """The catalog has no cluster tables (yet): a catalog of a router older than them, or none."""
    return CatalogError(
        f"the tenant catalog at {where} has no cluster tables in schema {schema!r}",
        hint="run `tenant-router catalog init` to create or migrate it",
    )


def fresh(alias: str, param: int) -> str:
    """SQL: the instance row `alias` heartbeated within `$param` seconds, by the catalog's clock."""
    return f"{alias}heartbeat_at > now() - ${param}::float8 * interval '1 second'"


class _Sql:
    """The registry's SQL text for one catalog schema, built once."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        self.schema = schema
        self.instances = (
            "SELECT instance_id, host, pid, started_at, heartbeat_at, workers, version, labels::text AS labels,"
            f" extract(epoch FROM now() - heartbeat_at)::float8 AS age, {fresh('', 1)} AS live"
            f" FROM {s}.instances ORDER BY instance_id"
        )
        self.claimant = f"SELECT host, pid, {fresh('', 2)} AS live FROM {s}.instances WHERE instance_id = $1 FOR UPDATE"
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


@functools.lru_cache(maxsize=16)
def _sql(schema: str) -> _Sql:
    return _Sql(schema)


async def list_instances(
    dsn: str,
    schema: str = DEFAULT_SCHEMA,
    *,
    stale_after: float = DEFAULT_STALE_AFTER,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> list[InstanceInfo]:
    """Every registered instance, live or stale, ordered by id."""
    sql = _sql(schema)
    async with connection(dsn, schema, connect_timeout, f"{APP_NAME}-list", missing=no_cluster_tables) as conn:
        rows = await conn.fetch(sql.instances, stale_after, timeout=connect_timeout)
    return [_instance_from_row(row) for row in rows]


class InstanceRegistry(BackgroundService):
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
        super().__init__(log)
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

    async def _begin(self) -> None:
        try:
            with translated(self._where, self._sql.schema, self._timeout, missing=no_cluster_tables):
                await self._reconnect()
                await self._register(first=True)
        except BaseException:
            await self._drop_connection()
            raise
        self._task = self._spawn(
            self._beat(),
            name=f"instance-heartbeat:{self.instance_id}",
            # Outages are handled inside the heartbeat; anything escaping it is a bug.
            crash_message=f"instance registry {self.instance_id}: task died",
        )
        log.info("instance registry: registered %s (pid %d)", self.instance_id, self.pid)

    async def _end(self) -> None:
        """Delete this instance's row (if the catalog can be reached), the heartbeat stopped."""
        self._task = None
        try:
            if not is_open(self._conn):
                await self._reconnect()
            await self._conn.execute(self._sql.deregister, self.instance_id, self.host, self.pid, timeout=self._timeout)
        except OUTAGES as exc:
            log.warning(
                "instance registry: could not deregister %s (%s); it turns stale after %gs",
                self.instance_id,
                exc,
                self.stale_after,
            )
        finally:
            await self._drop_connection()

    async def all_instances(self) -> list[InstanceInfo]:
        return await list_instances(
            self._dsn, self._sql.schema, stale_after=self.stale_after, connect_timeout=self._timeout
        )

    async def live_instances(self) -> list[InstanceInfo]:
        return [info for info in await self.all_instances() if info.live]

    # -- internals --

    async def _reconnect(self) -> None:
        await self._drop_connection()
        self._conn = await connect(self._dsn, self._timeout, f"{APP_NAME}-registry")

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
        if not is_open(self._conn):
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
            except OUTAGES as exc:
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
