"""Tenant -> target without a server: placement and pins, refusals, the session settings and role
that make a server session the tenant's, replicas, the default target, and when a resolved target
is forgotten (catalog change, reload)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from router.core.hashing import Ring
from router.core.pool import Connector, Pool, PoolKey, PoolSettings
from router.core.registry import PoolRegistry
from router.core.target import Entry
from router.core.targets import TargetRules, Targets, TenantRecord
from router.core.topology import RingConfig, ServerAddress, ServerKey, Shard, Topology
from router.errors import BackendUnavailable, TenantSuspended, UnknownTenant
from router.isolation import database_name, schema_name, sign_tenant, tenant_role, tenant_role_password


@dataclass(frozen=True)
class Record:
    id: str
    isolation: str = "shared"
    shard: str | None = None
    status: str = "active"


class Catalog:
    def __init__(self, *records: Record) -> None:
        self.records = {r.id: r for r in records}
        self.lookups: list[str] = []

    def get(self, tenant: str) -> TenantRecord | None:
        self.lookups.append(tenant)
        return self.records.get(tenant)


class Connectors:
    """The registry's connector factory: records each pool's credentials, opens nothing."""

    def __init__(self) -> None:
        self.made: list[tuple[str | None, bool]] = []

    def __call__(self, password: str | None, own_role: bool) -> Connector[Any]:
        self.made.append((password, own_role))

        async def connect(pool: Pool[Any]) -> Any:
            raise AssertionError("resolving a target opens no connection")

        return connect


REPLICA = ServerAddress("a-replica.db", 5433, "app_ro", weight=3)
SHARDS = {
    "shard_a": Shard("shard_a", ServerAddress("a.db", 5432, "app"), (REPLICA,), 1),
    "shard_b": Shard("shard_b", ServerAddress("b.db", 5432, "app"), (), 1),
}
TOPOLOGY = Topology(shards=SHARDS, ring=RingConfig(), pins={"bigcorp": "shard_b"}, source=Path("shards.yaml"))
RING = Ring.from_topology(TOPOLOGY)
RULES = TargetRules("app.tenant_id", "search_path", None, "router", "pw")
SECRET_RULES = replace(RULES, context_secret="s3cret")


def targets(*records: Record, rules: TargetRules = RULES) -> tuple[Targets, Catalog, PoolRegistry[Any]]:
    catalog = Catalog(*records)
    settings = PoolSettings(size=2, wait_timeout=1, connect_timeout=1, idle_timeout=0, lifetime=0)
    own = rules.server_user if rules.context_secret is not None else None
    registry: PoolRegistry[Any] = PoolRegistry(settings, Connectors(), own)
    return Targets(rules, catalog, registry.pool, TOPOLOGY), catalog, registry


def credentials(registry: PoolRegistry[Any]) -> list[tuple[str | None, bool]]:
    connectors = registry._connector
    assert isinstance(connectors, Connectors)
    return connectors.made


def test_a_hashed_tenant_goes_to_its_ring_shard_with_its_id_in_the_session_settings() -> None:
    resolver, catalog, _ = targets(Record("acme"))
    target = resolver.resolve("acme")
    shard = RING.shard_for("acme")
    primary = SHARDS[shard].primary
    assert (target.tenant, target.shard) == ("acme", shard)
    assert target.pool.key == PoolKey(shard, primary.host, primary.port, "app", "router")
    assert target.context == {"app.tenant_id": "acme"}
    assert target.entry is None and not target.shares_role
    assert resolver.resolve("acme") is target and catalog.lookups == ["acme"]  # kept, not looked up again
    assert resolver.targets == {"acme": target}


def test_a_catalog_pin_beats_a_shards_yaml_pin_which_beats_the_ring() -> None:
    resolver, _, _ = targets(Record("bigcorp"), Record("acme", shard="shard_a"), Record("other", shard="shard_b"))
    assert resolver.resolve("bigcorp").shard == "shard_b"
    assert resolver.resolve("acme").shard == "shard_a"
    assert resolver.resolve("other").shard == "shard_b"


def test_tenants_of_one_shard_share_its_pool_and_replicas_get_theirs() -> None:
    resolver, _, registry = targets(Record("acme", shard="shard_a"), Record("globex", shard="shard_a"))
    acme, globex = resolver.resolve("acme"), resolver.resolve("globex")
    assert acme.pool is globex.pool
    (member,) = acme.replicas
    assert member.key == ServerKey("shard_a", "a-replica.db", 5433, "replica")
    assert member.weight == 3
    assert member.pool.key == PoolKey("shard_a", "a-replica.db", 5433, "app_ro", "router")
    assert member.pool is globex.replicas[0].pool
    assert len(registry.pools) == 2


def test_unknown_suspended_and_misplaced_tenants_are_refused() -> None:
    resolver, _, _ = targets(Record("paused", status="suspended"), Record("lost", shard="shard_gone"))
    with pytest.raises(UnknownTenant) as unknown:
        resolver.resolve("nobody")
    assert unknown.value.message == 'unknown tenant "nobody"'
    assert unknown.value.hint == "register it with: tenant-router tenants add nobody"
    with pytest.raises(TenantSuspended, match='tenant "paused" is suspended'):
        resolver.resolve("paused")
    with pytest.raises(BackendUnavailable, match=r'pinned to shard "shard_gone", which shards\.yaml does not define'):
        resolver.resolve("lost")
    assert resolver.targets == {}


def test_schema_and_database_tenants_get_their_schema_or_database() -> None:
    resolver, _, _ = targets(Record("acme", "schema", "shard_a"), Record("globex", "database", "shard_a"))
    acme = resolver.resolve("acme")
    assert acme.context == {"app.tenant_id": "acme", "search_path": schema_name("acme")}
    assert acme.pool.key.database == "app"
    globex = resolver.resolve("globex")
    assert globex.context == {"app.tenant_id": "globex"}
    assert globex.pool.key.database == database_name("globex")
    assert globex.replicas[0].pool.key.database == database_name("globex")


def test_with_a_context_secret_shared_tenants_enter_signed_and_the_others_act_as_their_own_role() -> None:
    records = (Record("acme", "shared", "shard_a"), Record("globex", "schema", "shard_a"))
    resolver, _, registry = targets(*records, rules=SECRET_RULES)
    acme = resolver.resolve("acme")
    assert acme.entry == Entry("acme", sign_tenant("s3cret", "acme"))
    assert acme.context == {}  # entering the tenant sets its id
    assert acme.shares_role and acme.pool.key.user == "router"
    globex = resolver.resolve("globex")
    assert globex.entry is None
    assert globex.context == {"app.tenant_id": "globex", "search_path": schema_name("globex")}
    assert globex.pool.key.user == tenant_role("globex")
    # Pools in creation order: acme's replica and primary (the router's own role, whose session
    # defaults are checked), then globex's, as its own role with its derived password.
    password = tenant_role_password("s3cret", "globex")
    assert credentials(registry) == [("pw", True), ("pw", True), (password, False), (password, False)]


def test_the_default_target_is_the_first_shard_s_primary_as_the_router_s_role() -> None:
    resolver, _, _ = targets()
    default = resolver.default()
    assert (default.tenant, default.shard, default.context, default.entry) == ("", "shard_a", {}, None)
    assert default.pool.key == PoolKey("shard_a", "a.db", 5432, "app", "router")
    hardened, _, _ = targets(rules=SECRET_RULES)
    assert hardened.default().entry == Entry("")  # it leaves whatever tenant the server had entered


def test_a_tenant_changed_in_the_catalog_is_resolved_afresh() -> None:
    resolver, catalog, _ = targets(Record("acme", shard="shard_a"))
    first = resolver.resolve("acme")
    catalog.records["acme"] = Record("acme", shard="shard_b")
    assert resolver.resolve("acme") is first  # nothing said it changed
    resolver.forget("acme")
    assert resolver.resolve("acme").shard == "shard_b"
    catalog.records["acme"] = Record("acme", status="suspended")
    resolver.forget("acme")
    with pytest.raises(TenantSuspended):
        resolver.resolve("acme")
    resolver.forget("never-resolved")  # no error


def test_a_new_topology_drops_every_target_and_places_by_its_own_ring_and_pins() -> None:
    resolver, _, _ = targets(Record("bigcorp"), Record("acme"))
    kept = resolver.targets
    resolver.resolve("bigcorp")
    resolver.resolve("acme")
    moved = Topology(shards=SHARDS, ring=RingConfig(), pins={"bigcorp": "shard_a"}, source=Path("shards.yaml"))
    resolver.set_topology(moved)
    assert resolver.targets == {} and resolver.targets is kept  # sessions keep the same dict
    assert resolver.resolve("bigcorp").shard == "shard_a"
    assert resolver.topology is moved
