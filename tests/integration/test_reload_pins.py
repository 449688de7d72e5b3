"""Pinning the tenants a shards.yaml reload moves, against a real catalog.

`pin_moved_tenants` pins exactly the moved tenants to their old shard and records those pins, and
only those, in `reload_pins` (an operator's pin is not a reload's); calling it again, or from
several processes at once, pins each tenant once; a tenant pinned meanwhile keeps its pin; running
routers hear of every pin through the catalog's notifications.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest

from router.admin.tenant_admin import init_catalog
from router.catalog.cache import CatalogCache
from router.catalog.store import CatalogStore
from router.config import RouterConfig
from router.core.hashing import Ring
from router.core.topology import ServerAddress, Shard, Topology
from router.errors import CatalogUnavailable
from router.ops.reload import TenantMove, moved_tenants, pin_moved_tenants
from router.testing.deploy import load, write_configs
from router.testing.pgcluster import PgEnvironment, free_port
from router.testing.waiting import wait_until_async

pytestmark = pytest.mark.integration

# Our own tenants in the shared catalog: other tests never see them (removed afterwards).
UNPINNED = [f"reload_t{i}" for i in range(1, 41)]
CATALOG_PINNED = "reload_pinned1"  # hashes to shard_c once it exists


@pytest.fixture(scope="module")
def deployed(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> tuple[RouterConfig, Topology]:
    return load(write_configs(tmp_path_factory.mktemp("reload-pins"), pg_env))


@pytest.fixture
def config(deployed: tuple[RouterConfig, Topology]) -> RouterConfig:
    return deployed[0]


@pytest.fixture
def old(deployed: tuple[RouterConfig, Topology]) -> Topology:
    return deployed[1]


@pytest.fixture
def new(old: Topology) -> Topology:
    """`old` plus shard_c (never connected to: pinning touches the catalog only)."""
    shard_c = Shard("shard_c", ServerAddress("127.0.0.1", 1, "app"), (), 1)
    return replace(old, shards={**old.shards, "shard_c": shard_c})


@pytest.fixture
async def store(config: RouterConfig, old: Topology, new: Topology) -> AsyncIterator[CatalogStore]:
    """The catalog with our tenants: UNPINNED without a pin, CATALOG_PINNED pinned where it would move from."""
    await init_catalog(config)
    pinned_from = Ring.from_topology(old).shard_for(CATALOG_PINNED)
    async with CatalogStore(config.catalog.dsn, config.catalog.schema) as s:
        await _remove_ours(s)
        for tenant in UNPINNED:
            await s.add(tenant, "shared")
        await s.add(CATALOG_PINNED, "shared", shard=pinned_from)
        try:
            yield s
        finally:
            await _remove_ours(s)


async def _remove_ours(store: CatalogStore) -> None:
    for tenant in [*UNPINNED, CATALOG_PINNED]:
        await store.remove(tenant)


async def pins(store: CatalogStore) -> dict[str, str | None]:
    return {t.id: t.shard for t in await store.list() if t.id.startswith("reload_")}


async def reload_pins(config: RouterConfig) -> dict[str, str]:
    """What the catalog records as pins a reload made, for our tenants."""
    conn = await asyncpg.connect(config.catalog.dsn)
    try:
        rows = await conn.fetch(
            f"SELECT tenant_id, shard FROM {config.catalog.schema}.reload_pins WHERE tenant_id LIKE 'reload\\_%'"
        )
    finally:
        await conn.close()
    return {row["tenant_id"]: row["shard"] for row in rows}


async def current_moves(store: CatalogStore, old: Topology, new: Topology) -> list[TenantMove]:
    return moved_tenants([(t, shard) for t, shard in (await pins(store)).items()], old, new)


def test_our_tenants_include_movers_and_stayers(old: Topology, new: Topology) -> None:
    moves = moved_tenants([(t, None) for t in [*UNPINNED, CATALOG_PINNED]], old, new)
    assert CATALOG_PINNED in {m.tenant for m in moves}  # so its catalog pin matters below
    assert 3 <= len(moves) < len(UNPINNED)


async def test_pins_exactly_the_moved_tenants_to_their_old_shard(
    config: RouterConfig, store: CatalogStore, old: Topology, new: Topology
) -> None:
    before = await pins(store)
    moves = await current_moves(store, old, new)
    assert moves and CATALOG_PINNED not in {m.tenant for m in moves}
    # An operator pins one of them elsewhere between the reload's look at the catalog and its pinning.
    operator_pinned = moves[0].tenant
    await store.set_shard(operator_pinned, "shard_c")

    assert await pin_moved_tenants(config, moves) == len(moves) - 1
    after = await pins(store)
    expected = dict(before)
    expected.update({m.tenant: m.old_shard for m in moves})
    expected[operator_pinned] = "shard_c"
    assert after == expected
    assert after[CATALOG_PINNED] == before[CATALOG_PINNED]
    assert sum(shard is None for shard in after.values()) == len(UNPINNED) - len(moves)
    # The reload's pins are recorded as such; the operator's (tenants add --shard, set-shard) are not.
    assert await reload_pins(config) == {m.tenant: m.old_shard for m in moves if m.tenant != operator_pinned}

    # Again (the same reload in another process, or a retry): nothing left to pin, nothing changes.
    assert await pin_moved_tenants(config, moves) == 0
    assert await pins(store) == expected
    assert len(await reload_pins(config)) == len(moves) - 1
    # The catalog now pins them: the same reload computed afresh moves no one.
    assert await current_moves(store, old, new) == []
    # An operator pinning a reload-pinned tenant makes the pin the operator's: no reload pin left.
    repinned = next(m for m in moves if m.tenant != operator_pinned)
    await store.set_shard(repinned.tenant, repinned.old_shard)
    assert repinned.tenant not in await reload_pins(config)
    assert (await pins(store))[repinned.tenant] == repinned.old_shard


async def test_concurrent_pinning_pins_each_tenant_once(
    config: RouterConfig, store: CatalogStore, old: Topology, new: Topology
) -> None:
    moves = await current_moves(store, old, new)
    counts = await asyncio.gather(*(pin_moved_tenants(config, moves) for _ in range(4)))
    assert sum(counts) == len(moves)
    after = await pins(store)
    assert all(after[m.tenant] == m.old_shard for m in moves)
    assert await reload_pins(config) == {m.tenant: m.old_shard for m in moves}


async def test_running_routers_hear_of_every_pin(
    config: RouterConfig, store: CatalogStore, old: Topology, new: Topology
) -> None:
    moves = await current_moves(store, old, new)
    heard: set[str] = set()
    cache = CatalogCache(config.catalog.dsn, config.catalog.schema, refresh_interval=60.0, on_change=heard.add)
    async with cache:
        assert await pin_moved_tenants(config, moves) == len(moves)
        await wait_until_async(
            lambda: {m.tenant for m in moves} <= heard, "{m.tenant for m in moves} <= heard", within=2.0
        )
        for move in moves:
            tenant = cache.get(move.tenant)
            assert tenant is not None and tenant.shard == move.old_shard


async def test_nothing_to_pin_needs_no_catalog(config: RouterConfig) -> None:
    unreachable = replace(config, catalog=replace(config.catalog, dsn=f"postgresql://u:p@127.0.0.1:{free_port()}/x"))
    assert await pin_moved_tenants(unreachable, []) == 0
    with pytest.raises(CatalogUnavailable, match="is unavailable"):
        await pin_moved_tenants(unreachable, [TenantMove("reload_t1", "shard_a", "shard_c")])
