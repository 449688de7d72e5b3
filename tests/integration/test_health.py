"""Health checks against real servers: lag of streaming replicas, servers going down and coming back.

The shared clusters of `pg_env` are never stopped here: every test that stops a server or delays
replay does it to a replica of shard_a made for that test alone, and stops it afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

import router.ops.probe as probe_module
from router.config import HealthConfig, ServerCredentials
from router.core.topology import RingConfig, ServerAddress, Shard, Topology
from router.ops.health import HealthMonitor, ServerKey
from router.testing.pgcluster import PgCluster, PgEnvironment, free_port
from router.testing.waiting import wait_until_async

pytestmark = pytest.mark.integration

INTERVAL = 0.2
TIMEOUT = 1.0
SETTINGS = HealthConfig(interval=INTERVAL, timeout=TIMEOUT, max_backoff=1.0)


class Events:
    def __init__(self) -> None:
        self.down: list[tuple[ServerKey, str]] = []
        self.up: list[ServerKey] = []

    def on_down(self, key: ServerKey, error: str) -> None:
        self.down.append((key, error))

    def on_up(self, key: ServerKey) -> None:
        self.up.append(key)


ReplicaFactory = Callable[[str], PgCluster]


@pytest.fixture
def make_replica(pg_env: PgEnvironment) -> Iterator[ReplicaFactory]:
    """Replicas of shard_a for one test (unique names), stopped when it ends."""
    made: list[PgCluster] = []

    def factory(name: str) -> PgCluster:
        replica = pg_env.shards["shard_a"].make_replica(name)
        made.append(replica)
        return replica

    yield factory
    for replica in made:
        replica.stop(mode="immediate")


def key_of(shard: str, cluster: PgCluster | ServerAddress, role: str) -> ServerKey:
    assert role in ("primary", "replica")
    return ServerKey(shard, cluster.host, cluster.port, "primary" if role == "primary" else "replica")


def topology_with(pg_env: PgEnvironment, *replicas: PgCluster | ServerAddress) -> Topology:
    primary = pg_env.shards["shard_a"]
    addresses = tuple(
        r if isinstance(r, ServerAddress) else ServerAddress(r.host, r.port, pg_env.SHARD_DB) for r in replicas
    )
    shard = Shard("shard_a", ServerAddress(primary.host, primary.port, pg_env.SHARD_DB), addresses, 1)
    return Topology(shards={"shard_a": shard}, ring=RingConfig(), pins={}, source=Path("shards.yaml"))


def monitor(pg_env: PgEnvironment, topology: Topology, events: Events) -> HealthMonitor:
    credentials = ServerCredentials(user=pg_env.ROUTER_ROLE, password=pg_env.ROUTER_PASSWORD)
    return HealthMonitor(topology, credentials, SETTINGS, events.on_down, events.on_up)


async def write_on_primary(pg_env: PgEnvironment, table: str) -> None:
    """One committed write on shard_a, flushed (the harness runs with synchronous_commit off); as
    the admin, since the router's role may create nothing in a shard's database."""
    conn = await asyncpg.connect(_admin_dsn(pg_env), timeout=10)
    try:
        await conn.execute("SET synchronous_commit = on")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id serial PRIMARY KEY, at timestamptz)")
        await conn.execute(f"INSERT INTO {table} (at) VALUES (now())")
    finally:
        await conn.close()


def _admin_dsn(pg_env: PgEnvironment) -> str:
    return pg_env.shard_dsn("shard_a", pg_env.SUPERUSER, pg_env.SUPERUSER_PASSWORD)


async def drop_table(pg_env: PgEnvironment, table: str) -> None:
    conn = await asyncpg.connect(_admin_dsn(pg_env), timeout=10)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await conn.close()


async def test_replica_lag_is_zero_when_caught_up_and_replay_advances(
    pg_env: PgEnvironment, make_replica: ReplicaFactory
) -> None:
    replica = await asyncio.to_thread(make_replica, "health_replica_lag0")
    events = Events()
    health = monitor(pg_env, topology_with(pg_env, replica), events)
    primary_key = key_of("shard_a", pg_env.shards["shard_a"], "primary")
    replica_key = key_of("shard_a", replica, "replica")
    await health.start()
    try:
        await health.wait_checked(10)
        status = health.status(replica_key)
        await wait_until_async(lambda: status.lag_bytes == 0, "replica caught up", within=10)
        assert status.up and status.lag_seconds == 0.0 and status.replay_lsn is not None
        assert health.status(primary_key).current_lsn is not None
        before = status.replay_lsn

        await write_on_primary(pg_env, "health_lag0")
        written = (await health.check_now(primary_key)).current_lsn
        assert written is not None and written > before
        await wait_until_async(
            lambda: health.replica_ok(replica_key, 0, 0.0, min_lsn=written), "replica replayed the write", within=10
        )
        assert status.replay_lsn is not None and status.replay_lsn > before
        # Idle again: still no lag, however long ago the last commit was.
        await asyncio.sleep(3 * INTERVAL)  # elapsed time is the point: the last commit grows older
        assert status.lag_bytes == 0 and status.lag_seconds == 0.0
        assert events.down == [] and events.up == []
    finally:
        await health.stop()
        await drop_table(pg_env, "health_lag0")


async def test_delayed_replica_lags_until_it_catches_up(pg_env: PgEnvironment, make_replica: ReplicaFactory) -> None:
    replica = await asyncio.to_thread(make_replica, "health_replica_delay")
    await asyncio.to_thread(replica.set_setting, "recovery_min_apply_delay", "3s")
    events = Events()
    health = monitor(pg_env, topology_with(pg_env, replica), events)
    primary_key = key_of("shard_a", pg_env.shards["shard_a"], "primary")
    replica_key = key_of("shard_a", replica, "replica")
    await health.start()
    try:
        await health.wait_checked(10)
        status = health.status(replica_key)
        await wait_until_async(lambda: status.lag_bytes == 0, "replica caught up before the write", within=15)

        loop = asyncio.get_running_loop()
        await write_on_primary(pg_env, "health_delay")
        written_at = loop.time()
        written = (await health.check_now(primary_key)).current_lsn
        assert written is not None
        await health.check_now(replica_key)
        assert status.up
        assert status.lag_bytes is not None and status.lag_bytes > 0
        assert status.replay_lsn is not None and status.replay_lsn < written
        assert not health.replica_ok(replica_key, 10**12, 1e6, min_lsn=written)

        await wait_until_async(
            lambda: health.replica_ok(replica_key, 10**12, 1e6, min_lsn=written), "delayed replay caught up", within=15
        )
        assert loop.time() - written_at >= 2.0  # the 3 s delay counts from the commit
        await wait_until_async(lambda: status.lag_bytes == 0, "lag back to 0", within=5)
        assert events.down == []
    finally:
        await health.stop()
        await drop_table(pg_env, "health_delay")


async def test_stopped_replica_goes_down_and_comes_back(pg_env: PgEnvironment, make_replica: ReplicaFactory) -> None:
    replica = await asyncio.to_thread(make_replica, "health_replica_stop")
    events = Events()
    health = monitor(pg_env, topology_with(pg_env, replica), events)
    replica_key = key_of("shard_a", replica, "replica")
    await health.start()
    try:
        await health.wait_checked(10)
        assert health.is_up(replica_key) and health.status(replica_key).checked_at is not None

        await asyncio.to_thread(replica.stop)
        await wait_until_async(
            lambda: not health.is_up(replica_key), "marked down", within=2 * INTERVAL + TIMEOUT + 0.5
        )
        status = health.status(replica_key)
        await wait_until_async(lambda: status.failures, "several failed retries", within=10, until=lambda n: n >= 3)
        assert [key for key, _ in events.down] == [replica_key]  # once, and only the replica
        assert status.last_error
        assert not health.replica_ok(replica_key, 10**12, 1e6)

        await asyncio.to_thread(replica.start)
        await wait_until_async(
            lambda: health.is_up(replica_key), "back up", within=SETTINGS.max_backoff + INTERVAL + TIMEOUT + 3
        )
        assert events.up == [replica_key]
        assert status.failures == 0 and status.last_error is None
        await wait_until_async(lambda: status.lag_bytes == 0, "measured again", within=10)
        assert len(events.down) == 1
    finally:
        await health.stop()


async def test_closed_port_is_down_fast(pg_env: PgEnvironment) -> None:
    nobody = ServerAddress("127.0.0.1", free_port(), pg_env.SHARD_DB)
    events = Events()
    health = monitor(pg_env, topology_with(pg_env, nobody), events)
    key = ServerKey("shard_a", nobody.host, nobody.port, "replica")
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = await health.check_now(key)
    assert loop.time() - started < 0.5
    assert not status.up and status.last_error == "connection refused"
    assert events.down == [(key, "connection refused")]

    await health.start()
    try:
        await health.wait_checked(5)
        await wait_until_async(lambda: status.failures, "background retries", within=5, until=lambda n: n >= 3)
        assert not health.is_up(key) and len(events.down) == 1
        assert health.is_up(key_of("shard_a", pg_env.shards["shard_a"], "primary"))
    finally:
        await health.stop()


async def test_report_failure_marks_down_now_then_checks_bring_it_back(pg_env: PgEnvironment) -> None:
    events = Events()
    health = monitor(pg_env, topology_with(pg_env), events)
    primary_key = key_of("shard_a", pg_env.shards["shard_a"], "primary")
    await health.start()
    try:
        await health.wait_checked(10)
        assert health.is_up(primary_key)
        health.report_failure(primary_key, "connection refused")
        assert not health.is_up(primary_key)
        assert events.down == [(primary_key, "connection refused")]
        # The server is fine: the backoff retry (2 * interval) reconnects and finds it up.
        await wait_until_async(lambda: health.is_up(primary_key), "up again", within=2 * INTERVAL + TIMEOUT + 1)
        assert events.up == [primary_key]
    finally:
        await health.stop()


async def test_lost_connection_is_not_a_down_server_and_stop_closes_everything(
    pg_env: PgEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Routers of other tests monitor the same servers: tell this monitor's connection apart.
    monkeypatch.setattr(probe_module, "_APP_NAME", "tenant-router-health-under-test")
    events = Events()
    health = monitor(pg_env, topology_with(pg_env), events)
    primary = pg_env.shards["shard_a"]
    primary_key = key_of("shard_a", primary, "primary")
    ours = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenant-router-health-under-test'"
    await health.check_now(primary_key)
    assert await asyncio.to_thread(primary.execute, ours) == "1"  # one persistent connection
    await health.check_now(primary_key)
    assert await asyncio.to_thread(primary.execute, ours) == "1"

    terminate = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'tenant-router-health-under-test'"
    )
    await asyncio.to_thread(primary.execute, terminate)
    status = await health.check_now(primary_key)
    assert status.up and events.down == []  # reconnected within the same check

    await health.stop()
    await wait_until_async(
        lambda: asyncio.to_thread(primary.execute, ours),
        "the health connection to close after stop()",
        within=5,
        until=lambda n: n == "0",
    )
