"""The catalog store: reads and edits the tenant catalog, and creates or migrates its schema.

Owns `CatalogStore` (one asyncpg connection, used by admin commands and tests): `init_schema`
applies the migrations of router/catalog/schema.py, idempotent and safe to run concurrently; the
tenant edits (`add`, `set_status`, `set_shard`, `remove`) and reads. Catalog connection failures
become `CatalogUnavailable` naming the catalog's host:port, a catalog not initialised `CatalogError`.

Must not: decide placement (router/core/routing.py does), touch shard servers (router/admin/ does),
or serve the running router (router/catalog/cache.py does: its reads never await).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Final, Self

import asyncpg

from router.catalog.access import connect, describe_dsn, translated
from router.catalog.schema import (
    DEFAULT_SCHEMA,
    MIGRATIONS,
    SCHEMA_VERSION,
    Status,
    Tenant,
    TenantQueries,
    tenant_from_row,
    validate_status,
)
from router.dbconnect import close_connection
from router.errors import CatalogError, TenantExists, UnknownTenant
from router.isolation import Isolation, quote_ident, validate_isolation, validate_tenant_id

# The store's methods take and return these; importable from here.
__all__ = ["CatalogStore", "Status", "Tenant"]

log = logging.getLogger(__name__)

_APP_NAME: Final = "tenant-router-catalog"


def _labels_json(labels: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(dict(labels or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tenant labels must be JSON-serialisable: {exc}") from exc


class CatalogStore:
    """Reads and edits the catalog over one asyncpg connection. Use `async with` or connect/close."""

    def __init__(self, dsn: str, schema: str = DEFAULT_SCHEMA, *, connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._q = TenantQueries(schema)
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
            self._conn = await connect(self._dsn, self._timeout, _APP_NAME)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_connection(conn, self._timeout)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def _errors(self, conn: Any) -> Iterator[None]:
        """Lost connection -> CatalogUnavailable, missing table -> CatalogError; an InterfaceError
        on a connection that is still open is API misuse, not an outage, and stays as it is."""
        with translated(self._where, self._q.schema, self._timeout, conn=conn):
            yield

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
        with self._errors(conn):
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
                    for statement in MIGRATIONS[version - 1](self._q.schema):
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
        with self._errors(conn):
            try:
                row = await conn.fetchrow(self._q.insert, tenant_id, isolation, shard, body)
            except asyncpg.UniqueViolationError as exc:
                raise TenantExists(f"tenant {tenant_id!r} already exists in the catalog") from exc
        return tenant_from_row(row)

    async def get(self, tenant_id: str) -> Tenant | None:
        conn = self._connection()
        with self._errors(conn):
            row = await conn.fetchrow(self._q.select_one, tenant_id)
        return None if row is None else tenant_from_row(row)

    async def list(self) -> builtins.list[Tenant]:
        conn = self._connection()
        with self._errors(conn):
            rows = await conn.fetch(self._q.select_all)
        return [tenant_from_row(r) for r in rows]

    async def load_all(self) -> dict[str, Tenant]:
        return {t.id: t for t in await self.list()}

    async def set_status(self, tenant_id: str, status: Status) -> None:
        await self._update(self._q.set_status, tenant_id, validate_status(status))

    async def set_shard(self, tenant_id: str, shard: str | None) -> None:
        await self._update(self._q.set_shard, tenant_id, shard)

    async def remove(self, tenant_id: str) -> bool:
        """Delete the tenant's row; False if there was none."""
        conn = self._connection()
        with self._errors(conn):
            result = await conn.execute(self._q.delete, tenant_id)
        return bool(result == "DELETE 1")

    async def _update(self, sql: str, tenant_id: str, value: str | None) -> None:
        conn = self._connection()
        with self._errors(conn):
            result = await conn.execute(sql, tenant_id, value)
        if result != "UPDATE 1":
            raise UnknownTenant(f"tenant {tenant_id!r} is not in the catalog")
