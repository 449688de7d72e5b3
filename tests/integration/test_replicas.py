"""Read/write splitting over real streaming replicas: where statements run in explicit and auto
mode, read-your-writes against a replica that really lags, the lag bound, a replica stopped under
a read load, and a primary stopped and restarted under the router.

Every statement's server is told by `SELECT pg_is_in_recovery()`: true on a replica, false on a
primary. The shared clusters of `pg_env` are never stopped: the replicas are this module's own
(made from the shared shards, stopped at the end), and the primary that is stopped is a cluster of
its own, registered as an extra shard with a tenant pinned to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import pytest

from router.catalog.store import CatalogStore
from router.ops.health import ServerKey
from router.protocol.pg.wal import format_lsn, parse_lsn, record_end
from router.testing.deploy import (
    APP_PASSWORD,
    APP_USER,
    REPORTING_PASSWORD,
    REPORTING_USER,
    install_shared_table,
    load,
    write_configs,
)
from router.testing.pgcluster import PgCluster, PgEnvironment, free_port, start_cluster
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until, wait_until_async

from .conftest import Deployment, RouterFactory, url

HEALTH = {"interval": 0.2, "timeout": 1.0, "max_backoff": 0.4}
READ_ONLY_USER = "app_ro"  # read_only: true
PRIMARY_USER = "app_primary"  # reads: off, whatever the router's mode
OWN_SHARD = "shard_rwx"
OWN_TENANT = "rwxco"
APPLY_DELAY = "2s"


def auth_section() -> dict[str, Any]:
    """write_configs' users, plus a read-only user and one that keeps to the primary."""
    return {
        "method": "scram-sha-256",
        "users": [
            {"name": APP_USER, "password": APP_PASSWORD, "tenant_switch": True},
            {"name": REPORTING_USER, "password": REPORTING_PASSWORD, "tenant_switch": False},
            {"name": READ_ONLY_USER, "password": APP_PASSWORD, "read_only": True},
            {"name": PRIMARY_USER, "password": APP_PASSWORD, "reads": "off"},
        ],
    }


# --- helpers ---------------------------------------------------------------------------------------


