"""The console's commands on a router made of plain parts (real pools without connections, a real
topology and config): what each SHOW reads, and the refusals that need no catalog. The commands
that go through the catalog (PAUSE, RESUME, SUSPEND, SHOW HOLDS) are tested end to end in
tests/integration/test_console.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from router.catalog.store import Tenant
from router.config import AuthConfig, CatalogConfig, RouterConfig, ServerCredentials, UserConfig
from router.console import Console
from router.core.pool import Pool, PoolKey, PoolSettings
from router.core.topology import RingConfig, ServerAddress, Shard, Topology
from router.errors import ConsoleCommandFailed
from router.protocol.pg.console import Command, Kind, Table


async def _never(_pool: Pool) -> Any:
    raise AssertionError("the console must not open server connections")


def _pool(shard: str, port: int, database: str = "app") -> Pool:
    settings = PoolSettings(size=5, wait_timeout=1.0, connect_timeout=1.0, idle_timeout=0.0, lifetime=0.0)
    return Pool(PoolKey(shard, "127.0.0.1", port, database, "router"), _never, settings)


@dataclass
class _Worker:
    index: int = 0
    count: int = 1


@dataclass
class _Catalog:
    tenants: dict[str, Tenant]
    connected: bool = True

    def snapshot(self) -> dict[str, Tenant]:
        return dict(self.tenants)


@dataclass
class _Holds:
    held: dict[str, Sized] = field(default_factory=dict)
    held_ever: dict[str, int] = field(default_factory=dict)


@dataclass
class _Phase:
    value: str


@dataclass
class _Session:
    user: str | None
    phase: _Phase


@dataclass
class _Lease:
    waiting: bool = False


@dataclass
class _Client:
    key: tuple[int, bytes]
    peer: str
    tenant: str | None
    session: _Session
    lease: _Lease = field(default_factory=_Lease)
    server: Any = None


@dataclass
class _Clients:
    clients: list[_Client] = field(default_factory=list)

    def sessions(self) -> Sequence[_Client]:
        return self.clients

    def count(self, tenant: str) -> int:
        return sum(1 for c in self.clients if c.tenant == tenant)


@dataclass
class _Router:
    config: RouterConfig
    topology: Topology
    catalog: _Catalog
    pools: list[Pool]
    holds: _Holds = field(default_factory=_Holds)
    clients: _Clients = field(default_factory=_Clients)
    worker: _Worker = field(default_factory=_Worker)
    reload_result: bool = True
    reloads: int = 0

    def iter_pools(self) -> Iterator[Pool]:
        return iter(self.pools)

    async def reload(self) -> bool:
        self.reloads += 1
        return self.reload_result


def _tenant(tenant_id: str, shard: str | None = None, status: str = "active") -> Tenant:
    return Tenant(tenant_id, "shared", shard, status, datetime(2026, 1, 1, tzinfo=UTC), {})  # type: ignore[arg-type]


@pytest.fixture
def router(tmp_path: Path) -> _Router:
    config = RouterConfig(
        path=tmp_path / "router.yaml",
        catalog=CatalogConfig(dsn="postgresql://nobody@127.0.0.1:1/catalog"),  # never reached here
        shards_file=tmp_path / "shards.yaml",
        auth=AuthConfig(users=(UserConfig(name="ops", password="pw", console=True),)),
        server=ServerCredentials(user="router"),
    )
    shards = {
        "shard_a": Shard(
            "shard_a", ServerAddress("127.0.0.1", 5001, "app"), (ServerAddress("127.0.0.1", 5002, "app"),), 1
        ),
        "shard_b": Shard("shard_b", ServerAddress("127.0.0.1", 5003, "app"), (), 1),
    }
    topology = Topology(shards, RingConfig(), {}, tmp_path / "shards.yaml")
    pools = [_pool("shard_b", 5003), _pool("shard_a", 5002), _pool("shard_a", 5001), _pool("gone", 5009)]
    pools[2].transactions, pools[1].transactions = 7, 3
    catalog = _Catalog({"acme": _tenant("acme"), "bigcorp": _tenant("bigcorp", "shard_b", "suspended")})
    return _Router(config, topology, catalog, pools)


def run(router: _Router, kind: Kind, tenant: str | None = None, **kwargs: Any) -> Table:
    return asyncio.run(Console(router, **kwargs).run(Command(kind, tenant)))


def test_show_pools_names_each_pools_role_in_the_topology(router: _Router) -> None:
    table = run(router, Kind.SHOW_POOLS)
    assert [c.name for c in table.columns] == [
        "shard", "role", "server", "database", "user", "active", "idle", "waiting", "size", "worker"
    ]  # fmt: skip
    assert [row[:3] for row in table.rows] == [
        ("gone", "retired", "127.0.0.1:5009"),  # a reload removed its server: it drains
        ("shard_a", "primary", "127.0.0.1:5001"),
        ("shard_a", "replica", "127.0.0.1:5002"),
        ("shard_b", "primary", "127.0.0.1:5003"),
    ]
    assert table.rows[1][5:] == (0, 0, 0, 5, 0)


def test_show_stats_sums_per_shard_and_role(router: _Router) -> None:
    router.pools.append(_pool("shard_a", 5001, "tenant_db"))  # another database on the same primary
    router.pools[-1].transactions = 5
    rows = {(r[0], r[1]): r for r in run(router, Kind.SHOW_STATS).rows}
    assert rows[("shard_a", "primary")][2] == 12 and rows[("shard_a", "replica")][2] == 3


def test_show_tenants_resolves_shards_and_says_which_are_held(router: _Router) -> None:
    router.holds.held["acme"] = []
    router.clients.clients.append(_Client((1, b""), "127.0.0.1:1", "acme", _Session("app.acme", _Phase("routing"))))
    rows = {r[0]: r for r in run(router, Kind.SHOW_TENANTS).rows}
    assert rows["acme"][2:] == ("active", rows["acme"][3], "hashed", True, 1)
    assert rows["acme"][3] in ("shard_a", "shard_b")
    assert rows["bigcorp"][2:] == ("suspended", "shard_b", "catalog pin", False, 0)


def test_show_clients_says_what_each_client_is_doing(router: _Router) -> None:
    router.clients.clients = [
        _Client((3, b""), "p3", "acme", _Session("app.acme", _Phase("waiting")), _Lease(waiting=True)),
        _Client((1, b""), "p1", None, _Session("ops", _Phase("login"))),
        _Client((2, b""), "p2", "acme", _Session("app.acme", _Phase("routing"))),
    ]
    assert [(r[0], r[1], r[3]) for r in run(router, Kind.SHOW_CLIENTS).rows] == [
        (1, "ops", "console"),
        (2, "app.acme", "idle"),
        (3, "app.acme", "waiting"),
    ]


def test_reload_reports_the_result(router: _Router) -> None:
    assert run(router, Kind.RELOAD).rows == [(f"reloaded {router.config.shards_file}",)]
    router.reload_result = False
    with pytest.raises(ConsoleCommandFailed, match="rejected: the running topology is unchanged") as info:
        run(router, Kind.RELOAD)
    assert info.value.sqlstate == "55000"


def test_reload_of_one_worker_of_several_asks_the_supervisor(router: _Router) -> None:
    router.worker.count = 2
    signalled: list[bool] = []
    table = run(router, Kind.RELOAD, signal_supervisor=lambda: signalled.append(True))
    assert signalled == [True] and router.reloads == 0
    assert "reloads all 2 workers" in str(table.rows[0][0])


def test_pause_of_a_tenant_not_in_the_catalog_is_refused_before_any_hold(router: _Router) -> None:
    # The catalog DSN points nowhere: a hold attempted would fail differently.
    with pytest.raises(ConsoleCommandFailed, match='tenant "nope" is not in the catalog'):
        run(router, Kind.PAUSE, "nope")
