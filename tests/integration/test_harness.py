"""The real-PostgreSQL harness keeps its promises.

Every cluster accepts the router's role over TCP with password authentication (psycopg and asyncpg),
the role is a plain login that owns the catalog's database but not a shard's (the superuser, as the
admin, owns those), make_replica gives a real streaming replica, and failures explain themselves.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from router.testing.pgcluster import (
    CATALOG_DB,
    ROUTER_PASSWORD,
    ROUTER_ROLE,
    SHARD_DB,
    SUPERUSER,
    PgCluster,
    PgClusterError,
    PgEnvironment,
    find_pg_bin_dir,
)
from router.testing.waiting import wait_until

pytestmark = pytest.mark.integration

CLUSTERS = ["catalog", "shard_a", "shard_b"]

# Who am I, where, over which port (NULL over a unix socket), and who owns this database.
WHOAMI = """
    SELECT current_user::text, current_database()::text, inet_server_port(),
           (SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database())
"""


def _cluster(env: PgEnvironment, which: str) -> PgCluster:
    return env.catalog if which == "catalog" else env.shards[which]


def _dsn(env: PgEnvironment, which: str) -> str:
    return env.catalog_dsn() if which == "catalog" else env.shard_dsn(which)


def _database(which: str) -> str:
    return CATALOG_DB if which == "catalog" else SHARD_DB


def _owner(which: str) -> str:
    return ROUTER_ROLE if which == "catalog" else SUPERUSER


def test_bin_dir_has_the_server_tools() -> None:
    bin_dir = find_pg_bin_dir()
    for tool in ("initdb", "pg_ctl", "postgres", "pg_basebackup"):
        assert (bin_dir / tool).exists(), f"{tool} missing from {bin_dir}"


def test_environment_layout(pg_env: PgEnvironment) -> None:
    assert sorted(pg_env.shards) == ["shard_a", "shard_b"]
    ports = {c.port for c in pg_env.clusters}
    assert len(ports) == 3 and 5432 not in ports
    for cluster in pg_env.clusters:
        assert cluster.is_running()
        assert cluster.datadir.parent == pg_env.base_dir
        assert cluster.logfile.exists()


@pytest.mark.parametrize("which", CLUSTERS)
def test_psycopg_connects_as_router_role(pg_env: PgEnvironment, which: str) -> None:
    with psycopg.connect(_dsn(pg_env, which), connect_timeout=10) as conn:
        row = conn.execute(WHOAMI).fetchone()
    assert row == (ROUTER_ROLE, _database(which), _cluster(pg_env, which).port, _owner(which))


@pytest.mark.parametrize("which", CLUSTERS)
async def test_asyncpg_connects_as_router_role(pg_env: PgEnvironment, which: str) -> None:
    conn = await asyncpg.connect(_dsn(pg_env, which), timeout=10)
    try:
        row = await asyncio.wait_for(conn.fetchrow(WHOAMI), timeout=10)
    finally:
        await conn.close(timeout=5)
    assert row is not None
    assert tuple(row) == (ROUTER_ROLE, _database(which), _cluster(pg_env, which).port, _owner(which))


def test_wrong_password_is_rejected(pg_env: PgEnvironment) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_env.shard_dsn("shard_a", password="wrong"), connect_timeout=10)


@pytest.mark.parametrize("which", CLUSTERS)
def test_router_role_is_not_privileged(pg_env: PgEnvironment, which: str) -> None:
    attrs = _cluster(pg_env, which).execute(
        "SELECT rolsuper, rolbypassrls, rolcanlogin, rolcreatedb, rolcreaterole"
        f" FROM pg_roles WHERE rolname = '{ROUTER_ROLE}'"
    )
    assert attrs == "f|f|t|f|f"


def test_replica_streams_from_primary(pg_env: PgEnvironment) -> None:
    primary = pg_env.shards["shard_a"]
    primary.execute("CREATE TABLE harness_probe (id int PRIMARY KEY, note text)")
    replica = primary.make_replica("shard_a_replica")
    try:
        assert replica.is_running() and replica.port != primary.port
        assert replica.execute("SELECT pg_is_in_recovery()") == "t"
        primary.execute("INSERT INTO harness_probe VALUES (1, 'hello')")
        wait_until(
            lambda: replica.execute("SELECT note FROM harness_probe WHERE id = 1"),
            "the row to reach the replica",
            within=10,
            until=lambda note: note == "hello",
        )
        assert primary.execute("SELECT state FROM pg_stat_replication") == "streaming"
        # The router's role reaches the replica over TCP too (it is a copy of the primary).
        with psycopg.connect(replica.dsn(ROUTER_ROLE, ROUTER_PASSWORD, SHARD_DB), connect_timeout=10) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    finally:
        replica.stop()
        primary.execute("DROP TABLE IF EXISTS harness_probe")
    assert not replica.is_running()


def test_cluster_lifecycle_and_failure_messages(pg_env: PgEnvironment) -> None:
    cluster = PgCluster(pg_env.base_dir, "lifecycle")
    cluster.init()
    settings = cluster.datadir / "harness.conf"
    good = settings.read_text()
    try:
        with settings.open("a") as fh:
            fh.write("no_such_setting = 1\n")
        with pytest.raises(PgClusterError, match='unrecognized configuration parameter "no_such_setting"'):
            cluster.start()
        assert not cluster.is_running()
        settings.write_text(good)
        cluster.start()
        assert cluster.execute("SELECT 1") == "1"
        with pytest.raises(PgClusterError, match="no_such_table"):
            cluster.execute("SELECT * FROM no_such_table")
        cluster.restart()
        cluster.kill()
        assert not cluster.is_running()
        cluster.start()  # crash recovery after the immediate stop
        assert cluster.execute("SELECT pg_is_in_recovery()") == "f"
    finally:
        cluster.stop()
    assert not cluster.is_running()
