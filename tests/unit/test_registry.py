"""The process's pools without sockets: one per key, a server's capacity shared by its pools, the
connector each gets, retiring the pools of removed servers, and the return hook holds use."""

from __future__ import annotations

from pathlib import Path

from router.core.pool import Connector, PoolKey, PoolSettings
from router.core.registry import PoolRegistry
from router.core.topology import RingConfig, ServerAddress, Shard, Topology
from router.testing.fakeconnections import FakeConnection, FakeConnector, checked_out
from router.testing.virtualtime import in_virtual_time

SETTINGS = PoolSettings(size=3, wait_timeout=1, connect_timeout=1, idle_timeout=0, lifetime=0)
PRIMARY = ServerAddress("a.db", 5432, "app")
REPLICA = ServerAddress("a-replica.db", 5432, "app")


class Connectors:
    def __init__(self) -> None:
        self.made: list[tuple[str | None, bool]] = []
        self.connector = FakeConnector()

    def __call__(self, password: str | None, own_role: bool) -> Connector[FakeConnection]:
        self.made.append((password, own_role))
        return self.connector


def registry(own_role: str | None = "router") -> tuple[PoolRegistry[FakeConnection], Connectors]:
    connectors = Connectors()
    return PoolRegistry(SETTINGS, connectors, own_role), connectors


def topology(*replicas: ServerAddress) -> Topology:
    return Topology(
        shards={"shard_a": Shard("shard_a", PRIMARY, replicas, 1)}, ring=RingConfig(), pins={}, source=Path("x")
    )


def test_one_pool_per_key_and_the_router_s_own_role_is_told_to_its_connector() -> None:
    pools, connectors = registry()
    app = pools.pool("shard_a", PRIMARY, "app", "router", "pw")
    assert pools.pool("shard_a", PRIMARY, "app", "router", "pw") is app
    assert app.key == PoolKey("shard_a", "a.db", 5432, "app", "router")
    tenant = pools.pool("shard_a", PRIMARY, "tenant_acme", "acme_role", "secret")
    assert connectors.made == [("pw", True), ("secret", False)]
    assert list(pools) == [app, tenant]
    plain, connectors = registry(own_role=None)
    plain.pool("shard_a", PRIMARY, "app", "router", "pw")
    assert connectors.made == [("pw", False)]


def test_a_server_s_pools_share_one_capacity_and_other_servers_have_their_own() -> None:
    pools, _ = registry()
    app = pools.pool("shard_a", PRIMARY, "app", "router", "pw")
    tenant = pools.pool("shard_a", PRIMARY, "tenant_acme", "acme_role", "secret")
    replica = pools.pool("shard_a", REPLICA, "app", "router", "pw")
    assert app.capacity is tenant.capacity and app.capacity.size == 3
    assert replica.capacity is not app.capacity


@in_virtual_time
async def test_a_reload_retires_the_pools_of_servers_it_removed() -> None:
    pools, _ = registry()
    primary = pools.pool("shard_a", PRIMARY, "app", "router", "pw")
    replica = pools.pool("shard_a", REPLICA, "app", "router", "pw")
    busy = await checked_out(replica)
    pools.retire_absent(topology(REPLICA))
    assert list(pools) == [primary, replica] and not replica.closed
    pools.retire_absent(topology())
    assert list(pools) == [primary] and replica.closed
    replica.release(busy)  # a transaction in flight finishes, then its connection closes
    assert busy.closed == "not reusable"
    assert pools.pool("shard_a", REPLICA, "app", "router", "pw") is not replica  # a new one on first use


@in_virtual_time
async def test_a_server_down_or_a_database_command_closes_the_idle_connections_it_concerns() -> None:
    pools, _ = registry()
    app = pools.pool("shard_a", PRIMARY, "app", "router", "pw")
    tenant = pools.pool("shard_a", PRIMARY, "tenant_acme", "acme_role", "secret")
    replica = pools.pool("shard_a", REPLICA, "app", "router", "pw")
    idle = {}
    for pool in (app, tenant, replica):
        conn = await checked_out(pool)
        pool.release(conn)
        idle[pool.key.database, pool.key.host] = conn
    pools.close_idle("a.db", 5432, ("tenant_acme",))
    assert [c.closed for c in idle.values()] == [None, "closed for a database-level command", None]
    pools.server_down("a-replica.db", 5432, "connection refused")
    assert idle["app", "a-replica.db"].closed == "server down: connection refused"
    assert idle["app", "a.db"].closed is None
    pools.close_all_now()
    assert idle["app", "a.db"].closed == "pool closed"


@in_virtual_time
async def test_the_return_hook_reaches_every_pool_made_before_or_after_it_is_set() -> None:
    pools, _ = registry()
    before = pools.pool("shard_a", PRIMARY, "app", "router", "pw")
    returns: list[str] = []
    pools.watch_returns(lambda: returns.append("back"))
    after = pools.pool("shard_a", REPLICA, "app", "router", "pw")
    for pool in (before, after):
        pool.release(await checked_out(pool))
    assert returns == ["back", "back"]
    pools.watch_returns(None)
    before.release(await checked_out(before))
    assert returns == ["back", "back"] and all(p.on_return is None for p in pools)
