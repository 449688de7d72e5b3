"""The tenant catalog: its schema, the store that edits it, and the cache a running router reads.

Owns: the catalog's tables, migrations and change-notification trigger (`init_schema`), the
`Tenant` record, `CatalogStore` (one asyncpg connection, used by admin commands) and
`CatalogCache` (the router's in-memory copy, kept fresh by LISTEN/NOTIFY with a periodic full
refresh as the fallback that also reconnects). Catalog connection failures become
`CatalogUnavailable` naming the catalog's host:port.

Must not: decide placement (routing.py does), touch shard servers (tenant_admin.py does), or
block the router's hot path: `CatalogCache.get` is a dict lookup and never awaits. The cache
keeps serving the last state it knew while the catalog is unreachable.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Self
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from router.dbconnect import CONNECTION_ERRORS, close_connection, open_connection
from router.errors import CatalogUnavailable, RouterError, UnknownTenant
from router.isolation import Isolation, quote_ident, quote_literal, validate_isolation, validate_tenant_id

log = logging.getLogger(__name__)

Status = Literal["active", "suspended"]
STATUSES: Final[tuple[Status, ...]] = ("active", "suspended")

DEFAULT_SCHEMA: Final = "tenant_router"
# The catalog schema becomes part of the NOTIFY channel name, which PostgreSQL caps at 63 bytes.
_SCHEMA_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,54}")
# A notification payload no tenant id can take: "reload everything" (sent on TRUNCATE).
RELOAD_ALL: Final = "*"
_APP_NAME: Final = "tenant-router-catalog"
# Tenants built (or compared) between two yields to the event loop during a full reload.
_RELOAD_SLICE: Final = 2000
# More changed tenants than this in one wake-up are cheaper to reload all at once.
_MAX_BATCH: Final = 500


class CatalogError(RouterError):
    """The catalog answered, but not the way we need (not initialised, newer schema, ...)."""

    sqlstate = "55000"
    severity = "ERROR"


class TenantExists(CatalogError):
    sqlstate = "42710"


@dataclass(frozen=True, slots=True)
class Tenant:
    """One catalog row. `shard` is the catalog pin, or None when placement decides."""

    id: str
    isolation: Isolation
    shard: str | None
    status: Status
    created_at: datetime
    labels: Mapping[str, Any]


def validate_status(status: str) -> Status:
    """Return `status` as a Status, or raise ValueError naming the allowed values."""
    for known in STATUSES:
        if status == known:
            return known
    raise ValueError(f"invalid status {status!r}: expected one of {', '.join(STATUSES)}")


def channel_name(schema: str) -> str:
    """The NOTIFY channel the catalog in `schema` announces tenant changes on."""
    _validate_schema(schema)
    return f"{schema}_changes"


def describe_dsn(dsn: str) -> str:
    """`host:port` of a DSN (URL or key=value form), without credentials, for error messages."""
    hosts: builtins.list[str]
    ports: builtins.list[str]
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        pairs = [_split_host_port(item) for item in parts.netloc.rpartition("@")[2].split(",") if item]
        hosts, ports = [h for h, _ in pairs], [p for _, p in pairs]
        query = parse_qs(parts.query)
        if "host" in query:
            hosts = query["host"][0].split(",")
        if "port" in query:
            ports = query["port"][0].split(",")
    else:
        params = {k: v.strip("'") for k, v in re.findall(r"(\w+)\s*=\s*('[^']*'|\S+)", dsn)}
        hosts, ports = params.get("host", "").split(","), params.get("port", "").split(",")
    hosts = [h for h in hosts if h] or [os.environ.get("PGHOST", "localhost")]
    default_port = os.environ.get("PGPORT", "5432")
    if len(ports) == 1:  # one port applies to every host
        ports = ports * len(hosts)
    return ",".join(f"{host}:{(ports[i] if i < len(ports) else '') or default_port}" for i, host in enumerate(hosts))


def _split_host_port(item: str) -> tuple[str, str]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = item.partition(":")
    return unquote(host), port


# --- schema and migrations -----------------------------------------------------------------------


def _validate_schema(schema: str) -> None:
    if _SCHEMA_RE.fullmatch(schema) is None:
        raise ValueError(
            f"invalid catalog schema {schema!r}: use lowercase letters, digits and '_',"
            " starting with a letter or '_', at most 55 characters"
        )


def _migration_1(schema: str) -> builtins.list[str]:
    s = quote_ident(schema)
    isolations = ", ".join(quote_literal(i) for i in ("shared", "schema", "database"))
    statuses = ", ".join(quote_literal(st) for st in STATUSES)
    channel = quote_literal(channel_name(schema))
    return [
        f"""CREATE TABLE {s}.tenants (
            id text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{{0,47}}$'),
            isolation text NOT NULL CHECK (isolation IN ({isolations})),
            shard text NULL,
            status text NOT NULL DEFAULT 'active' CHECK (status IN ({statuses})),
            created_at timestamptz NOT NULL DEFAULT now(),
            labels jsonb NOT NULL DEFAULT '{{}}' CHECK (jsonb_typeof(labels) = 'object')
        )""",
        # Row triggers name the tenant; TRUNCATE names no one, so it asks for a full reload.
        f"""CREATE FUNCTION {s}.notify_tenant_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify({channel}, {quote_literal(RELOAD_ALL)});
            ELSIF TG_OP = 'DELETE' THEN
                PERFORM pg_notify({channel}, OLD.id);
            ELSE
                PERFORM pg_notify({channel}, NEW.id);
                IF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
                    PERFORM pg_notify({channel}, OLD.id);
                END IF;
            END IF;
            RETURN NULL;
        END
        $fn$""",
        f"""CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON {s}.tenants
            FOR EACH ROW EXECUTE FUNCTION {s}.notify_tenant_change()""",
        f"""CREATE TRIGGER tenants_notify_truncate AFTER TRUNCATE ON {s}.tenants
            FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_tenant_change()""",
    ]


def _migration_2(schema: str) -> builtins.list[str]:
    """What router instances agree on (router/catalog/cluster.py): the registry, holds and their acks."""
    s = quote_ident(schema)
    return [
        f"""CREATE TABLE {s}.instances (
            instance_id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            workers integer NOT NULL DEFAULT 1,
            version text NOT NULL,
            labels jsonb NOT NULL DEFAULT '{{}}' CHECK (jsonb_typeof(labels) = 'object')
        )""",
        # At most one hold per tenant; hold_id is what acknowledgements and notifications name.
        f"""CREATE TABLE {s}.holds (
            tenant_id text PRIMARY KEY,
            hold_id text NOT NULL UNIQUE,
            requested_at timestamptz NOT NULL DEFAULT now(),
            reason text NOT NULL
        )""",
        # Removing a hold removes its acks; an ack for a hold that is already gone is refused.
        f"""CREATE TABLE {s}.hold_acks (
            hold_id text NOT NULL REFERENCES {s}.holds (hold_id) ON DELETE CASCADE,
            instance_id text NOT NULL,
            acked_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (hold_id, instance_id)
        )""",
    ]


# Append only: version N's statements run once, in order, on catalogs below version N.
_MIGRATIONS: Final[tuple[Callable[[str], builtins.list[str]], ...]] = (_migration_1, _migration_2)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


# --- connections ---------------------------------------------------------------------------------

_CONNECTION_ERRORS: Final = CONNECTION_ERRORS


def _unavailable(where: str, exc: BaseException, timeout: float) -> CatalogUnavailable:
    if isinstance(exc, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(exc, TimeoutError):
        reason = f"no answer within {timeout:g}s"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = str(exc) or type(exc).__name__
    return CatalogUnavailable(f"tenant catalog at {where} is unavailable: {reason}")


async def _connect(dsn: str, timeout: float, application_name: str) -> Any:
    where = describe_dsn(dsn)
    try:
        return await open_connection(dsn=dsn, timeout=timeout, application_name=application_name)
    except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
        # Bad credentials or a missing database also leave the router without a catalog.
        raise _unavailable(where, exc, timeout) from exc


def _not_initialised(where: str, schema: str) -> CatalogError:
    return CatalogError(
        f"the tenant catalog at {where} has no schema {schema!r} yet", hint="run `tenant-router catalog init`"
    )


def _tenant_from_row(row: Mapping[str, Any]) -> Tenant:
    return Tenant(
        id=row["id"],
        isolation=validate_isolation(row["isolation"]),
        shard=row["shard"],
        status=validate_status(row["status"]),
        created_at=row["created_at"],
        labels=types.MappingProxyType(json.loads(row["labels"])),
    )


def _labels_json(labels: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(dict(labels or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tenant labels must be JSON-serialisable: {exc}") from exc


class _Queries:
    """The SQL text for one catalog schema, built once."""

    def __init__(self, schema: str) -> None:
        _validate_schema(schema)
        s = quote_ident(schema)
        cols = "id, isolation, shard, status, created_at, labels::text AS labels"
        self.schema = schema
        self.channel = channel_name(schema)
        self.select_all = f"SELECT {cols} FROM {s}.tenants ORDER BY id"
        # Keyset pages (by the primary key's own order) for the running cache's full reload.
        self.select_page = f"SELECT {cols} FROM {s}.tenants WHERE id > $1 ORDER BY id LIMIT $2"
        self.select_one = f"SELECT {cols} FROM {s}.tenants WHERE id = $1"
        self.select_many = f"SELECT {cols} FROM {s}.tenants WHERE id = ANY($1::text[])"
        self.insert = (
            f"INSERT INTO {s}.tenants (id, isolation, shard, labels) VALUES ($1, $2, $3, $4::jsonb) RETURNING {cols}"
        )
        self.set_status = f"UPDATE {s}.tenants SET status = $2 WHERE id = $1"
        self.set_shard = f"UPDATE {s}.tenants SET shard = $2 WHERE id = $1"
        self.delete = f"DELETE FROM {s}.tenants WHERE id = $1"


# --- store ---------------------------------------------------------------------------------------


class CatalogStore:
    """Reads and edits the catalog over one asyncpg connection. Use `async with` or connect/close."""

    def __init__(self, dsn: str, schema: str = DEFAULT_SCHEMA, *, connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._q = _Queries(schema)
        self._timeout = connect_timeout
        self._where = describe_dsn(dsn)
        self._conn: Any = None

    @property
    def schema(self) -> str:
        return self._q.schema

    @property
    def channel(self) -> str:
        return self._q.channel

    async def connect(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await _connect(self._dsn, self._timeout, _APP_NAME)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_connection(conn, self._timeout)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate driver errors: lost connection -> CatalogUnavailable, missing table -> CatalogError."""
        try:
            yield
        except asyncpg.UndefinedTableError as exc:
            raise _not_initialised(self._where, self._q.schema) from exc
        except _CONNECTION_ERRORS as exc:
            if isinstance(exc, asyncpg.InterfaceError) and not self._closed():
                raise  # API misuse, not an outage
            raise _unavailable(self._where, exc, self._timeout) from exc

    def _closed(self) -> bool:
        return self._conn is None or bool(self._conn.is_closed())

    def _connection(self) -> Any:
        if self._conn is None:
            raise RuntimeError("CatalogStore is not connected; call connect() or use `async with`")
        return self._conn

    async def init_schema(self) -> int:
        """Create or migrate the catalog schema; idempotent and safe to run concurrently.

        Returns the schema version now in place.
        """
        conn = self._connection()
        s = quote_ident(self._q.schema)
        with self._errors():
            async with conn.transaction():
                # Serialise concurrent `catalog init` runs; released at commit.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"catalog:{self._q.schema}")
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {s}.schema_version ("
                    " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                current = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {s}.schema_version")
                if current > SCHEMA_VERSION:
                    raise CatalogError(
                        f"the tenant catalog at {self._where} has schema version {current},"
                        f" newer than this router understands ({SCHEMA_VERSION})",
                        hint="upgrade tenant-router",
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[version - 1](self._q.schema):
                        await conn.execute(statement)
                    await conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES ($1)", version)
                    log.info("catalog %s: applied schema version %d", self._q.schema, version)
        return SCHEMA_VERSION

    async def add(
        self,
        tenant_id: str,
        isolation: Isolation,
        shard: str | None = None,
        labels: Mapping[str, Any] | None = None,
    ) -> Tenant:
        validate_tenant_id(tenant_id)
        validate_isolation(isolation)
        body = _labels_json(labels)
        conn = self._connection()
        with self._errors():
            try:
                row = await conn.fetchrow(self._q.insert, tenant_id, isolation, shard, body)
            except asyncpg.UniqueViolationError as exc:
                raise TenantExists(f"tenant {tenant_id!r} already exists in the catalog") from exc
        return _tenant_from_row(row)

    async def get(self, tenant_id: str) -> Tenant | None:
        conn = self._connection()
        with self._errors():
            row = await conn.fetchrow(self._q.select_one, tenant_id)
        return None if row is None else _tenant_from_row(row)

    async def list(self) -> builtins.list[Tenant]:
        conn = self._connection()
        with self._errors():
            rows = await conn.fetch(self._q.select_all)
        return [_tenant_from_row(r) for r in rows]

    async def load_all(self) -> dict[str, Tenant]:
        return {t.id: t for t in await self.list()}

    async def set_status(self, tenant_id: str, status: Status) -> None:
        await self._update(self._q.set_status, tenant_id, validate_status(status))

    async def set_shard(self, tenant_id: str, shard: str | None) -> None:
        await self._update(self._q.set_shard, tenant_id, shard)

    async def remove(self, tenant_id: str) -> bool:
        """Delete the tenant's row; False if there was none."""
        conn = self._connection()
        with self._errors():
            result = await conn.execute(self._q.delete, tenant_id)
        return bool(result == "DELETE 1")

    async def _update(self, sql: str, tenant_id: str, value: str | None) -> None:
        conn = self._connection()
        with self._errors():
            result = await conn.execute(sql, tenant_id, value)
        if result != "UPDATE 1":
            raise UnknownTenant(f"tenant {tenant_id!r} is not in the catalog")


# --- cache ---------------------------------------------------------------------------------------


class CatalogCache:
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
        self._dsn = dsn
        self._q = _Queries(schema)
        self._interval = refresh_interval
        self._timeout = connect_timeout
        self._where = describe_dsn(dsn)
        self.on_change = on_change
        self._tenants: dict[str, Tenant] = {}
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False
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
        return self._conn is not None and not self._conn.is_closed()

    @property
    def channel(self) -> str:
        return self._q.channel

    # -- lifecycle --

    async def start(self) -> None:
        """Load the whole catalog and start listening; raise CatalogUnavailable if it cannot be reached."""
        if self._task is not None:
            raise RuntimeError("CatalogCache already started")
        self._stopping = False
        await self._reconnect(notify=False)
        self._task = asyncio.create_task(self._run(), name=f"catalog-cache:{self._q.schema}")
        self._task.add_done_callback(self._report_crash)

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_connection()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def request_refresh(self) -> None:
        """Ask the background task for a full reload now (returns before it is done)."""
        self._pending.add(RELOAD_ALL)
        self._wake.set()

    # -- the background task --

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self._interval
        retry_now = False
        while not self._stopping:
            if not retry_now:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
                # arrives just as the event is set, and stop() would then wait forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_full - loop.time())):
                        await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            due = loop.time() >= next_full
            # A connection that was up and is now closed was lost just now (e.g. terminated).
            just_lost = self._conn is not None and self._conn.is_closed()
            reconnecting = not self.connected
            try:
                if reconnecting:
                    if not (due or retry_now or just_lost):
                        continue
                    retry_now = False
                    next_full = loop.time() + self._interval
                    await self._reconnect(notify=True)
                    log.info("catalog cache: reconnected to %s", self._where)
                    continue
                batch, self._pending = self._pending, set()
                if due or RELOAD_ALL in batch or len(batch) > _MAX_BATCH:
                    next_full = loop.time() + self._interval
                    await self._load_all(notify=True)
                elif batch:
                    await self._load_some(sorted(batch))
            except (CatalogUnavailable, CatalogError, *_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                # Keep serving the last known map. A connection that worked until now gets one
                # immediate retry; after that, reconnecting waits for the refresh tick.
                retry_now = not reconnecting
                log.warning(
                    "catalog cache: %s; serving %d cached tenants, retrying %s",
                    exc,
                    len(self._tenants),
                    "now" if retry_now else f"in {max(0.0, next_full - loop.time()):.1f}s",
                )
                await self._drop_connection()

    async def _reconnect(self, *, notify: bool) -> None:
        await self._drop_connection()
        conn = await _connect(self._dsn, self._timeout, f"{_APP_NAME}-cache")
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
            raise _not_initialised(self._where, self._q.schema) from exc

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
                fresh.update((t.id, t) for t in map(_tenant_from_row, rows))
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
        found = {t.id: t for t in map(_tenant_from_row, rows)}
        for tenant_id in tenant_ids:
            before = self._tenants.get(tenant_id)
            after = found.get(tenant_id)
            if after is None:
                self._tenants.pop(tenant_id, None)
            else:
                self._tenants[tenant_id] = after
            if before != after:
                self._changed(tenant_id)

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        # Outages are handled inside _run; anything escaping it is a bug, and must not pass silently.
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.critical("catalog cache: refresh task died; the cache is frozen from now on", exc_info=exc)

    def _changed(self, tenant_id: str) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(tenant_id)
        except Exception:
            log.exception("catalog cache: on_change callback failed for tenant %r", tenant_id)
