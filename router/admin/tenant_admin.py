"""Tenant administration: what `tenant-router catalog init` and `tenant-router tenants ...` do.

Owns: creating the catalog schema, adding tenants (catalog row, then the tenant's role and schema
or database on the shard placement chooses, undoing the row if that fails), listing, showing,
suspending, resuming and removing tenants (optionally dropping their data and role), and
`TenantView`, the text those commands show.

Must not: parse arguments or print (router/cli.py does both), decide placement itself (it asks
routing.place_tenant), talk to shards itself (router/admin/provisioning.py does, as the admin role), or be
used on the router's hot path: every call opens and closes its own connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.admin.provisioning import check_can_provision, drop_tenant, provision_tenant
from router.admin.shard_access import SHARD_ERRORS, describe, reason, shard_primary
from router.catalog.store import CatalogStore, Status, Tenant
from router.config import RouterConfig
from router.core.hashing import Ring
from router.core.routing import place_tenant
from router.core.topology import Topology
from router.errors import (
    ProvisioningError,
    ProvisioningFailed,
    RouterError,
    TenantAdminError,
    UnknownShard,
    UnknownTenant,
)
from router.isolation import (
    Isolation,
    database_name,
    schema_name,
    validate_isolation,
    validate_tenant_id,
)

__all__ = [
    "ProvisioningFailed",
    "TenantAdminError",
    "TenantView",
    "UnknownShard",
    "add_tenant",
    "init_catalog",
    "list_tenants",
    "remove_tenant",
    "resume_tenant",
    "show_tenant",
    "suspend_tenant",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantView:
    """A tenant together with where it is placed now and why ("catalog pin", "shards.yaml pin", "hashed")."""

    tenant: Tenant
    shard: str
    reason: str

    def render(self) -> str:
        """One line for `tenants list`."""
        t = self.tenant
        line = f"{t.id:<24} {t.isolation:<8} {t.status:<9} {self.shard} ({self.reason})"
        if t.labels:
            line += " " + _labels_text(t.labels)
        return line

    def describe(self) -> str:
        """Several `field: value` lines for `tenants show`."""
        t = self.tenant
        rows = [
            ("tenant", t.id),
            ("isolation", t.isolation),
            ("status", t.status),
            ("shard", f"{self.shard} ({self.reason})"),
        ]
        if t.isolation == "schema":
            rows.append(("schema", schema_name(t.id)))
        elif t.isolation == "database":
            rows.append(("database", database_name(t.id)))
        rows += [("created_at", t.created_at.isoformat()), ("labels", _labels_text(t.labels))]
        return "\n".join(f"{name + ':':<12}{value}" for name, value in rows)


def _labels_text(labels: Mapping[str, Any]) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(", ", ": "))


# --- commands ------------------------------------------------------------------------------------


async def init_catalog(config: RouterConfig) -> None:
    """Create or migrate the catalog schema (idempotent)."""
    async with catalog_store(config) as store:
        await store.init_schema()


async def add_tenant(
    config: RouterConfig,
    topology: Topology,
    tenant_id: str,
    isolation: Isolation | None = None,
    shard: str | None = None,
    labels: Mapping[str, Any] | None = None,
) -> TenantView:
    """Add a tenant to the catalog, then provision it on its shard (provisioning.provision_tenant:
    with a context secret, its own role and schema or database, and the application schema).

    `shard` pins the tenant in the catalog; without it placement decides. If provisioning fails
    the catalog row is removed again and ProvisioningFailed is raised.
    """
    validate_tenant_id(tenant_id)
    level = validate_isolation(isolation if isolation is not None else config.tenant.default_isolation)
    if shard is not None and shard not in topology.shards:
        raise UnknownShard(
            f"cannot pin tenant {tenant_id!r} to shard {shard!r}: it is not in the topology",
            hint=f"known shards: {', '.join(sorted(topology.shards)) or '(none)'}",
        )
    check_can_provision(config, tenant_id, level)  # before the row: a missing admin or schema file
    async with catalog_store(config) as store:
        tenant = await store.add(tenant_id, level, shard=shard, labels=labels)
        view = tenant_view(tenant, topology, Ring.from_topology(topology))
        try:
            await provision_tenant(config, topology, tenant.id, tenant.isolation, view.shard)
        except BaseException as exc:
            # Whatever stopped us (cancellation included), do not leave a tenant without its data.
            await asyncio.shield(_forget(store, tenant_id))
            if isinstance(exc, SHARD_ERRORS):
                raise ProvisioningFailed(
                    f"could not create the {_what(tenant)} of tenant {tenant_id!r} on shard"
                    f" {view.shard} ({_where(topology, view.shard)}): {reason(exc)};"
                    " the tenant was not added"
                ) from exc
            if isinstance(exc, ProvisioningError) and not isinstance(exc, UnknownShard):
                raise ProvisioningFailed(f"{exc.message}; the tenant was not added", hint=exc.hint) from exc
            raise
    return view


async def list_tenants(config: RouterConfig, topology: Topology) -> list[TenantView]:
    async with catalog_store(config) as store:
        tenants = await store.list()
    ring = Ring.from_topology(topology)
    return [tenant_view(t, topology, ring) for t in tenants]


async def show_tenant(config: RouterConfig, topology: Topology, tenant_id: str) -> TenantView:
    async with catalog_store(config) as store:
        tenant = await require_tenant(store, tenant_id)
    return tenant_view(tenant, topology, Ring.from_topology(topology))


async def suspend_tenant(config: RouterConfig, topology: Topology, tenant_id: str) -> TenantView:
    return await _set_status(config, topology, tenant_id, "suspended")


async def resume_tenant(config: RouterConfig, topology: Topology, tenant_id: str) -> TenantView:
    return await _set_status(config, topology, tenant_id, "active")


async def remove_tenant(config: RouterConfig, topology: Topology, tenant_id: str, drop_data: bool = False) -> None:
    """Remove the tenant's catalog row; with `drop_data`, first drop its schema or database, and
    its role where it has one.

    When dropping, the tenant is suspended first and removed from the catalog only once its data
    is gone, so a failed drop leaves a suspended tenant that the same command can retry.
    A shared tenant's rows live in shared tables and are not touched.
    """
    async with catalog_store(config) as store:
        tenant = await require_tenant(store, tenant_id)
        if drop_data and tenant.isolation != "shared":
            view = tenant_view(tenant, topology, Ring.from_topology(topology))
            await store.set_status(tenant_id, "suspended")
            try:
                await drop_tenant(config, topology, tenant.id, tenant.isolation, view.shard)
            except SHARD_ERRORS as exc:
                raise TenantAdminError(
                    f"could not drop the {_what(tenant)} of tenant {tenant_id!r} on shard {view.shard}"
                    f" ({_where(topology, view.shard)}): {reason(exc)}; the tenant is left suspended",
                    hint="fix the cause and run the same command again",
                ) from exc
        elif drop_data:
            log.warning("tenant %r is shared: its rows in shared tables were not deleted", tenant_id)
        if not await store.remove(tenant_id):
            raise UnknownTenant(f"tenant {tenant_id!r} is not in the catalog")


# --- helpers -------------------------------------------------------------------------------------


def catalog_store(config: RouterConfig) -> CatalogStore:
    """The catalog, for admin work (tenant_lifecycle/ reads and writes tenants through it too)."""
    return CatalogStore(config.catalog.dsn, config.catalog.schema)


async def require_tenant(store: CatalogStore, tenant_id: str) -> Tenant:
    """The tenant's catalog row; UnknownTenant if there is none."""
    tenant = await store.get(tenant_id)
    if tenant is None:
        raise UnknownTenant(f"tenant {tenant_id!r} is not in the catalog")
    return tenant


async def _set_status(config: RouterConfig, topology: Topology, tenant_id: str, status: Status) -> TenantView:
    async with catalog_store(config) as store:
        await store.set_status(tenant_id, status)
        tenant = await require_tenant(store, tenant_id)
    return tenant_view(tenant, topology, Ring.from_topology(topology))


def tenant_view(tenant: Tenant, topology: Topology, ring: Ring) -> TenantView:
    """The tenant with the shard placement puts it on now, and why."""
    placement = place_tenant(tenant.id, tenant.shard, topology, ring)
    return TenantView(tenant=tenant, shard=placement.shard, reason=placement.reason)


async def _forget(store: CatalogStore, tenant_id: str) -> None:
    try:
        await store.remove(tenant_id)
    except RouterError as exc:
        log.error("tenant %r: provisioning failed and its catalog row could not be removed: %s", tenant_id, exc)


def _what(tenant: Tenant) -> str:
    if tenant.isolation == "database":
        return f"database {database_name(tenant.id)!r}"
    return f"schema {schema_name(tenant.id)!r}"


def _where(topology: Topology, shard: str) -> str:
    return describe(shard_primary(topology, shard))
