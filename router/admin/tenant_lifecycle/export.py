"""`tenant-router tenants export`: all of a tenant's rows on its shard, in one archive.

Owns: `export_tenant`, reading every table that holds the tenant's rows in one consistent snapshot
and writing the archive with its manifest.

Must not: change anything on the shard or in the catalog (it only reads), or know the archive's
layout beyond archive.py's `Manifest`, `TableData` and `write_archive`.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from router.admin.tenant_lifecycle.archive import DATA_DIR, Manifest, TableData, copy_file_name, write_archive
from router.admin.tenant_lifecycle.shard import copy_digest, find_tables, locate_tenant, shard_errors, tenant_session
from router.config import RouterConfig
from router.core.topology import Topology
from router.errors import TenantLifecycleError, UnknownTenant

log = logging.getLogger(__name__)


async def export_tenant(config: RouterConfig, topology: Topology, tenant_id: str, path: Path) -> Manifest:
    """Write all of the tenant's rows on its shard to one archive at `path` (see read_archive).

    The tables are read in one repeatable-read, read-only transaction: a consistent snapshot.
    """
    view = await locate_tenant(config, topology, tenant_id)
    if view is None:
        raise UnknownTenant(f"tenant {tenant_id!r} is not in the catalog")
    with tempfile.TemporaryDirectory(prefix="tenant-export-") as tmp:
        entries: list[TableData] = []
        data: dict[str, Path] = {}
        with shard_errors("export", topology, view):
            async with (
                tenant_session(config, topology, view, as_tenant=True) as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                for index, table in enumerate(await find_tables(conn, view)):
                    file = f"{DATA_DIR}/{copy_file_name(index)}"
                    data[file] = Path(tmp) / copy_file_name(index)
                    with data[file].open("wb") as out:
                        digest = await copy_digest(conn, table.select_sql(table.columns, tenant_id), out)
                    entries.append(
                        TableData(
                            table=table.table,
                            schema=None if view.tenant.isolation == "schema" else table.schema,
                            columns=table.columns,
                            rows=digest.rows,
                            sha256=digest.hexdigest(),
                            file=file,
                            tenant_column=table.tenant_column,
                        )
                    )
        manifest = Manifest(
            tenant=tenant_id,
            isolation=view.tenant.isolation,
            source_shard=view.shard,
            created_at=datetime.now(UTC),
            tables=tuple(entries),
        )
        try:
            await asyncio.to_thread(write_archive, path, manifest, data)
        except OSError as exc:
            raise TenantLifecycleError(f"could not write the export of tenant {tenant_id!r} to {path}: {exc}") from exc
    log.info("exported tenant %r: %d tables, %d rows to %s", tenant_id, len(entries), manifest.total_rows, path)
    return manifest
