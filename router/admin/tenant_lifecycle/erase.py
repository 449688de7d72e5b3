"""`tenant-router tenants erase`: a tenant's data deleted for good, then its catalog entry.

Owns: `erase_tenant` (the id typed again as confirmation; the tenant suspended first and removed
from the catalog only once its data is gone, so a failure leaves a suspended tenant the same
command erases again), `erase_data` (a shared tenant's rows in every protected table; a schema or
database tenant's schema or database and role, through provisioning.drop_tenant) and
`erase_summary`, the lines the command prints.

Must not: touch another tenant's rows (shared tables are filtered by the tenant column), or print
(router/cli.py does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import asyncpg

from router.admin.provisioning import drop_tenant
from router.admin.tenant_admin import TenantView, catalog_store, require_tenant, tenant_view
from router.admin.tenant_lifecycle.shard import find_tables, shard_errors, tenant_session
from router.config import RouterConfig
from router.core.hashing import Ring
from router.core.topology import Topology
from router.errors import ConfirmationMismatch, UnknownTenant

log = logging.getLogger(__name__)


async def erase_tenant(config: RouterConfig, topology: Topology, tenant_id: str, confirm: str) -> dict[str, int]:
    """Delete every row of the tenant on its shard, then its catalog entry; `confirm` must repeat
    `tenant_id`. Returns the rows deleted per table (named as in an export's manifest).

    Shared: its rows in every `router.rls_tables` table. Schema / database: the schema or database
    (WITH FORCE, ending sessions still in it) and the tenant's role. The tenant is suspended first
    and removed from the catalog only once its data is gone, so a failure leaves a suspended tenant
    the same command can erase again.
    """
    if confirm != tenant_id:
        raise ConfirmationMismatch(
            f"erasing tenant {tenant_id!r} needs its id repeated as confirmation (got {confirm!r}); nothing was done",
            hint=f"tenant-router tenants erase {tenant_id} --confirm {tenant_id}",
        )
    async with catalog_store(config) as store:
        tenant = await require_tenant(store, tenant_id)
        view = tenant_view(tenant, topology, Ring.from_topology(topology))
        await store.set_status(tenant_id, "suspended")
        deleted = await erase_data(config, topology, view)
        if not await store.remove(tenant_id):
            raise UnknownTenant(f"tenant {tenant_id!r} is not in the catalog")
    log.warning("erased tenant %r: %d rows in %d tables", tenant_id, sum(deleted.values()), len(deleted))
    return deleted


async def erase_data(config: RouterConfig, topology: Topology, view: TenantView) -> dict[str, int]:
    """Delete the tenant's data on its shard (not its catalog entry); the rows per table it held."""
    tenant = view.tenant
    after = "; the tenant is left suspended, run the same command again"
    with shard_errors("erase", topology, view, after):
        if tenant.isolation == "shared":
            async with tenant_session(config, topology, view) as conn, conn.transaction():
                tables = await find_tables(conn, view)
                deleted = {}
                for table in reversed(tables):
                    status = await conn.execute(f"DELETE FROM {table.sql}{table.rows_filter(tenant.id)}")
                    deleted[table.name(tenant.isolation)] = int(status.split()[-1])
            return dict(sorted(deleted.items()))
        counts = await _count_rows(config, topology, view)
        await drop_tenant(config, topology, tenant.id, tenant.isolation, view.shard)  # and its role
    return counts


async def _count_rows(config: RouterConfig, topology: Topology, view: TenantView) -> dict[str, int]:
    try:
        async with tenant_session(config, topology, view) as conn:
            tables = await find_tables(conn, view)
            return {t.name(view.tenant.isolation): await conn.fetchval(f"SELECT count(*) FROM {t.sql}") for t in tables}
    except asyncpg.InvalidCatalogNameError:  # its database is gone already (an erase run before)
        return {}


def erase_summary(tenant_id: str, deleted: Mapping[str, int]) -> list[str]:
    """Lines for the command line: rows deleted per table, then the total."""
    width = max((len(name) for name in deleted), default=0)
    lines = [f"{name:<{width}}  {count:>10} rows deleted" for name, count in deleted.items()]
    lines.append(
        f"erased tenant {tenant_id}: {sum(deleted.values())} rows in total from {len(deleted)} tables;"
        " removed from the catalog"
    )
    return lines