def new_name(prefix: str = "rw") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def in_recovery(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    assert row is not None
    return bool(row[0])


def count_rows(cluster: PgCluster, name: str, tenant: str | None = None) -> int:
    """Rows called `name` in the shared `items` table, read directly as superuser (no RLS)."""
    where = f"name = '{name}'" + (f" AND tenant_id = '{tenant}'" if tenant else "")
    return int(cluster.execute(f"SELECT count(*) FROM items WHERE {where}", dbname="app"))


# The end of the last WAL record on a primary, as the router reads it after a commit.
WAL_END_SQL = (
    "SELECT w.lsn, (pg_walfile_name_offset(w.lsn)).file_offset, current_setting('wal_block_size')"
    " FROM (SELECT pg_current_wal_insert_lsn() AS lsn) AS w"
)


def wal_end(primary: PgCluster) -> tuple[str, int]:
    """(the end of the primary's last WAL record, the insert position's offset in its segment)."""
    insert_lsn, offset, block_size = primary.execute(WAL_END_SQL).split("|")
    return format_lsn(record_end(parse_lsn(insert_lsn), int(offset), int(block_size))), int(offset)


def wait_replayed(primary: PgCluster, replica: PgCluster, within: float = 15) -> None:
    """Until `replica` has replayed everything `primary` had logged when this was called (inserted,
    not only written: with synchronous_commit off, a commit may not have been written yet)."""
    lsn, _offset = wal_end(primary)

    def replayed() -> bool:
        return replica.execute(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t"

    wait_until(replayed, f"{replica.name} replays up to {lsn}", within=within, interval=0.02)


def touch(primary: PgCluster) -> None:
    """Commit a write on `primary` (so a replica's last replayed commit is recent once it replays)."""
    primary.execute("INSERT INTO items (tenant_id, name) VALUES ('-', 'rw-touch')", dbname="app")


def replica_keys(router: RouterThread) -> list[ServerKey]:
    return [
        ServerKey(name, replica.host, replica.port, "replica")
        for name, shard in router.router.topology.shards.items()
        for replica in shard.replicas
    ]


def wait_replicas_usable(router: RouterThread, within: float = 10) -> None:
    """Until the router's health monitor has measured every replica within the lag bounds.

    Wanted after writes too: while a replica has not replayed a write, its lag in seconds counts
    from its last replayed commit, which after a quiet spell can be older than max_lag_seconds.
    """
    bounds = router.router.read_bounds
    health = router.router.health
    for key in replica_keys(router):
        usable = functools.partial(health.replica_ok, key, bounds.max_bytes, bounds.max_seconds)
        wait_until(usable, f"{key} usable for reads", within=within)


@contextlib.contextmanager
def apply_delay(primary: PgCluster, replica: PgCluster, delay: str = APPLY_DELAY) -> Iterator[None]:
    """`replica` applies commits `delay` late, after one fresh commit has been replayed."""
    touch(primary)
    wait_replayed(primary, replica)
    replica.set_setting("recovery_min_apply_delay", delay)
    try:
        yield
    finally:
        replica.set_setting("recovery_min_apply_delay", "0")
        wait_replayed(primary, replica)


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(pg_env: PgEnvironment, deployment: Deployment) -> Iterator[dict[str, PgCluster]]:
    """A streaming replica of each shared shard, for this module only."""
    made: dict[str, PgCluster] = {}
    try:
        for shard, primary in pg_env.shards.items():
            made[shard] = primary.make_replica(f"rw_split_replica_{shard}")
        yield made
    finally:
        for replica in made.values():
            with contextlib.suppress(Exception):
                replica.stop(mode="immediate")


SplitRouter = Callable[..., RouterThread]


@pytest.fixture
def split_router(make_router: RouterFactory, replicas: dict[str, PgCluster]) -> SplitRouter:
    """A router with the module's replicas and the given `reads` section, once its health monitor
    has found every replica usable."""

    def factory(reads: dict[str, Any], **overrides: Any) -> RouterThread:
        extra = {"reads": reads, "health": HEALTH, "reload": {"watch": False}, "auth": auth_section()}
        router = make_router(
            replicas={shard: [(r.host, r.port)] for shard, r in replicas.items()}, extra=extra, **overrides
        )
        wait_replicas_usable(router)
        return router

    return factory


# --- explicit mode ---------------------------------------------------------------------------------


def test_explicit_mode_sends_only_read_only_transactions_to_the_replica(
    split_router: SplitRouter, deployment: Deployment
) -> None:
    router = split_router({"mode": "explicit"})
    primary = deployment.env.shards[deployment.placement["acme"]]
    names = [new_name(), new_name()]
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        assert in_recovery(conn) is False
        assert conn.execute("SELECT pg_is_in_recovery(), %s::int", (7,)).fetchone() == (False, 7)
        conn.execute("BEGIN")
        assert in_recovery(conn) is False
        conn.execute("COMMIT")
        # Writes, autocommit and in a transaction, run on the primary.
        conn.execute("INSERT INTO items (name) VALUES (%s)", (names[0],))
        conn.execute("BEGIN")
        conn.execute("INSERT INTO items (name) VALUES (%s)", (names[1],))
        conn.execute("COMMIT")
    assert [count_rows(primary, name, "acme") for name in names] == [1, 1]
    wait_replicas_usable(router)  # see wait_replicas_usable: the writes may count as lag for a moment

    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        conn.execute("BEGIN READ ONLY")
        assert in_recovery(conn) is True
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("acme",)
        conn.execute("COMMIT")
        conn.execute("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        assert in_recovery(conn) is True
        conn.execute("ROLLBACK")
        assert in_recovery(conn) is False  # plain reads stay on the primary in explicit mode

    # A user marked read_only: every transaction, BEGIN included, on the replica.
    with psycopg.connect(url(router, "acme", user=READ_ONLY_USER), autocommit=True) as conn:
        assert in_recovery(conn) is True
        conn.execute("BEGIN")
        assert in_recovery(conn) is True
        conn.execute("COMMIT")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO items (name) VALUES (%s)", (new_name(),))

    # A session that logs in read-only, until it says otherwise.
    options = "-c default_transaction_read_only=on"
    with psycopg.connect(url(router, "acme"), autocommit=True, options=options) as conn:
        assert in_recovery(conn) is True
        conn.execute("BEGIN")
        assert in_recovery(conn) is True
        conn.execute("COMMIT")
        assert conn.execute("SELECT pg_is_in_recovery(), %s::text", ("x",)).fetchone() == (True, "x")
        conn.execute("SET default_transaction_read_only = off")
        assert in_recovery(conn) is False
        conn.execute("INSERT INTO items (name) VALUES (%s)", (names[0] + "-rw",))
        assert count_rows(primary, names[0] + "-rw", "acme") == 1
        conn.execute("RESET ALL")
        # Read-only again; its reads wait for the replica to replay its write (read-your-writes).
        wait_until(lambda: in_recovery(conn), "reads of the session back on the replica", within=10)


def test_read_only_user_stays_read_only_on_the_primary(make_router: RouterFactory, deployment: Deployment) -> None:
    """With no replica to serve it, a read-only user's transactions run on the primary: read-only."""
    unreachable = {shard: [("127.0.0.1", free_port())] for shard in deployment.env.shards}
    router = make_router(
        replicas=unreachable,
        extra={"reads": {"mode": "explicit"}, "health": HEALTH, "reload": {"watch": False}, "auth": auth_section()},
    )
    with psycopg.connect(url(router, "acme", user=READ_ONLY_USER), autocommit=True) as conn:
        assert in_recovery(conn) is False
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO items (name) VALUES (%s)", (new_name(),))


# --- auto mode -------------------------------------------------------------------------------------

FUNCTIONS_SQL = """
CREATE OR REPLACE FUNCTION rw_marked() RETURNS boolean LANGUAGE sql AS 'SELECT pg_is_in_recovery()';
CREATE OR REPLACE FUNCTION rw_unmarked() RETURNS boolean LANGUAGE sql AS 'SELECT pg_is_in_recovery()';
"""


def test_auto_mode_sends_plain_reads_to_the_replica(
    split_router: SplitRouter, deployment: Deployment, replicas: dict[str, PgCluster]
) -> None:
    shard = deployment.placement["acme"]
    primary, replica = deployment.env.shards[shard], replicas[shard]
    primary.execute(FUNCTIONS_SQL, dbname="app")
    wait_replayed(primary, replica)
    router = split_router({"mode": "auto", "volatile_functions": ["rw_marked"]})
    locked = new_name()
    with psycopg.connect(url(router, "acme"), autocommit=True) as writer:
        writer.execute("INSERT INTO items (name) VALUES (%s)", (locked,))
        rows = writer.execute("SELECT pg_is_in_recovery() FROM items WHERE name = %s FOR UPDATE", (locked,)).fetchall()
        assert rows == [(False,)]
        writer.execute("BEGIN")
        assert in_recovery(writer) is False
        writer.execute("COMMIT")
        row = writer.execute("SELECT nextval('items_id_seq') > 0, pg_is_in_recovery()").fetchone()
        assert row == (True, False)
        assert writer.execute("SELECT rw_marked()").fetchone() == (False,)
    assert count_rows(primary, locked, "acme") == 1
    wait_replicas_usable(router)

    # A session without writes of its own reads from the replica.
    with psycopg.connect(url(router, "acme"), autocommit=True) as reader:
        assert in_recovery(reader) is True
        assert reader.execute("SELECT rw_unmarked()").fetchone() == (True,)
        assert reader.execute("SELECT pg_is_in_recovery(), %s::int", (3,)).fetchone() == (True, 3)
        assert reader.execute("SELECT pg_is_in_recovery(), %s::text", ("again",)).fetchone() == (True, "again")
        assert reader.execute("SHOW transaction_read_only").fetchone() == ("on",)

    async def asyncpg_reads() -> list[bool]:
        conn = await asyncpg.connect(url(router, "acme"))
        query = "SELECT pg_is_in_recovery() AND $1::int > 0"
        try:
            # asyncpg prepares a statement with Parse, Describe and Flush, not Sync: that batch's
            # end cannot be seen, so it runs on the primary, and the session then waits for the
            # replica to reach the primary's position (read-your-writes). From then on, executions
            # of the prepared statement (Bind, Execute, Sync) run on the replica.
            stmt = await conn.prepare("SELECT pg_is_in_recovery() AND $1::text <> ''")
            await conn.fetchval(query, 0)
            await wait_until_async(
                lambda: stmt.fetchval("warm-up"), "asyncpg's prepared statements to reach the replica", within=10
            )
            seen = [await conn.fetchval(query, 1), await conn.fetchval(query, 2)]
            seen += [await stmt.fetchval("a"), await stmt.fetchval("b")]
            return seen
        finally:
            await conn.close()

    assert asyncio.run(asyncpg_reads()) == [True] * 4

    with psycopg.connect(url(router, "acme", user=PRIMARY_USER), autocommit=True) as conn:
        assert in_recovery(conn) is False
        assert conn.execute("SELECT pg_is_in_recovery(), %s::int", (1,)).fetchone() == (False, 1)


def test_reads_return_to_the_replica_on_an_idle_primary(
    split_router: SplitRouter, deployment: Deployment, replicas: dict[str, PgCluster]
) -> None:
    """After a transaction on the primary, a session reads from the replica again once it has
    replayed the primary's WAL, also when that ends on a segment boundary (after a WAL switch, with
    nothing written since): the replica then stops at the boundary, short of the insert position."""
    shard = deployment.placement["acme"]
    primary, replica = deployment.env.shards[shard], replicas[shard]
    router = split_router({"mode": "auto"})
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        for _ in range(3):  # background WAL (autovacuum...) may move it off the boundary
            primary.execute("SELECT pg_switch_wal()")
            wait_replayed(primary, replica)
            wait_replicas_usable(router)
            if wal_end(primary)[1] == 40:
                break
        conn.execute("BEGIN")
        assert in_recovery(conn) is False
        conn.execute("COMMIT")  # may have written: this session's reads wait for the replica to replay it
        wait_until(lambda: in_recovery(conn), "reads back on the replica", within=5)


def test_tenant_isolation_holds_on_the_replica(
    split_router: SplitRouter, deployment: Deployment, replicas: dict[str, PgCluster]
) -> None:
    router = split_router({"mode": "auto"})
    # Two shared tenants on one shard (three tenants on two shards: some pair shares one).
    shared = ("acme", "globex", "bigcorp")
    pair = next((a, b) for a in shared for b in shared if a < b and deployment.placement[a] == deployment.placement[b])
    shard = deployment.placement[pair[0]]
    primary, replica = deployment.env.shards[shard], replicas[shard]
    names = {tenant: new_name(tenant) for tenant in pair}
    for tenant, name in names.items():
        with psycopg.connect(url(router, tenant), autocommit=True) as conn:
            conn.execute("INSERT INTO items (name) VALUES (%s)", (name,))
    schema_row = new_name("initech")
    with psycopg.connect(url(router, "initech"), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) VALUES (%s)", (schema_row,))
    for cluster in {primary, deployment.env.shards[deployment.placement["initech"]]}:
        wait_replayed(cluster, replicas[cluster.name])
    wait_replicas_usable(router)
    # The replica holds both tenants' rows...
    assert [count_rows(replica, name) for name in names.values()] == [1, 1]
    # ...and each tenant, reading there, sees only its own.
    for tenant, other in (pair, pair[::-1]):
        with psycopg.connect(url(router, tenant), autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), array_agg(DISTINCT tenant_id), bool_or(name = %s), bool_or(name = %s)"
                " FROM items",
                (names[tenant], names[other]),
            ).fetchone()
            assert row == (True, [tenant], True, False)
    with psycopg.connect(url(router, "initech"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), current_schema(), count(*) FILTER (WHERE name = %s),"
            " count(*) FILTER (WHERE name = ANY(%s)) FROM items",
            (schema_row, list(names.values())),
        ).fetchone()
        assert row == (True, "tenant_initech", 1, 0)


# --- read-your-writes ------------------------------------------------------------------------------


@dataclass
class Delayed:
    primary: PgCluster
    replica: PgCluster


@pytest.fixture
def delayed(deployment: Deployment, replicas: dict[str, PgCluster]) -> Iterator[Delayed]:
    """acme's replica applying commits APPLY_DELAY late for the test."""
    shard = deployment.placement["acme"]
    primary, replica = deployment.env.shards[shard], replicas[shard]
    with apply_delay(primary, replica):
        yield Delayed(primary, replica)


def where_and_count(conn: psycopg.Connection[Any], name: str) -> tuple[bool, int]:
    row = conn.execute("SELECT pg_is_in_recovery(), count(*) FROM items WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return bool(row[0]), int(row[1])


# Lag in seconds counts from the replica's last replayed commit: generous, so that only the
# byte bound and read-your-writes decide here.
RYW_READS = {"mode": "auto", "max_lag_seconds": 60}


def test_read_your_writes_per_session(split_router: SplitRouter, delayed: Delayed) -> None:
    router = split_router({**RYW_READS, "read_your_writes": "session"})
    stale_on_replica = 0
    with (
        psycopg.connect(url(router, "acme"), autocommit=True) as writer,
        psycopg.connect(url(router, "acme"), autocommit=True) as observer,
    ):
        for _ in range(20):
            name = new_name()
            writer.execute("INSERT INTO items (name) VALUES (%s)", (name,))
            seen_elsewhere = where_and_count(observer, name)
            assert where_and_count(writer, name)[1] == 1, "the writer missed its own write"
            if seen_elsewhere == (True, 0):
                stale_on_replica += 1
    # The replica really served reads and really lagged meanwhile.
    assert stale_on_replica >= 1


def test_read_your_writes_per_tenant(split_router: SplitRouter, delayed: Delayed) -> None:
    router = split_router({**RYW_READS, "read_your_writes": "tenant"})
    with (
        psycopg.connect(url(router, "acme"), autocommit=True) as writer,
        psycopg.connect(url(router, "acme"), autocommit=True) as other,
    ):
        assert in_recovery(other) is True  # before any write: the replica serves this session
        for _ in range(20):
            name = new_name()
            writer.execute("INSERT INTO items (name) VALUES (%s)", (name,))
            assert where_and_count(other, name)[1] == 1, "another session of the tenant missed the write"
            assert where_and_count(writer, name)[1] == 1, "the writer missed its own write"
        assert count_rows(delayed.replica, name) == 0  # the replica still lags: the reads avoided it


def test_without_read_your_writes_a_stale_read_is_seen(split_router: SplitRouter, delayed: Delayed) -> None:
    router = split_router({**RYW_READS, "read_your_writes": "off"})
    outcomes = []
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        for _ in range(20):
            name = new_name()
            conn.execute("INSERT INTO items (name) VALUES (%s)", (name,))
            outcomes.append(where_and_count(conn, name))
    assert (True, 0) in outcomes, f"no stale read on the replica: {outcomes}"


# --- lag bound -------------------------------------------------------------------------------------


def test_reads_avoid_a_replica_beyond_the_lag_bound(split_router: SplitRouter, delayed: Delayed) -> None:
    router = split_router({"mode": "auto", "max_lag_bytes": 1, "max_lag_seconds": 60, "read_your_writes": "off"})
    name = new_name()
    # synchronous_commit on: once the INSERT returns, its commit is in the WAL the lag is measured by.
    with (
        psycopg.connect(url(router, "acme"), autocommit=True, options="-c synchronous_commit=on") as writer,
        psycopg.connect(url(router, "acme"), autocommit=True) as reader,
    ):
        wait_until(lambda: in_recovery(reader), "reads on the caught-up replica", within=10)
        writer.execute("INSERT INTO items (name) VALUES (%s)", (name,))
        on_primary_while_lagging = False

        def back_on_the_replica() -> bool:
            nonlocal on_primary_while_lagging
            on_replica, count = where_and_count(reader, name)
            if not on_replica:
                assert count == 1
                # The replica lags at this very moment (it applies commits 2 s late).
                on_primary_while_lagging = on_primary_while_lagging or count_rows(delayed.replica, name) == 0
                return False
            if on_primary_while_lagging:
                # Back on the replica only once it has caught up: the row is there.
                assert count == 1
                return True
            return False

        wait_until(
            back_on_the_replica,
            lambda: f"reads to go to the primary and back (on the primary while lagging: {on_primary_while_lagging})",
            within=15,
            interval=0.05,
        )


# --- a replica stopped under a read load -----------------------------------------------------------


@dataclass
class ReadLog:
    """One client's reads: (started, in_recovery) per success, (started, error) per failure."""

    name: str
    reads: list[tuple[float, bool]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)

    def reads_since(self, since: float, until: float = float("inf")) -> list[bool]:
        return [value for started, value in self.reads if since <= started < until]


READ_TIMEOUT = 10.0


class Reader:
    """One client reading in a loop; it reconnects after an error (the router may have closed it)."""

    async def connect(self) -> None:
        raise NotImplementedError

    async def read(self) -> bool:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class AsyncpgReader(Reader):
    def __init__(self, dsn: str, with_args: bool) -> None:
        self.dsn, self.with_args = dsn, with_args
        self.conn: Any = None

    async def connect(self) -> None:
        self.conn = await asyncpg.connect(self.dsn)

    async def read(self) -> bool:
        if self.with_args:
            return bool(await self.conn.fetchval("SELECT pg_is_in_recovery() OR $1::int < 0", 1))
        return bool(await self.conn.fetchval("SELECT pg_is_in_recovery()"))

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None


class PsycopgReader(Reader):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def connect(self) -> None:
        self.conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

    async def read(self) -> bool:
        assert self.conn is not None
        cursor = await self.conn.execute("SELECT pg_is_in_recovery()")
        row = await cursor.fetchone()
        assert row is not None
        return bool(row[0])

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.close()


async def read_in_a_loop(reader: Reader, log: ReadLog, stop: asyncio.Event) -> None:
    """Read until `stop`, logging each outcome; a read taking over READ_TIMEOUT counts as an error."""
    connected = False
    while not stop.is_set():
        started = time.monotonic()
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                if not connected:
                    await reader.connect()
                    connected = True
                log.reads.append((started, await reader.read()))
        except Exception as exc:
            log.errors.append((started, f"{type(exc).__name__}: {exc}"))
            await reader.close()
            connected = False
        await asyncio.sleep(0.01)  # the load's pace: a read every 10 ms or so, elapsed time is the point
    await reader.close()


async def test_replica_stopped_under_a_read_load(
    split_router: SplitRouter, deployment: Deployment, replicas: dict[str, PgCluster]
) -> None:
    router = split_router({"mode": "auto"})
    replica = replicas[deployment.placement["acme"]]
    logs = [ReadLog(f"asyncpg-{i}") for i in range(3)] + [ReadLog(f"psycopg-{i}") for i in range(2)]
    stop = asyncio.Event()
    dsn = url(router, "acme")
    readers = [
        AsyncpgReader(dsn, with_args=False),
        AsyncpgReader(dsn, with_args=True),
        AsyncpgReader(dsn, with_args=True),
        PsycopgReader(dsn),
        PsycopgReader(dsn),
    ]
    tasks = [asyncio.create_task(read_in_a_loop(r, log, stop)) for r, log in zip(readers, logs, strict=True)]
    try:
        await wait_until_async(
            lambda: all(True in log.reads_since(0) for log in logs), "every client read on the replica", within=10
        )
        await asyncio.to_thread(replica.stop, "fast")
        stopped = time.monotonic()
        # Every client keeps reading, from the primary now.
        await wait_until_async(
            lambda: all(len(log.reads_since(stopped + 0.5)) >= 10 for log in logs), "reads go on", within=15
        )
        restarting = time.monotonic()
        await asyncio.to_thread(replica.start)
        restarted = time.monotonic()
        await wait_until_async(
            lambda: all(True in log.reads_since(restarted) for log in logs), "reads return to the replica", within=5
        )
    finally:
        stop.set()
        _done, hanging = await asyncio.wait(tasks, timeout=READ_TIMEOUT + 5)
        for task in hanging:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not replica.is_running():
            await asyncio.to_thread(replica.start)
    for log in logs:
        assert len(log.errors) <= 1, f"{log.name}: {log.errors}"
        while_down = log.reads_since(stopped, restarting)
        assert while_down and not any(while_down), f"{log.name}: reads while the replica was down: {while_down}"
        assert not [e for e in log.errors if e[0] >= stopped + 0.5], f"{log.name}: {log.errors}"


# --- a primary stopped and restarted ---------------------------------------------------------------


@pytest.fixture(scope="module")
def own_primary(
    pg_env: PgEnvironment, deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgCluster]:
    """A primary of this module's own (shard OWN_SHARD), with OWN_TENANT pinned to it."""
    cluster = start_cluster(pg_env.base_dir, "rw_split_own_primary")

    async def setup() -> None:
        # The shared table, the admin's and protected by `rls enable`, as on the session's shards.
        path = write_configs(
            tmp_path_factory.mktemp("own-primary"), pg_env, extra_shards={OWN_SHARD: (cluster.host, cluster.port)}
        )
        await install_shared_table(*load(path))
        async with CatalogStore(pg_env.catalog_dsn()) as store:
            if await store.get(OWN_TENANT) is None:
                await store.add(OWN_TENANT, "shared", shard=OWN_SHARD)

    async def teardown() -> None:
        async with CatalogStore(pg_env.catalog_dsn()) as store:
            await store.remove(OWN_TENANT)

    try:
        asyncio.run(setup())
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(teardown())
        cluster.stop(mode="immediate")


def _sleeping(cluster: PgCluster) -> bool:
    # By its wait event: the router's role runs with track_activities off (`rls enable` sets it, so
    # shared tenants cannot read each other's statements), which hides its state and query text.
    sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
    return int(cluster.execute(sql)) == 1


def test_primary_stopped_and_restarted(make_router: RouterFactory, own_primary: PgCluster) -> None:
    connect_timeout = 1.0
    router = make_router(
        extra_shards={OWN_SHARD: (own_primary.host, own_primary.port)},
        pool={"connect_timeout": connect_timeout},
        extra={"health": HEALTH, "reload": {"watch": False}},
    )
    victim = psycopg.connect(url(router, OWN_TENANT), autocommit=True)
    sleeper = psycopg.connect(url(router, OWN_TENANT), autocommit=True)
    bystander = psycopg.connect(url(router, "acme"), autocommit=True)
    outcome: dict[str, Any] = {}

    def sleep() -> None:
        started = time.monotonic()
        try:
            sleeper.execute("SELECT pg_sleep(30)")
            outcome["returned"] = True
        except psycopg.Error as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    try:
        victim.execute("INSERT INTO items (name) VALUES ('before the stop')")
        thread = threading.Thread(target=sleep, daemon=True)
        thread.start()
        wait_until(lambda: _sleeping(own_primary), "pg_sleep running on the primary", within=10)
        own_primary.stop(mode="fast")
        try:
            # The query running when the primary stopped ends with an error, not a hang.
            thread.join(10)
            assert not thread.is_alive(), "the running query hangs"
            assert "returned" not in outcome
            assert outcome["error"].sqlstate in ("57P01", "08006"), outcome
            assert OWN_SHARD in str(outcome["error"])
            assert outcome["elapsed"] < 10
            # The next queries of a client of that shard fail fast, naming the shard.
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(psycopg.OperationalError) as info:
                    victim.execute("SELECT 1")
                assert time.monotonic() - started < connect_timeout + 1.0
                assert info.value.sqlstate in ("08006", "57P01"), info.value
                assert OWN_SHARD in str(info.value)
                if victim.closed:  # the router closed it (the error came from a dying server)
                    break
            # A new client of that shard gets an error naming it (at login or at its first query).
            started = time.monotonic()
            with (
                pytest.raises(psycopg.OperationalError, match=OWN_SHARD),
                psycopg.connect(url(router, OWN_TENANT), autocommit=True, connect_timeout=10) as conn,
            ):
                conn.execute("SELECT 1")
            assert time.monotonic() - started < connect_timeout + 1.0
            # Clients of other shards go on meanwhile.
            started = time.monotonic()
            for _ in range(20):
                assert bystander.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("acme",)
            assert time.monotonic() - started < 2.0
        finally:
            own_primary.start()
        # Without restarting the router, the shard serves again.
        with psycopg.connect(url(router, OWN_TENANT), autocommit=True) as conn:
            for _ in range(5):
                assert conn.execute("SELECT count(*) FROM items WHERE name = 'before the stop'").fetchone() == (1,)
        if not victim.closed:
            assert victim.execute("SELECT current_setting('app.tenant_id')").fetchone() == (OWN_TENANT,)
    finally:
        for conn in (victim, sleeper, bystander):
            conn.close()


def _sessions(router: RouterThread) -> list[Any]:
    return router.router.clients.sessions()


def test_transactions_that_only_read_need_no_wal_position(split_router: SplitRouter) -> None:
    """Read-your-writes waits only after writes: a read-only transaction kept on the primary
    (BEGIN; SELECT; COMMIT, or asyncpg preparing a statement with Parse/Describe/Flush) leaves the
    session free to read from any replica at once; a write sets the position it must wait for."""
    router = split_router({"mode": "auto"})
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        (session,) = _sessions(router)
        conn.execute("BEGIN")
        assert in_recovery(conn) is False
        conn.execute("SELECT count(*) FROM items")
        conn.execute("COMMIT")
        assert session.lease.min_lsn is None
        assert in_recovery(conn) is True

    async def prepared_reads() -> None:
        conn = await asyncpg.connect(url(router, "acme"), ssl=False)
        try:
            (session,) = _sessions(router)
            for n in range(3):
                assert await conn.fetchval(f"SELECT $1::int + {n}", n) == 2 * n
            assert session.lease.min_lsn is None
            await conn.execute("CREATE TEMP TABLE rw_scratch (a int)")  # runs on the primary: a write
            # The client has its answer before the router has read the position: wait for it.
            wait_until(lambda: session.lease.min_lsn is not None, "the write's WAL position noted", within=5)
        finally:
            await conn.close()

    asyncio.run(prepared_reads())
