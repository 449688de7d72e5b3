"""`tenant-router tenants import`: an export archive loaded back onto the tenant's current shard.

Owns: `import_tenant`: reading and checking the archive, adding the tenant first if the catalog
does not have it (tenant_admin.add_tenant provisions its schema or database), matching each
archived table with the target's, loading every row in one transaction (through a staging table
where row-level security applies to the session), reading the rows back and comparing them with
the manifest, moving sequences past the loaded values; and undoing all of it when anything fails,
a tenant this call added included.

Must not: mix the archive's rows with rows the tenant already has unless asked to replace them,
create tables (the application schema, `tenant.schema_sql`, does), or drop a schema or database
this call did not create.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from router.admin.tenant_admin import TenantView, add_tenant, catalog_store, tenant_view
from router.admin.tenant_lifecycle.archive import Manifest, TableData, read_archive
from router.admin.tenant_lifecycle.erase import erase_data
from router.admin.tenant_lifecycle.shard import (
    ShardTable,
    copy_digest,
    locate_tenant,
    ordered_tables,
    shard_errors,
    tenant_session,
)
from router.catalog.store import Tenant
from router.config import RouterConfig
from router.core.hashing import Ring
from router.core.topology import Topology
from router.errors import ArchiveInvalid, ImportRefused, TenantLifecycleError, VerificationFailed
from router.isolation import Isolation, database_name, quote_ident, schema_name

log = logging.getLogger(__name__)

# Sequences owned by a table's columns (serial and identity), for moving them past loaded values.
_SEQUENCES_SQL: Final = """
SELECT s.oid, a.attname::text FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = $1
  AND d.deptype IN ('a', 'i')
"""


async def import_tenant(
    config: RouterConfig, topology: Topology, tenant_id: str, path: Path, *, replace: bool = False
) -> Manifest:
    """Restore an archive of `tenant_id` onto the tenant's current shard.

    A tenant not in the catalog is added first with the archive's isolation (which provisions its
    schema or database). All rows load in one transaction, are read back and compared with the
    manifest (row counts and checksums), and any difference rolls everything back; a tenant this
    call added is then removed again, its schema or database with it. A tenant that already has
    rows in the archive's tables is refused unless `replace`, which deletes them first.
    """
    with tempfile.TemporaryDirectory(prefix="tenant-import-") as tmp:
        manifest, files = await asyncio.to_thread(read_archive, path, Path(tmp))
        if manifest.tenant != tenant_id:
            raise ArchiveInvalid(
                f"archive {path} holds tenant {manifest.tenant!r}, not {tenant_id!r}",
                hint="an archive is imported under the tenant id it was exported from",
            )
        view = await locate_tenant(config, topology, tenant_id)
        added = view is None
        created = False  # whether adding the tenant created its schema or database (undo drops only that)
        if view is None:
            created = not await _namespace_exists(config, topology, tenant_id, manifest.isolation)
            view = await add_tenant(config, topology, tenant_id, manifest.isolation)
        elif view.tenant.isolation != manifest.isolation:
            raise ImportRefused(
                f"tenant {tenant_id!r} is a {view.tenant.isolation} tenant;"
                f" the archive holds a {manifest.isolation} one"
            )
        try:
            with shard_errors("import", topology, view, "; nothing was imported"):
                async with tenant_session(config, topology, view, as_tenant=True) as conn:
                    await _load(conn, view, manifest, files, replace)
        except BaseException:
            if added:  # leave nothing behind, whatever stopped us
                await asyncio.shield(_undo_add(config, topology, view, drop=created))
            raise
    log.info("imported tenant %r: %d tables, %d rows from %s", tenant_id, len(files), manifest.total_rows, path)
    return manifest


async def _load(conn: Any, view: TenantView, manifest: Manifest, files: list[Path], replace: bool) -> None:
    tenant_id = view.tenant.id
    source = {entry.file: file for entry, file in zip(manifest.tables, files, strict=True)}
    async with conn.transaction():
        await conn.execute("SET CONSTRAINTS ALL DEFERRED")
        pairs = await _resolve(conn, view, manifest)
        occupied = [
            entry.name
            for table, entry in pairs
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table.sql}{table.rows_filter(tenant_id)})")
        ]
        if occupied and not replace:
            raise ImportRefused(
                f"tenant {tenant_id!r} already has rows on shard {view.shard} in: {', '.join(occupied)};"
                " nothing was imported",
                hint="import with replace (tenants import --replace) to delete them first",
            )
        for table, _entry in reversed(pairs):
            await conn.execute(f"DELETE FROM {table.sql}{table.rows_filter(tenant_id)}")
        for index, (table, entry) in enumerate(pairs):
            with source[entry.file].open("rb") as f:
                await _copy_in(conn, table, entry.columns, f, index)
        await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred checks fail here, not at commit
        mismatched = []
        for table, entry in pairs:
            digest = await copy_digest(conn, table.select_sql(entry.columns, tenant_id))
            if (digest.rows, digest.hexdigest()) != (entry.rows, entry.sha256):
                mismatched.append(
                    f"{entry.name}: read back {digest.rows} rows, sha256 {digest.hexdigest()};"
                    f" the manifest says {entry.rows} rows, sha256 {entry.sha256}"
                )
        if mismatched:
            raise VerificationFailed(
                f"import of tenant {tenant_id!r} failed verification and was rolled back: " + "; ".join(mismatched)
            )
        for table, _entry in pairs:
            await _advance_sequences(conn, table)


async def _resolve(conn: Any, view: TenantView, manifest: Manifest) -> list[tuple[ShardTable, TableData]]:
    """Each archived table's counterpart on the target, parents first; all missing ones named at once."""
    found: list[tuple[int, str, str, str | None]] = []
    entries: dict[int, TableData] = {}
    missing: list[str] = []
    for entry in manifest.tables:
        schema = entry.schema if entry.schema is not None else schema_name(view.tenant.id)
        oid = await conn.fetchval("SELECT to_regclass($1)::oid", f"{quote_ident(schema)}.{quote_ident(entry.table)}")
        if oid is None:
            missing.append(entry.name)
            continue
        found.append((oid, schema, entry.table, entry.tenant_column))
        entries[oid] = entry
    if missing:
        tenant = view.tenant
        where = {"shared": "the shard's database", "schema": f"schema {schema_name(tenant.id)}"}.get(
            tenant.isolation, f"database {database_name(tenant.id)}"
        )
        raise TenantLifecycleError(
            f"cannot import tenant {tenant.id!r}: {len(missing)} table(s) of the archive do not exist in {where}"
            f" on shard {view.shard}: {', '.join(missing)}",
            hint="create them first (for schema and database tenants: set tenant.schema_sql in router.yaml)",
        )
    tables = await ordered_tables(conn, found)
    return [(table, entries[table.oid]) for table in tables]


