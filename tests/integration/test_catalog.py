"""The tenant catalog and tenant administration against real PostgreSQL servers.

Store: schema creation is idempotent, rows round-trip, mistakes fail clearly. Admin: a tenant's
schema or database really appears on the shard placement chose (and not on the other), and goes
away with drop_data. Cache: NOTIFY makes changes visible within a second; the periodic refresh
alone catches changes made without NOTIFY and reconnects after the listener is killed or the
catalog restarts, serving the last known tenants meanwhile. A catalog that is down reads as such.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from router.admin.tenant_admin import (
    ProvisioningFailed,
    TenantView,
    UnknownShard,
    add_tenant,
    init_catalog,
    list_tenants,
    remove_tenant,
    resume_tenant,
    show_tenant,
    suspend_tenant,
)
from router.catalog.access import describe_dsn
from router.catalog.cache import CatalogCache
from router.catalog.schema import SCHEMA_VERSION, Tenant, channel_name
from router.catalog.store import CatalogStore
from router.config import AdminCredentials, RouterConfig, load_router_config
from router.core.hashing import Ring
from router.core.topology import Topology, load_topology
from router.errors import CatalogError, CatalogUnavailable, TenantExists, UnknownTenant
from router.isolation import database_name, quote_literal, schema_name
from router.testing.deploy import CONTEXT_SECRET
from router.testing.pgcluster import CATALOG_DB, SHARD_DB, PgEnvironment, free_port
from router.testing.waiting import wait_until_async

pytestmark = pytest.mark.integration

# A schema of our own, so other test modules sharing the catalog cluster cannot disturb us.
SCHEMA = "catalog_it"
REFRESH = 0.5  # seconds; the cache's fallback full refresh in these tests
VISIBLE_WITHIN = 1.0  # seconds; the promise NOTIFY makes
FILE_PINNED = "file-pinned"


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_files(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("catalog-config")
    shards = {
        name: {"primary": {"host": cluster.host, "port": cluster.port, "dbname": SHARD_DB}}
        for name, cluster in pg_env.shards.items()
    }
    (directory / "shards.yaml").write_text(
        yaml.safe_dump({"shards": shards, "pins": {FILE_PINNED: "shard_b"}}), encoding="utf-8"
    )
    router = {
        "catalog": {"dsn": pg_env.catalog_dsn(), "schema": SCHEMA, "refresh_interval": REFRESH},
        "shards_file": "shards.yaml",
        "auth": {"method": "trust", "users": [{"name": "app"}]},
        "server": {"user": pg_env.ROUTER_ROLE, "password": pg_env.ROUTER_PASSWORD},
        # The hardened setup: schema and database tenants get their own roles, made by the admin.
        "admin": {"user": pg_env.SUPERUSER, "password": pg_env.SUPERUSER_PASSWORD},
        "tenant": {"default_isolation": "schema", "context_secret": CONTEXT_SECRET},
    }
    (directory / "router.yaml").write_text(yaml.safe_dump(router), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def config(config_files: Path) -> RouterConfig:
    return load_router_config(config_files / "router.yaml")


@pytest.fixture(scope="module")
def topology(config: RouterConfig) -> Topology:
    return load_topology(config.shards_file)


@pytest.fixture(scope="module")
async def initialised(config: RouterConfig) -> None:
    await init_catalog(config)


@pytest.fixture
async def store(config: RouterConfig, initialised: None) -> AsyncIterator[CatalogStore]:
    async with CatalogStore(config.catalog.dsn, config.catalog.schema) as s:
        yield s


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def id_on(topology: Topology, shard: str, prefix: str) -> str:
    """A fresh tenant id the ring hashes to `shard`."""
    ring = Ring.from_topology(topology)
    while True:
        candidate = new_id(prefix)
        if ring.shard_for(candidate) == shard and candidate not in topology.pins:
            return candidate


def other_shard(topology: Topology, shard: str) -> str:
    return next(name for name in topology.shards if name != shard)


def schema_exists(env: PgEnvironment, shard: str, name: str) -> bool:
    sql = f"SELECT count(*) FROM pg_namespace WHERE nspname = {quote_literal(name)}"
    return env.shards[shard].execute(sql, SHARD_DB) == "1"


def database_exists(env: PgEnvironment, shard: str, name: str) -> bool:
    sql = f"SELECT count(*) FROM pg_database WHERE datname = {quote_literal(name)}"
    return env.shards[shard].execute(sql, SHARD_DB) == "1"


def cache_backend_pids(env: PgEnvironment) -> list[str]:
    sql = (
        "SELECT pid FROM pg_stat_activity"
        f" WHERE application_name = 'tenant-router-catalog-cache' AND datname = {quote_literal(CATALOG_DB)}"
    )
    out = env.catalog.execute(sql, CATALOG_DB)
    return out.split() if out else []


def without_notify(sql: str) -> str:
    """`sql` run so that triggers (and so NOTIFY) do not fire: replica mode, superuser only."""
    return f"SET session_replication_role = replica;\n{sql};\n"


# --- store ---------------------------------------------------------------------------------------


async def test_init_schema_is_idempotent(pg_env: PgEnvironment, config: RouterConfig) -> None:
    async with CatalogStore(config.catalog.dsn, SCHEMA) as store:
        assert await store.init_schema() == SCHEMA_VERSION
        assert await store.init_schema() == SCHEMA_VERSION
    await init_catalog(config)
    versions = pg_env.catalog.execute(f"SELECT version FROM {SCHEMA}.schema_version", CATALOG_DB)
    assert versions.split() == [str(v) for v in range(1, SCHEMA_VERSION + 1)]
    triggers = pg_env.catalog.execute(
        f"SELECT tgname FROM pg_trigger WHERE tgrelid = '{SCHEMA}.tenants'::regclass AND NOT tgisinternal ORDER BY 1",
        CATALOG_DB,
    )
    assert triggers.split() == ["tenants_notify", "tenants_notify_truncate"]


async def test_concurrent_init_schema(config: RouterConfig) -> None:
    schema = f"concurrent_{uuid.uuid4().hex[:8]}"
    stores = [CatalogStore(config.catalog.dsn, schema) for _ in range(4)]
    for s in stores:
        await s.connect()
    try:
        assert await asyncio.gather(*(s.init_schema() for s in stores)) == [SCHEMA_VERSION] * 4
    finally:
        for s in stores:
            await s.close()


async def test_store_round_trip(store: CatalogStore) -> None:
    tenant_id = new_id()
    added = await store.add(tenant_id, "database", shard="shard_a", labels={"plan": "pro", "seats": 5})
    assert (added.id, added.isolation, added.shard, added.status) == (tenant_id, "database", "shard_a", "active")
    assert added.labels == {"plan": "pro", "seats": 5}
    assert added.created_at.tzinfo is not None
    assert await store.get(tenant_id) == added
    assert tenant_id in await store.load_all()
    assert [t.id for t in await store.list()] == sorted(t.id for t in await store.list())

    await store.set_status(tenant_id, "suspended")
    await store.set_shard(tenant_id, None)
    changed = await store.get(tenant_id)
    assert changed == dataclasses.replace(added, status="suspended", shard=None)

    assert await store.remove(tenant_id) is True
    assert await store.remove(tenant_id) is False
    assert await store.get(tenant_id) is None


async def test_store_rejects_mistakes(store: CatalogStore) -> None:
    tenant_id = new_id()
    await store.add(tenant_id, "shared")
    with pytest.raises(TenantExists, match=f"tenant '{tenant_id}' already exists"):
        await store.add(tenant_id, "schema")
    assert (await store.get(tenant_id) or pytest.fail("gone")).isolation == "shared"
    with pytest.raises(ValueError, match="invalid tenant id"):
        await store.add("Not Valid", "shared")
    with pytest.raises(ValueError, match="invalid isolation"):
        await store.add(new_id(), "table")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON"):
        await store.add(new_id(), "shared", labels={"x": object()})
    with pytest.raises(UnknownTenant, match="not in the catalog"):
        await store.set_status(new_id(), "suspended")
    with pytest.raises(UnknownTenant):
        await store.set_shard(new_id(), "shard_a")
    with pytest.raises(ValueError, match="invalid status"):
        await store.set_status(tenant_id, "deleted")  # type: ignore[arg-type]
    await store.remove(tenant_id)


async def test_uninitialised_schema_says_so(config: RouterConfig) -> None:
    async with CatalogStore(config.catalog.dsn, "never_initialised") as store:
        with pytest.raises(CatalogError, match="no schema 'never_initialised'") as info:
            await store.list()
    assert info.value.hint is not None and "catalog init" in info.value.hint


async def test_catalog_down_is_catalog_unavailable() -> None:
    port = free_port()  # nothing listens here
    dsn = f"postgresql://tenant_router:secret@127.0.0.1:{port}/{CATALOG_DB}"
    with pytest.raises(CatalogUnavailable) as info:
        async with CatalogStore(dsn):
            pass
    assert str(info.value) == f"tenant catalog at 127.0.0.1:{port} is unavailable: connection refused"
    assert "secret" not in str(info.value)
    with pytest.raises(CatalogUnavailable, match=f"127.0.0.1:{port}"):
        await CatalogCache(dsn, refresh_interval=1).start()


async def test_wrong_credentials_are_catalog_unavailable(pg_env: PgEnvironment) -> None:
    dsn = pg_env.catalog_dsn(password="wrong")
    with pytest.raises(CatalogUnavailable, match=f"127.0.0.1:{pg_env.catalog.port}.*password"):
        await CatalogStore(dsn).connect()


def test_describe_dsn() -> None:
    assert describe_dsn("postgresql://u:p@db.example:6000/x") == "db.example:6000"
    assert describe_dsn("postgres://u@[::1]/x") == "::1:5432"
    assert describe_dsn("postgresql://u:p@h1:1,h2:2/x") == "h1:1,h2:2"
    assert describe_dsn("postgresql:///x?host=/tmp&port=7") == "/tmp:7"
    assert describe_dsn("host=10.0.0.1 port=5433 password='a b'") == "10.0.0.1:5433"
    assert channel_name("tenant_router") == "tenant_router_changes"
    with pytest.raises(ValueError):
        channel_name("x" * 56)


# --- administration ------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["schema", "database"])
@pytest.mark.parametrize("shard", ["shard_a", "shard_b"])
async def test_add_provisions_on_the_placed_shard(
    pg_env: PgEnvironment,
    config: RouterConfig,
    topology: Topology,
    initialised: None,
    isolation: str,
    shard: str,
) -> None:
    tenant_id = id_on(topology, shard, isolation[:2])
    exists = schema_exists if isolation == "schema" else database_exists
    name = schema_name(tenant_id) if isolation == "schema" else database_name(tenant_id)

    view = await add_tenant(config, topology, tenant_id, isolation, labels={"tier": "gold"})  # type: ignore[arg-type]
    assert (view.shard, view.reason) == (shard, "hashed")
    assert exists(pg_env, shard, name)
    assert not exists(pg_env, other_shard(topology, shard), name)

    shown = await show_tenant(config, topology, tenant_id)
    assert shown == view
    text = shown.describe()
    assert f"{isolation}:" in text and name in text and f"{shard} (hashed)" in text and '"tier": "gold"' in text
    assert tenant_id in [v.tenant.id for v in await list_tenants(config, topology)]

    await remove_tenant(config, topology, tenant_id, drop_data=True)
    assert not exists(pg_env, shard, name)
    with pytest.raises(UnknownTenant):
        await show_tenant(config, topology, tenant_id)


async def test_default_isolation_pins_and_status(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, initialised: None
) -> None:
    hashed_to_a = id_on(topology, "shard_a", "pin")
    view = await add_tenant(config, topology, hashed_to_a, shard="shard_b")
    assert view.tenant.isolation == config.tenant.default_isolation == "schema"
    assert (view.shard, view.reason, view.tenant.shard) == ("shard_b", "catalog pin", "shard_b")
    assert schema_exists(pg_env, "shard_b", schema_name(hashed_to_a))
    assert not schema_exists(pg_env, "shard_a", schema_name(hashed_to_a))

    by_file = await add_tenant(config, topology, FILE_PINNED, isolation="shared")
    assert (by_file.shard, by_file.reason) == ("shard_b", "shards.yaml pin")

    suspended = await suspend_tenant(config, topology, hashed_to_a)
    assert suspended.tenant.status == "suspended"
    assert "suspended" in suspended.render() and "catalog pin" in suspended.render()
    assert (await resume_tenant(config, topology, hashed_to_a)).tenant.status == "active"
    with pytest.raises(UnknownTenant):
        await suspend_tenant(config, topology, new_id())

    # Without drop_data only the catalog row goes; the data stays where it was.
    await remove_tenant(config, topology, hashed_to_a)
    assert schema_exists(pg_env, "shard_b", schema_name(hashed_to_a))
    await remove_tenant(config, topology, FILE_PINNED, drop_data=True)  # shared: nothing to drop
    with pytest.raises(UnknownTenant):
        await remove_tenant(config, topology, hashed_to_a)


async def test_duplicate_add_fails_and_keeps_the_original(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, initialised: None
) -> None:
    tenant_id = new_id("dup")
    first = await add_tenant(config, topology, tenant_id, "schema")
    with pytest.raises(TenantExists, match="already exists"):
        await add_tenant(config, topology, tenant_id, "database")
    assert await show_tenant(config, topology, tenant_id) == first
    assert schema_exists(pg_env, first.shard, schema_name(tenant_id))
    assert not database_exists(pg_env, first.shard, database_name(tenant_id))
    await remove_tenant(config, topology, tenant_id, drop_data=True)


async def test_bad_input_fails_before_touching_anything(
    config: RouterConfig, topology: Topology, store: CatalogStore
) -> None:
    tenant_id = new_id("bad")
    with pytest.raises(UnknownShard, match="shard 'shard_z': it is not in the topology") as info:
        await add_tenant(config, topology, tenant_id, shard="shard_z")
    assert info.value.hint == "known shards: shard_a, shard_b"
    with pytest.raises(ValueError, match="invalid tenant id"):
        await add_tenant(config, topology, "UPPER")
    with pytest.raises(ValueError, match="invalid isolation"):
        await add_tenant(config, topology, tenant_id, "table")  # type: ignore[arg-type]
    assert await store.get(tenant_id) is None


async def test_failed_provisioning_removes_the_row(
    config: RouterConfig, topology: Topology, store: CatalogStore
) -> None:
    # Provisioning logs in as the admin: a wrong admin password makes it fail.
    broken = dataclasses.replace(config, admin=AdminCredentials(user="postgres", password="wrong"))
    tenant_id = new_id("fail")
    with pytest.raises(ProvisioningFailed) as info:
        await add_tenant(broken, topology, tenant_id, "database")
    message = str(info.value)
    shard = Ring.from_topology(topology).shard_for(tenant_id)
    port = topology.shards[shard].primary.port
    assert f"database 'tenant_{tenant_id}' of tenant '{tenant_id}' on shard {shard}" in message
    assert f"127.0.0.1:{port}/app" in message and "password" in message and "not added" in message
    assert await store.get(tenant_id) is None


async def test_view_rendering() -> None:
    from datetime import UTC, datetime

    tenant = Tenant("acme", "database", None, "active", datetime(2024, 5, 1, tzinfo=UTC), {"plan": "pro"})
    view = TenantView(tenant, "shard_a", "hashed")
    assert view.render() == 'acme                     database active    shard_a (hashed) {"plan": "pro"}'
    assert view.describe().splitlines() == [
        "tenant:     acme",
        "isolation:  database",
        "status:     active",
        "shard:      shard_a (hashed)",
        "database:   tenant_acme",
        "created_at: 2024-05-01T00:00:00+00:00",
        'labels:     {"plan": "pro"}',
    ]


# --- the cache -----------------------------------------------------------------------------------


@pytest.fixture
async def cache(config: RouterConfig, initialised: None) -> AsyncIterator[tuple[CatalogCache, list[str]]]:
    changes: list[str] = []
    c = CatalogCache(config.catalog.dsn, SCHEMA, REFRESH, on_change=changes.append)
    await c.start()
    try:
        yield c, changes
    finally:
        await c.stop()


async def test_cache_sees_changes_within_a_second(store: CatalogStore, cache: tuple[CatalogCache, list[str]]) -> None:
    c, changes = cache
    tenant_id = new_id("cache")
    before = await store.add(tenant_id, "shared")
    await wait_until_async(lambda: c.get(tenant_id) == before, "c.get(tenant_id) == before", within=VISIBLE_WITHIN)
    await store.set_status(tenant_id, "suspended")
    await wait_until_async(
        lambda: (t := c.get(tenant_id)) is not None and t.status == "suspended",
        '(t := c.get(tenant_id)) is not None and t.status == "suspended"',
        within=VISIBLE_WITHIN,
    )
    await store.remove(tenant_id)
    await wait_until_async(lambda: c.get(tenant_id) is None, "c.get(tenant_id) is None", within=VISIBLE_WITHIN)
    assert changes.count(tenant_id) == 3

    delays = []
    for _ in range(20):
        tenant_id = new_id("lat")
        start = time.perf_counter()
        await store.add(tenant_id, "shared")
        # Polled every millisecond: the time it takes is the latency measured.
        visible = lambda: c.get(tenant_id) is not None  # noqa: B023, E731
        await wait_until_async(visible, "the new tenant in the cache", within=VISIBLE_WITHIN, interval=0.001)
        delays.append(time.perf_counter() - start)
        await store.remove(tenant_id)
    print(
        f"\ncatalog change -> cache: median {statistics.median(delays) * 1000:.1f} ms,"
        f" max {max(delays) * 1000:.1f} ms (commit included)"
    )
    assert max(delays) < VISIBLE_WITHIN


async def test_cache_loads_existing_tenants_at_start(config: RouterConfig, store: CatalogStore) -> None:
    tenant_id = new_id("pre")
    added = await store.add(tenant_id, "schema", labels={"a": 1})
    changes: list[str] = []
    async with CatalogCache(config.catalog.dsn, SCHEMA, REFRESH, on_change=changes.append) as c:
        assert c.get(tenant_id) == added
        assert len(c) == len(await store.list())
        assert changes == []  # the initial load is not a change
    await store.remove(tenant_id)


async def test_periodic_refresh_catches_changes_without_notify(
    pg_env: PgEnvironment, store: CatalogStore, cache: tuple[CatalogCache, list[str]]
) -> None:
    c, changes = cache
    tenant_id = new_id("quiet")
    await store.add(tenant_id, "shared")
    await wait_until_async(lambda: c.get(tenant_id) is not None, "c.get(tenant_id) is not None", within=VISIBLE_WITHIN)
    first_refresh = c.last_full_refresh

    pg_env.catalog.execute(
        without_notify(f"UPDATE {SCHEMA}.tenants SET status = 'suspended' WHERE id = {quote_literal(tenant_id)}"),
        CATALOG_DB,
    )
    await wait_until_async(
        lambda: (t := c.get(tenant_id)) is not None and t.status == "suspended",
        '(t := c.get(tenant_id)) is not None and t.status == "suspended"',
        within=REFRESH * 3,
    )
    assert c.last_full_refresh != first_refresh
    pg_env.catalog.execute(
        without_notify(f"DELETE FROM {SCHEMA}.tenants WHERE id = {quote_literal(tenant_id)}"), CATALOG_DB
    )
    await wait_until_async(lambda: c.get(tenant_id) is None, "c.get(tenant_id) is None", within=REFRESH * 3)
    assert changes.count(tenant_id) == 3


async def test_cache_recovers_from_a_killed_listener(
    pg_env: PgEnvironment, store: CatalogStore, cache: tuple[CatalogCache, list[str]]
) -> None:
    c, _ = cache
    kept = await store.add(new_id("kept"), "shared")
    await wait_until_async(lambda: c.get(kept.id) is not None, "c.get(kept.id) is not None", within=VISIBLE_WITHIN)
    # This cache's own backend: routers of other test modules may be listening too.
    old_pid = str(c._conn.get_server_pid())
    assert old_pid in cache_backend_pids(pg_env)

    pg_env.catalog.execute(f"SELECT pg_terminate_backend({old_pid})", CATALOG_DB)
    assert c.get(kept.id) == kept  # still serving what it knew
    # A change made while the listener is gone must still arrive (by the reload on reconnect).
    missed = new_id("missed")
    await store.add(missed, "shared")
    await wait_until_async(lambda: c.get(missed) is not None, "c.get(missed) is not None", within=REFRESH * 3)
    await wait_until_async(lambda: c.connected, "c.connected", within=REFRESH * 3)
    new_pid = str(c._conn.get_server_pid())
    assert new_pid != old_pid and new_pid in cache_backend_pids(pg_env)

    # And the new listener works.
    await store.set_status(kept.id, "suspended")
    await wait_until_async(
        lambda: (t := c.get(kept.id)) is not None and t.status == "suspended",
        '(t := c.get(kept.id)) is not None and t.status == "suspended"',
        within=VISIBLE_WITHIN,
    )
    await store.remove(kept.id)
    await store.remove(missed)


async def test_cache_serves_through_a_catalog_outage(
    pg_env: PgEnvironment, config: RouterConfig, store: CatalogStore, cache: tuple[CatalogCache, list[str]]
) -> None:
    c, _ = cache
    kept = await store.add(new_id("outage"), "shared")
    await wait_until_async(lambda: c.get(kept.id) is not None, "c.get(kept.id) is not None", within=VISIBLE_WITHIN)
    await store.close()

    pg_env.catalog.stop()
    try:
        await wait_until_async(lambda: not c.connected, "not c.connected", within=REFRESH * 3)
        # Elapsed time is the point: the cache has no count of its attempts, and several of its
        # reconnects fail meanwhile (logged, not fatal).
        await asyncio.sleep(REFRESH * 2.5)
        assert c.get(kept.id) == kept
        with pytest.raises(CatalogUnavailable, match=f"127.0.0.1:{pg_env.catalog.port}"):
            await store.connect()
    finally:
        pg_env.catalog.start()

    await store.connect()
    await store.set_status(kept.id, "suspended")  # likely made before the cache reconnects
    await wait_until_async(lambda: c.connected, "c.connected", within=REFRESH * 4)
    await wait_until_async(
        lambda: (t := c.get(kept.id)) is not None and t.status == "suspended",
        '(t := c.get(kept.id)) is not None and t.status == "suspended"',
        within=REFRESH * 3,
    )
    await store.remove(kept.id)
    await wait_until_async(lambda: c.get(kept.id) is None, "c.get(kept.id) is None", within=VISIBLE_WITHIN)
