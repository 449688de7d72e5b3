"""The shard side of a tenant's lifecycle: the session it is read and written in, and its tables.

Owns: the connection an export, import or erase works in (`tenant_session`: as the admin, or as
the tenant's own role where it has one, with deterministic output settings and the tenant's
context set, a shared tenant entered as the router's sessions enter it), which tables hold a
tenant's rows (`find_tables`: shared, the shard's `router.rls_tables`, rows whose tenant column is
the tenant; schema, every ordinary table of its schema; database, every ordinary table of its
database), in load order (`ordered_tables`), reading a query's COPY output with its checksum
(`copy_digest`), finding a tenant in the catalog (`locate_tenant`), and turning a failure talking
to the shard into a TenantLifecycleError that names it (`shard_errors`).

Must not: open shard connections other than through router/admin/shard_access.py (`connect`),
find a tenant or its shard its own way (the catalog through router/admin/tenant_admin.py, the
shard as placement puts it), create or drop a schema, database or role (router/admin/
provisioning.py), or write the archive (archive.py).

Determinism: every session sets the same output settings (UTC, ISO dates, ...) and rows are ordered
by the text of every column under the "C" collation (queries.select_rows_sql), so the same rows
give the same COPY bytes, and the same checksum, on any shard whatever its collation.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

from router.admin.rls import ENTER_TENANT, ENTER_TENANT_SQL, TABLES_TABLE
from router.admin.shard_access import (
    SHARD_ERRORS,
    Login,
    admin_or_router_login,
    close,
    connect,
    describe,
    reason,
    shard_primary,
)
from router.admin.tenant_admin import TenantView, catalog_store, tenant_view
from router.admin.tenant_lifecycle.archive import CopyDigest
from router.admin.tenant_lifecycle.queries import load_order, rows_filter, select_rows_sql
from router.config import RouterConfig
from router.core.hashing import Ring
from router.core.topology import Topology
from router.errors import TenantLifecycleError
from router.isolation import (
    Isolation,
    database_name,
    quote_ident,
    schema_name,
    sign_tenant,
    tenant_role,
    tenant_role_password,
)

# Output settings every lifecycle session uses, so COPY text (and the checksum over it) does not
# depend on the server's or the client's defaults.
OUTPUT_SETTINGS: Final = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)
_SYSTEM_SCHEMAS: Final = ("pg_catalog", "information_schema")


@dataclass(frozen=True)
class ShardTable:
    """A table on the shard, as found there."""

    oid: int
    schema: str
    table: str
    columns: tuple[str, ...]
    tenant_column: str | None

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    def name(self, isolation: Isolation) -> str:
        """How an archive's manifest and the commands name it (TableData.name)."""
        return self.table if isolation == "schema" else f"{self.schema}.{self.table}"

    def rows_filter(self, tenant_id: str) -> str:
        """The WHERE clause keeping the table to the tenant's rows (nothing if all are its own)."""
        return rows_filter(self.tenant_column, tenant_id)

    def select_sql(self, columns: Sequence[str], tenant_id: str) -> str:
        """The tenant's rows of `columns` in the export's order (queries.select_rows_sql)."""
        return select_rows_sql(self.schema, self.table, columns, self.tenant_column, tenant_id)


# Ordinary, permanent tables: of one schema ($1), or of every non-system schema ($1 IS NULL);
# extension members are the extension's business.
_TABLES_SQL: Final = """
SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND CASE WHEN $1::text IS NULL
           THEN n.nspname <> ALL($2::text[]) AND n.nspname NOT LIKE 'pg\\_%'
           ELSE n.nspname = $1 END
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""
_RLS_TABLES_SQL: Final = f"""
SELECT c.oid, n.nspname, c.relname, r.column_name FROM {TABLES_TABLE} r
JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY n.nspname, c.relname
"""
# Columns a COPY can write (generated ones are computed by the server).
_COLUMNS_SQL: Final = """
SELECT attrelid, array_agg(attname::text ORDER BY attnum) FROM pg_attribute
WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
GROUP BY attrelid
"""
_REFERENCES_SQL: Final = """
SELECT conrelid, confrelid FROM pg_constraint
WHERE contype = 'f' AND conrelid = ANY($1::oid[]) AND confrelid = ANY($1::oid[])
"""


async def find_tables(conn: Any, view: TenantView) -> list[ShardTable]:
    """The tables holding the tenant's rows on this connection's database, parents first."""
    tenant = view.tenant
    rows: list[tuple[int, str, str, str | None]]
    if tenant.isolation == "shared":
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", TABLES_TABLE):
            return []
        rows = [(r[0], r[1], r[2], r[3]) for r in await conn.fetch(_RLS_TABLES_SQL)]
    else:
        only = schema_name(tenant.id) if tenant.isolation == "schema" else None
        rows = [(r[0], r[1], r[2], None) for r in await conn.fetch(_TABLES_SQL, only, list(_SYSTEM_SCHEMAS))]
    return await ordered_tables(conn, rows)


async def ordered_tables(conn: Any, found: list[tuple[int, str, str, str | None]]) -> list[ShardTable]:
    """The tables (oid, schema, name, tenant column) with their columns, parents first."""
    oids = [oid for oid, *_ in found]
    columns = {r[0]: tuple(r[1]) for r in await conn.fetch(_COLUMNS_SQL, oids)}
    tables = {oid: ShardTable(oid, schema, table, columns.get(oid, ()), col) for oid, schema, table, col in found}
    references: dict[int, set[int]] = {}
    for child, parent in await conn.fetch(_REFERENCES_SQL, oids):
        references.setdefault(child, set()).add(parent)
    return [tables[oid] for oid in load_order(oids, references)]


async def copy_digest(conn: Any, query: str, out: IO[bytes] | None = None) -> CopyDigest:
    """The checksum and row count of `query`'s COPY text output, also written to `out` if given."""
    digest = CopyDigest()

    async def sink(chunk: bytes) -> None:
        digest.update(chunk)
        if out is not None:
            out.write(chunk)

    await conn.copy_from_query(query, output=sink)
    return digest


