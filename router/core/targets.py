"""Tenant -> target: where a tenant's transactions run, as sessions ask for it.

Owns: the resolution (catalog record -> placement -> shard -> pools and the session settings and
server role that make a server connection the tenant's), the refusals on the way (unknown or
suspended tenant, a pin to a shard the topology lacks), the default target of sessions without a
tenant, and `targets`: the resolved ones, one dict for the process's lifetime, which sessions keep
and read without a call. An entry goes when its tenant changes in the catalog; all go when the
topology changes.

Must not: read the catalog itself (it is handed a `TenantSource`), open connections (the
`PoolSource` gives pools), or import any protocol or network code. What is specific to the
server's protocol (the name of the setting that selects a schema, PostgreSQL's `search_path`)
comes in as data, in `TargetRules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.core.hashing import Ring
from router.core.pool import Pool
from router.core.replicas import ReplicaMember
from router.core.routing import place_tenant
from router.core.target import Entry, Target
from router.core.topology import ServerAddress, ServerKey, Shard, Topology
from router.errors import BackendUnavailable, TenantSuspended, UnknownTenant
from router.isolation import database_name, schema_name, sign_tenant, tenant_role, tenant_role_password

__all__ = ["PoolSource", "TargetRules", "Targets", "TenantRecord", "TenantSource"]


class TenantRecord(Protocol):
    """A tenant as the catalog has it (router.catalog.store.Tenant)."""

    @property
    def id(self) -> str: ...

    @property
    def isolation(self) -> str: ...  # shared | schema | database

    @property
    def shard(self) -> str | None: ...  # the catalog pin

    @property
    def status(self) -> str: ...


class TenantSource(Protocol):
    def get(self, tenant: str) -> TenantRecord | None: ...


class PoolSource(Protocol):
    def __call__(self, shard: str, server: ServerAddress, database: str, user: str, password: str | None) -> Pool: ...


@dataclass(frozen=True, slots=True)
class TargetRules:
    """How a tenant's server sessions are made its own: the setting that carries its id
    (tenant.setting), the server setting that selects a schema tenant's schema, the context secret
    (None: no signed entry, no per-tenant roles), and the router's own server credentials."""

    tenant_setting: str
    schema_setting: str
    context_secret: str | None
    server_user: str
    server_password: str | None


class Targets:
    def __init__(self, rules: TargetRules, tenants: TenantSource, pools: PoolSource, topology: Topology) -> None:
        self.rules = rules
        self._tenants = tenants
        self._pools = pools
        self.topology = topology
        self.ring = Ring.from_topology(topology)
        self.targets: dict[str, Target] = {}

    def set_topology(self, topology: Topology) -> None:
        """Targets resolve under `topology` from now on (every known one is dropped)."""
        self.topology = topology
        self.ring = Ring.from_topology(topology)
        self.targets.clear()

    def forget(self, tenant: str) -> None:
        """The tenant changed in the catalog: resolve it afresh next time."""
        self.targets.pop(tenant, None)

    def resolve(self, tenant: str) -> Target:
        """The tenant's target; UnknownTenant, TenantSuspended or BackendUnavailable."""
        target = self.targets.get(tenant)
        if target is not None:
            return target
        record = self._tenants.get(tenant)
        if record is None:
            raise UnknownTenant(
                f'unknown tenant "{tenant}"',
                hint=f"register it with: tenant-router tenants add {tenant}",
            )
        if record.status != "active":
            raise TenantSuspended(f'tenant "{tenant}" is suspended', hint="an operator can resume it")
        placement = place_tenant(tenant, record.shard, self.topology, self.ring)
        shard = self.topology.shards.get(placement.shard)
        if shard is None:
            raise BackendUnavailable(
                f'tenant "{tenant}" is pinned to shard "{placement.shard}", which shards.yaml does not define'
            )
        target = self._target_for(record, shard)
        self.targets[tenant] = target
        return target

    def _target_for(self, record: TenantRecord, shard: Shard) -> Target:
        rules = self.rules
        own_database = database_name(record.id) if record.isolation == "database" else None
        setting, secret = rules.tenant_setting, rules.context_secret
        context = {setting: record.id}  # what applications read with current_setting()
        user, password = rules.server_user, rules.server_password
        entry = None
        if secret is not None:
            # Unforgeable context: a shared tenant's server sessions enter it with its signature
            # (router/admin/rls.py); schema/database tenants act as their own role, which can reach
            # nothing of others.
            if record.isolation == "shared":
                entry = Entry(record.id, sign_tenant(secret, record.id))
                # Entering sets it too: left out of the settings, a switch between tenants with
                # the same settings sends no settings statement at all.
                del context[setting]
            else:
                user, password = tenant_role(record.id), tenant_role_password(secret, record.id)
        if record.isolation == "schema":
            context[rules.schema_setting] = schema_name(record.id)
        replicas = tuple(
            ReplicaMember(
                ServerKey(shard.name, replica.host, replica.port, "replica"),
                replica.weight,
                self._pools(shard.name, replica, own_database or replica.dbname, user, password),
            )
            for replica in shard.replicas
        )
        primary = self._pools(shard.name, shard.primary, own_database or shard.primary.dbname, user, password)
        return Target(record.id, shard.name, primary, context, replicas, entry)

    def default(self) -> Target:
        """For a trusted user that logs in without a tenant: where server parameters come from."""
        rules = self.rules
        shard = next(iter(self.topology.shards.values()))
        pool = self._pools(shard.name, shard.primary, shard.primary.dbname, rules.server_user, rules.server_password)
        # With a context secret, a session without tenant leaves whatever one its server had entered.
        entry = Entry("") if rules.context_secret is not None else None
        return Target("", shard.name, pool, {}, entry=entry)