async def _copy_in(conn: Any, table: ShardTable, columns: Sequence[str], source: IO[bytes], index: int) -> None:
    """COPY `source` into `table`. PostgreSQL refuses COPY FROM into a table whose row-level
    security applies to us (no admin: the router's role on a shared table): then the rows go
    through a temporary table and an INSERT, which the policy checks row by row."""
    if not await conn.fetchval("SELECT row_security_active($1::oid::regclass)", table.oid):
        await conn.copy_to_table(table.table, schema_name=table.schema, columns=list(columns) or None, source=source)
        return
    listed = ", ".join(quote_ident(c) for c in columns)
    staging = f"tenant_import_{index}"
    await conn.execute(
        f"CREATE TEMPORARY TABLE {quote_ident(staging)} ON COMMIT DROP AS SELECT {listed} FROM {table.sql} WITH NO DATA"
    )
    await conn.copy_to_table(staging, schema_name="pg_temp", columns=list(columns) or None, source=source)
    staged = f"pg_temp.{quote_ident(staging)}"
    await conn.execute(f"INSERT INTO {table.sql} ({listed}) OVERRIDING SYSTEM VALUE SELECT {listed} FROM {staged}")


async def _advance_sequences(conn: Any, table: ShardTable) -> None:
    """Move each sequence owned by a column of `table` past the largest value now in it, so the
    next default does not collide with a loaded row (never backwards)."""
    for sequence, column in await conn.fetch(_SEQUENCES_SQL, table.oid):
        await conn.execute(
            f"SELECT setval($1::oid::regclass, m) FROM (SELECT max({quote_ident(column)})::bigint AS m"
            f" FROM {table.sql}) x WHERE m > coalesce(pg_sequence_last_value($1::oid::regclass), 0)",
            sequence,
        )


async def _namespace_exists(config: RouterConfig, topology: Topology, tenant_id: str, isolation: Isolation) -> bool:
    """Whether a tenant not in the catalog still has a schema or database where it would be placed
    (left by `tenants remove` without --drop-data): a failed import must not drop that."""
    if isolation == "shared":
        return False
    view = tenant_view(
        Tenant(tenant_id, isolation, None, "active", datetime.now(UTC), {}), topology, Ring.from_topology(topology)
    )
    if isolation == "schema":
        sql, name = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema_name(tenant_id)
    else:
        sql, name = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", database_name(tenant_id)
    with shard_errors("import", topology, view, "; nothing was imported"):
        async with tenant_session(config, topology, view, own=False) as conn:
            return bool(await conn.fetchval(sql, name))


async def _undo_add(config: RouterConfig, topology: Topology, view: TenantView, *, drop: bool) -> None:
    """Remove a tenant the failed import added; with `drop`, its schema or database and role too
    (a shared tenant's rows went with the rolled back transaction)."""
    try:
        if drop and view.tenant.isolation != "shared":
            await erase_data(config, topology, view)
        async with catalog_store(config) as store:
            await store.remove(view.tenant.id)
    except Exception as exc:
        log.error(
            "tenant %r: the failed import could not remove the tenant it added: %s; erase it with"
            " `tenant-router tenants erase %s --confirm %s`",
            view.tenant.id,
            exc,
            view.tenant.id,
            view.tenant.id,
        )