def session_login(config: RouterConfig, view: TenantView | None = None) -> Login:
    """The admin (it must read and write every tenant's rows: a superuser, or at least one that
    owns or bypasses row-level security); without one, the router's own role.

    With `view`, a schema or database tenant that has a role of its own (tenant.context_secret) is
    served as that role instead: reading and writing its tables runs its own code (triggers, CHECK
    constraints, index expressions, rules, casts to text), which as the admin would have the
    admin's rights, e.g. to grant the tenant another tenant's schema. SET ROLE would not do: the
    code could RESET ROLE back to the session's superuser."""
    secret = config.tenant.context_secret
    if view is not None and secret is not None and view.tenant.isolation != "shared":
        return Login(tenant_role(view.tenant.id), tenant_role_password(secret, view.tenant.id))
    return admin_or_router_login(config)


def session_settings(config: RouterConfig, view: TenantView) -> dict[str, str]:
    """Deterministic output, and the tenant's context as the router would set it (so defaults and
    triggers that read it see the tenant; a shared tenant is also entered, see tenant_session)."""
    settings = dict(OUTPUT_SETTINGS)
    settings[config.tenant.setting] = view.tenant.id
    if view.tenant.isolation == "schema":
        settings["search_path"] = quote_ident(schema_name(view.tenant.id))
    return settings


@contextlib.asynccontextmanager
async def tenant_session(
    config: RouterConfig, topology: Topology, view: TenantView, *, own: bool = True, as_tenant: bool = False
) -> AsyncIterator[Any]:
    """An admin connection to the tenant's shard primary: to its own database when `own` and it is
    a database tenant, else to the shard's application database. `as_tenant`: as the tenant's own
    role where it has one (see session_login), for work that may run the tenant's code."""
    primary = shard_primary(topology, view.shard, view.tenant.id)
    own_database = own and view.tenant.isolation == "database"
    login = session_login(config, view if as_tenant else None)
    conn = await connect(primary, login, database_name(view.tenant.id) if own_database else None)
    try:
        settings = session_settings(config, view)
        await conn.execute(
            "SELECT set_config(name, value, false) FROM unnest($1::text[], $2::text[]) AS s(name, value)",
            list(settings),
            list(settings.values()),
        )
        secret = config.tenant.context_secret
        # As the router's sessions do: what policies and router.current_tenant() read.
        shared = secret is not None and view.tenant.isolation == "shared" and not own_database
        if shared and await conn.fetchval("SELECT to_regprocedure($1) IS NOT NULL", ENTER_TENANT):
            assert secret is not None
            await conn.execute(ENTER_TENANT_SQL, view.tenant.id, sign_tenant(secret, view.tenant.id))
        yield conn
    finally:
        await close(conn)


@contextlib.contextmanager
def shard_errors(action: str, topology: Topology, view: TenantView, after: str = "") -> Iterator[None]:
    """A failure talking to the shard -> TenantLifecycleError naming the tenant, shard and server."""
    try:
        yield
    except SHARD_ERRORS as exc:
        where = (
            describe(shard_primary(topology, view.shard)) if view.shard in topology.shards else "not in the topology"
        )
        raise TenantLifecycleError(
            f"could not {action} tenant {view.tenant.id!r} on shard {view.shard} ({where}): {reason(exc)}{after}"
        ) from exc


async def locate_tenant(config: RouterConfig, topology: Topology, tenant_id: str) -> TenantView | None:
    """The tenant and its shard now, or None if it is not in the catalog."""
    async with catalog_store(config) as store:
        tenant = await store.get(tenant_id)
    return None if tenant is None else tenant_view(tenant, topology, Ring.from_topology(topology))
