"""Router instances agreeing through the real catalog: registry, holds, acknowledgements, `instances`.

Registry: instances register and show as live, leave when stopped, turn stale when their heartbeat
stops (by the catalog's clock), and keep beating across a lost connection. Holds: every live
instance acknowledges before `request_hold` returns; an instance that never acknowledges (its
participant stopped mid-hold, or its heartbeat gone stale while we wait) makes the request fail
with HoldNotAcknowledged naming it, and leaves no hold behind; releasing calls on_release
everywhere. Holds expire: one its coordinator never releases is released everywhere once its ttl
has passed (by the catalog's clock), stands in the way of no later hold, and `hold_alive` says
whether a hold is still in force. The CLI lists live and stale instances.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from router.admin.tenant_admin import init_catalog
from router.catalog.cluster import (
    HoldCoordinator,
    HoldNotAcknowledged,
    HoldParticipant,
    InstanceInfo,
    InstanceRegistry,
    TenantAlreadyHeld,
    default_instance_id,
    list_instances,
)
from router.catalog.cluster.holds import hold_sql
from router.config import RouterConfig
from router.errors import CatalogError
from router.testing.deploy import load, write_configs
from router.testing.pgcluster import CATALOG_DB, PgEnvironment
from router.testing.waiting import wait_until_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

# A schema of our own, so other modules sharing the catalog cluster cannot disturb us (nor we them).
SCHEMA = "cluster_it"
HEARTBEAT = 0.2  # seconds
STALE = 1.0  # seconds
POLL = 0.2  # seconds; the participants' fallback poll
REPO = Path(__file__).resolve().parents[2]


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_path(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    catalog = {"dsn": pg_env.catalog_dsn(), "schema": SCHEMA, "refresh_interval": 5.0}
    return write_configs(tmp_path_factory.mktemp("cluster"), pg_env, extra={"catalog": catalog})


@pytest.fixture(scope="module")
async def config(config_path: Path) -> RouterConfig:
    config, _topology = load(config_path)
    await init_catalog(config)
    return config


@pytest.fixture
async def dsn(config: RouterConfig) -> AsyncIterator[str]:
    """The catalog DSN, with no instance or hold left over from an earlier test."""
    conn = await asyncpg.connect(config.catalog.dsn)
    try:
        await conn.execute(f"DELETE FROM {SCHEMA}.instances; DELETE FROM {SCHEMA}.holds")
    finally:
        await conn.close()
    yield config.catalog.dsn


@dataclass
class Node:
    """One simulated router instance: a registry row and a hold participant with recording callbacks."""

    instance_id: str
    registry: InstanceRegistry
    participant: HoldParticipant | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    block: asyncio.Event | None = None  # when given, on_hold waits for it
    entered: asyncio.Event = field(default_factory=asyncio.Event)  # on_hold was called

    async def on_hold(self, tenant_id: str) -> None:
        self.events.append(("hold", tenant_id))
        self.entered.set()
        if self.block is not None:
            await self.block.wait()

    async def on_release(self, tenant_id: str) -> None:
        self.events.append(("release", tenant_id))


@pytest.fixture
async def nodes(dsn: str) -> AsyncIterator[Callable[..., Node]]:
    """Make nodes (started with `start`); every one is stopped after the test."""
    made: list[Node] = []

    def make(instance_id: str, *, participant: bool = True, block: bool = False, poll: float = POLL) -> Node:
        registry = InstanceRegistry(dsn, SCHEMA, instance_id, heartbeat_interval=HEARTBEAT, stale_after=STALE)
        node = Node(instance_id, registry, block=asyncio.Event() if block else None)
        if participant:
            node.participant = HoldParticipant(
                dsn, SCHEMA, instance_id, node.on_hold, node.on_release, poll_interval=poll
            )
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in reversed(made):
            if node.participant is not None:
                await node.participant.stop()
            await node.registry.stop()


async def start(*nodes: Node) -> None:
    for node in nodes:
        await node.registry.start()
        if node.participant is not None:
            await node.participant.start()


async def ids(infos: Awaitable[list[InstanceInfo]]) -> set[str]:
    return {info.instance_id for info in await infos}


async def stop_heartbeat(registry: InstanceRegistry) -> None:
    """What a hung or dead process looks like from outside: no more beats, the row stays."""
    task = registry.heartbeat_task
    assert task is not None
    task.cancel()
    await asyncio.wait([task])


async def wait_until_stale(registry: InstanceRegistry) -> None:
    await wait_until_async(
        lambda: ids(registry.live_instances()),
        f"{registry.instance_id} to turn stale",
        within=STALE * 3,
        until=lambda live: registry.instance_id not in live,
        interval=0.05,
    )


async def hold_rows(dsn: str, tenant_id: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {SCHEMA}.holds WHERE tenant_id = $1", tenant_id))
    finally:
        await conn.close()


def terminate_backends(env: PgEnvironment, application_name: str) -> int:
    """Kill the catalog sessions of `application_name`; return how many there were."""
    return int(
        env.catalog.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE application_name = '{application_name}' AND datname = '{CATALOG_DB}'"
        )
    )


# --- registry ------------------------------------------------------------------------------------


def test_default_instance_id() -> None:
    assert default_instance_id("router-7", 6432) == "router-7:6432"
    assert default_instance_id(None, 6432) == f"{socket.gethostname()}:6432"
    with pytest.raises(ValueError, match="bound port"):
        default_instance_id("router-7", 0)


async def test_instances_register_live_and_leave_when_stopped(nodes: Callable[..., Node]) -> None:
    a, b = nodes("alpha:6432", participant=False), nodes("beta:6432", participant=False)
    await start(a, b)
    live = {info.instance_id: info for info in await a.registry.live_instances()}
    assert set(live) == {"alpha:6432", "beta:6432"}
    info = live["alpha:6432"]
    assert (info.host, info.pid, info.workers, info.live) == (socket.gethostname(), os.getpid(), 1, True)
    assert info.heartbeat_age < STALE

    # The heartbeat moves heartbeat_at forward.
    first = info.heartbeat_at

    async def alpha() -> InstanceInfo:
        return {i.instance_id: i for i in await b.registry.live_instances()}["alpha:6432"]

    again = await wait_until_async(
        alpha, "a later heartbeat", within=HEARTBEAT * 10, until=lambda i: i.heartbeat_at > first
    )
    assert again.started_at == info.started_at

    await a.registry.stop()
    assert await ids(b.registry.all_instances()) == {"beta:6432"}


async def test_instance_whose_heartbeat_stops_turns_stale(nodes: Callable[..., Node]) -> None:
    a, b = nodes("alpha:6432", participant=False), nodes("beta:6432", participant=False)
    await start(a, b)
    await stop_heartbeat(a.registry)
    assert "alpha:6432" in await ids(b.registry.live_instances())  # not at once: stale_after must pass
    began = time.monotonic()
    await wait_until_stale(a.registry)
    assert time.monotonic() - began > STALE - 2 * HEARTBEAT
    everyone = {info.instance_id: info for info in await b.registry.all_instances()}
    assert not everyone["alpha:6432"].live and everyone["alpha:6432"].heartbeat_age >= STALE
    assert everyone["beta:6432"].live


async def test_heartbeat_survives_a_lost_connection(nodes: Callable[..., Node], pg_env: PgEnvironment) -> None:
    a = nodes("alpha:6432", participant=False)
    await start(a)
    killed = 0
    for _ in range(3):
        killed += terminate_backends(pg_env, "tenant-router-cluster-registry")
        # Elapsed time is the point: the kills span 1.5 * STALE, so a heartbeat that stopped at any
        # of them would have let the instance turn stale.
        await asyncio.sleep(STALE / 2)
    assert killed >= 2
    (before,) = await a.registry.all_instances()
    # It still beats after the last kill: a newer heartbeat arrives, and it never turned stale.
    (info,) = await wait_until_async(
        a.registry.all_instances,
        "a heartbeat after the last lost connection",
        within=STALE * 2,
        until=lambda infos: infos[0].heartbeat_at > before.heartbeat_at,
    )
    assert before.live and info.live and info.heartbeat_age < STALE


async def test_registry_on_uninitialised_schema_says_so(pg_env: PgEnvironment) -> None:
    registry = InstanceRegistry(pg_env.catalog_dsn(), "no_such_schema", "alpha:6432")
    with pytest.raises(CatalogError, match="no cluster tables in schema 'no_such_schema'") as info:
        await registry.start()
    assert info.value.hint is not None and "catalog init" in info.value.hint
    assert registry.heartbeat_task is None


# --- holds ---------------------------------------------------------------------------------------


async def test_hold_acknowledged_by_every_live_instance_then_released(dsn: str, nodes: Callable[..., Node]) -> None:
    a, b = nodes("alpha:6432"), nodes("beta:6432")
    stale = nodes("gamma:6432", participant=False)  # stale before the hold: not asked
    await start(a, b, stale)
    await stop_heartbeat(stale.registry)
    await wait_until_stale(stale.registry)

    coordinator = HoldCoordinator(dsn, SCHEMA, stale_after=STALE)
    hold = await coordinator.request_hold("acme", "rebalance to shard_b", timeout=5.0)
    assert hold.tenant_id == "acme" and hold.reason == "rebalance to shard_b"
    assert hold.acknowledged_by == ("alpha:6432", "beta:6432")
    assert a.events == [("hold", "acme")] and b.events == [("hold", "acme")]
    assert a.participant is not None and a.participant.held_tenants == {"acme"}
    with pytest.raises(TenantAlreadyHeld):
        await coordinator.request_hold("acme", "again", timeout=1.0)

    assert await coordinator.release_hold(hold.hold_id)
    assert not await coordinator.release_hold(hold.hold_id)
    await wait_until_async(
        lambda: ("release", "acme") in a.events and ("release", "acme") in b.events, "released", within=2.0
    )
    assert a.events == [("hold", "acme"), ("release", "acme")]
    assert await hold_rows(dsn, "acme") == 0
    await wait_until_async(
        lambda: a.participant is not None and not a.participant.held_tenants, "forgotten", within=1.0
    )


async def test_participant_stopped_mid_hold_aborts_the_hold_cleanly(dsn: str, nodes: Callable[..., Node]) -> None:
    a, b = nodes("alpha:6432"), nodes("beta:6432", block=True)
    await start(a, b)
    coordinator = HoldCoordinator(dsn, SCHEMA, stale_after=STALE)
    request = asyncio.create_task(coordinator.request_hold("acme", "migration", timeout=1.5))
    await asyncio.wait_for(b.entered.wait(), 2.0)
    assert b.participant is not None
    await b.participant.stop()  # before acknowledging; its registry row stays fresh

    with pytest.raises(HoldNotAcknowledged) as info:
        await request
    error = info.value
    assert error.sqlstate == "55P03" and error.missing == ("beta:6432",)
    assert "beta:6432 (live)" in error.message and "alpha:6432" not in error.message
    assert await hold_rows(dsn, "acme") == 0  # removed before the error was raised
    assert "beta:6432" in await ids(b.registry.live_instances())
    # The instance that did acknowledge sees the hold go and lets the tenant through again.
    await wait_until_async(lambda: ("release", "acme") in a.events, "alpha released", within=2.0)
    assert b.events == [("hold", "acme")]


async def test_instance_going_stale_while_we_wait_is_not_acknowledged(dsn: str, nodes: Callable[..., Node]) -> None:
    a = nodes("alpha:6432")
    silent = nodes("delta:6432", participant=False)  # live when the hold is requested, never acks
    await start(a, silent)
    coordinator = HoldCoordinator(dsn, SCHEMA, stale_after=STALE)
    request = asyncio.create_task(coordinator.request_hold("acme", "migration", timeout=STALE * 2))
    await wait_until_async(lambda: hold_rows(dsn, "acme"), "the hold in the catalog", within=5, until=lambda n: n == 1)
    await stop_heartbeat(silent.registry)
    with pytest.raises(HoldNotAcknowledged, match=r"delta:6432 \(stale\)") as info:
        await request
    assert info.value.missing == ("delta:6432",)
    assert await hold_rows(dsn, "acme") == 0


async def test_participant_started_during_a_hold_enters_it_before_start_returns(
    dsn: str, nodes: Callable[..., Node]
) -> None:
    coordinator = HoldCoordinator(dsn, SCHEMA, stale_after=STALE)
    hold = await coordinator.request_hold("globex", "cutover", timeout=1.0)  # nobody to ask yet
    assert hold.acknowledged_by == ()
    a = nodes("alpha:6432")
    await start(a)
    assert a.events == [("hold", "globex")]
    conn = await asyncpg.connect(dsn)
    try:
        acks = await conn.fetch(f"SELECT instance_id FROM {SCHEMA}.hold_acks WHERE hold_id = $1", hold.hold_id)
    finally:
        await conn.close()
    assert [r["instance_id"] for r in acks] == ["alpha:6432"]
    await coordinator.release_hold(hold.hold_id)
    await wait_until_async(lambda: ("release", "globex") in a.events, "released", within=2.0)


async def test_participant_reconnects_and_still_acknowledges(
    dsn: str, nodes: Callable[..., Node], pg_env: PgEnvironment
) -> None:
    a, b = nodes("alpha:6432"), nodes("beta:6432")
    await start(a, b)
    # >= 2: routers started by other test modules on this catalog cluster take part too.
    assert terminate_backends(pg_env, "tenant-router-cluster-participant") >= 2
    coordinator = HoldCoordinator(dsn, SCHEMA, stale_after=STALE)
    hold = await coordinator.request_hold("initech", "cutover", timeout=5.0)
    assert hold.acknowledged_by == ("alpha:6432", "beta:6432")
    await coordinator.release_hold(hold.hold_id)


async def test_hold_never_released_expires_everywhere_and_a_new_hold_replaces_it(
    dsn: str, nodes: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    # A poll far longer than the ttl: the participants wake for the expiry itself.
    a, b = nodes("alpha:6432", poll=30.0), nodes("beta:6432", poll=30.0)
    await start(a, b)
    coordinator = HoldCoordinator(dsn, SCHEMA, stale_after=STALE)
    with pytest.raises(ValueError, match="ttl"):
        await coordinator.request_hold("acme", "cutover", timeout=2.0, ttl=2.0)
    began = time.monotonic()
    dead = await coordinator.request_hold("acme", "cutover by a coordinator that dies", timeout=1.0, ttl=1.5)
    assert dead.acknowledged_by == ("alpha:6432", "beta:6432")
    assert (dead.expires_at - dead.requested_at).total_seconds() == pytest.approx(1.5, abs=0.5)
    assert await coordinator.hold_alive(dead.hold_id)
    assert not await coordinator.hold_alive(dead.hold_id, margin=60.0)  # not in force a minute from now
    # Its coordinator is gone: nobody releases it. The participants do, once it has expired.
    await wait_until_async(
        lambda: ("release", "acme") in a.events and ("release", "acme") in b.events, "expired", within=5.0
    )
    assert time.monotonic() - began >= 1.0  # not before its time (1.5 s by the catalog's clock)
    assert a.events == [("hold", "acme"), ("release", "acme")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "alpha:6432" in m and "expired" in m and "'acme'" in m and "cutover by a coordinator that dies" in m
        for m in warnings
    ), warnings
    assert not await coordinator.hold_alive(dead.hold_id)
    assert await hold_rows(dsn, "acme") == 1  # the dead coordinator's row is still there ...
    # ... and in nobody's way: the next hold on the tenant removes it and is acknowledged.
    fresh = await coordinator.request_hold("acme", "cutover, second attempt", timeout=2.0)
    assert fresh.acknowledged_by == ("alpha:6432", "beta:6432")
    assert a.events[-1] == ("hold", "acme") and await hold_rows(dsn, "acme") == 1
    assert any(dead.hold_id in r.getMessage() and "removed" in r.getMessage() for r in caplog.records)
    assert not await coordinator.release_hold(dead.hold_id)  # long gone
    assert await coordinator.release_hold(fresh.hold_id)
    await wait_until_async(lambda: a.events.count(("release", "acme")) == 2, "released", within=2.0)


async def test_hold_alive_in_a_transaction_and_an_expired_hold_released_late(
    dsn: str, nodes: Callable[..., Node]
) -> None:
    a = nodes("alpha:6432")
    await start(a)
    coordinator = HoldCoordinator(dsn, SCHEMA, stale_after=STALE)
    hold = await coordinator.request_hold("globex", "cutover", timeout=0.5, ttl=1.0)
    sql = hold_sql(SCHEMA).hold_alive
    conn = await asyncpg.connect(dsn)
    try:
        # As a move's switch transaction uses it: the hold is in force for the next half second.
        async with conn.transaction():
            assert await conn.fetchval(sql, hold.hold_id, 0.5) is True
            assert await conn.fetchval(sql, "no-such-hold", 0.0) is False
        await wait_until_async(lambda: ("release", "globex") in a.events, "expired", within=5.0)
        assert await conn.fetchval(sql, hold.hold_id, 0.0) is False
    finally:
        await conn.close()
    # The coordinator comes back too late: its hold had expired, so the release is no release.
    assert not await coordinator.release_hold(hold.hold_id)
    assert await hold_rows(dsn, "globex") == 0


# --- command line --------------------------------------------------------------------------------


async def test_cli_lists_live_and_stale_instances(config_path: Path, nodes: Callable[..., Node]) -> None:
    a, b = nodes("alpha:6432", participant=False), nodes("beta:6432", participant=False)
    await start(a, b)
    await stop_heartbeat(b.registry)
    await wait_until_stale(b.registry)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router.cli",
        "--config",
        str(config_path),
        "instances",
        "--stale-after",
        str(STALE),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert len(lines) == 2, lines
    alpha, beta = lines
    assert alpha.startswith("alpha:6432") and alpha.endswith(" live")
    assert beta.startswith("beta:6432") and beta.endswith(" stale")
    for line in lines:
        assert f"host={socket.gethostname()}" in line and f"pid={os.getpid()}" in line and "workers=1" in line
        assert "started=" in line and "s ago" in line


async def test_list_instances_when_none_registered(dsn: str) -> None:
    assert await list_instances(dsn, SCHEMA) == []
