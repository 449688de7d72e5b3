"""Transaction pooling with real drivers: many clients over few server connections, prepared
statements in transaction mode, COPY both ways, cancel, session mode."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from router.testing.deploy import APP_PASSWORD
from router.testing.pgcluster import free_port
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, RouterFactory, url


def _server_connections(router: RouterThread) -> int:
    return sum(pool.total for pool in router.router.iter_pools())


async def test_many_clients_share_few_server_connections(make_router: RouterFactory) -> None:
    router = make_router(pool={"size": 2})
    clients = [await asyncpg.connect(url(router, "acme")) for _ in range(20)]
    try:

        async def work(conn: asyncpg.Connection, n: int) -> None:
            for i in range(10):
                async with conn.transaction():
                    assert await conn.fetchval("SELECT $1::int + $2::int", n, i) == n + i
                    assert await conn.fetchval("SELECT current_setting('app.tenant_id')") == "acme"

        await asyncio.gather(*(work(c, n) for n, c in enumerate(clients)))
        assert _server_connections(router) <= 2
        pids = {await c.fetchval("SELECT pg_backend_pid()") for c in clients}
        assert 1 <= len(pids) <= 2
    finally:
        for conn in clients:
            await conn.close()


async def test_asyncpg_statement_cache_in_transaction_mode(make_router: RouterFactory) -> None:
    """asyncpg's default statement cache prepares named statements once per client connection; with
    a pool of 2 they must work on whichever server connection runs the next transaction."""
    router = make_router(pool={"size": 2})
    clients = [await asyncpg.connect(url(router, tenant)) for tenant in ("acme", "globex", "acme", "bigcorp")]
    try:
        for round_ in range(5):
            results = await asyncio.gather(
                *(c.fetchrow("SELECT $1::int AS n, current_setting('app.tenant_id') AS t", round_) for c in clients)
            )
            assert [r["n"] for r in results] == [round_] * 4
            assert [r["t"] for r in results] == ["acme", "globex", "acme", "bigcorp"]
        # Statement introspection and type codecs (asyncpg prepares its own introspection queries).
        for c in clients:
            rows = await c.fetch("SELECT x, x::text AS s, now() AS ts FROM generate_series(1, $1) AS x", 3)
            assert [r["x"] for r in rows] == [1, 2, 3]
            stmt = await c.prepare("SELECT $1::text || '!'")
            assert await stmt.fetchval("hi") == "hi!"
            assert await stmt.fetchval("yo") == "yo!"
    finally:
        for conn in clients:
            await conn.close()


def test_psycopg_prepared_statements_in_transaction_mode(make_router: RouterFactory) -> None:
    router = make_router(pool={"size": 1})
    conns = [psycopg.connect(url(router, t), autocommit=True, prepare_threshold=0) for t in ("acme", "globex")]
    try:
        for i in range(5):
            for conn in conns:
                row = conn.execute("SELECT %s::int * 2, current_setting('app.tenant_id')", (i,)).fetchone()
                assert row is not None and row[0] == i * 2
        # Both clients picked the same statement names (_pg3_0 ...) for different queries.
        a, b = conns
        assert a.execute("SELECT 'a' || %s::text", ("x",)).fetchone() == ("ax",)
        assert b.execute("SELECT 'b' || %s::text", ("x",)).fetchone() == ("bx",)
        assert a.execute("SELECT 'a' || %s::text", ("y",)).fetchone() == ("ay",)
    finally:
        for conn in conns:
            conn.close()


def test_unnamed_statement_survives_a_change_of_server(make_router: RouterFactory) -> None:
    """asyncpg without a statement cache parses unnamed, syncs, then binds: the Bind may land on
    another server connection, which must get the Parse first."""

    async def run() -> None:
        router = make_router(pool={"size": 2})
        conns = [await asyncpg.connect(url(router, "acme"), statement_cache_size=0) for _ in range(4)]
        try:
            for i in range(10):
                values = await asyncio.gather(*(c.fetchval("SELECT $1::int + 1", i) for c in conns))
                assert values == [i + 1] * 4
        finally:
            for conn in conns:
                await conn.close()

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_through_the_router(make_router: RouterFactory, deployment: Deployment, mode: str) -> None:
    router = make_router(pool={"size": 3})
    env = {**os.environ, "PGPASSWORD": APP_PASSWORD}
    # The schema tenant: `pgbench -i` creates its tables, which only a tenant with its own role may.
    target = ["-h", "127.0.0.1", "-p", str(router.port), "-U", "app.initech", "app"]
    init = subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q", "--no-vacuum", "-I", "dtg", *target],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    for _ in range(2):  # twice against the same router: server statements already exist the 2nd time
        run = subprocess.run(
            ["pgbench", "-n", "-c", "8", "-j", "2", "-t", "50", "-M", mode, *target],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "number of failed transactions: 0" in run.stdout
        assert "number of transactions actually processed: 400/400" in run.stdout


def test_copy_in_and_out(router: RouterThread) -> None:
    # COPY FROM refuses tables under row-level security, so COPY IN goes to a schema tenant's table.
    with psycopg.connect(url(router, "initech"), autocommit=True) as conn:
        conn.execute("DELETE FROM items WHERE name LIKE 'copy-%'")
        with conn.cursor() as cur:
            with cur.copy("COPY items (name) FROM STDIN") as copy:
                for i in range(5000):
                    copy.write_row((f"copy-{i}",))
            out = io.BytesIO()
            with cur.copy("COPY (SELECT name FROM items WHERE name LIKE 'copy-%' ORDER BY id) TO STDOUT") as copy:
                for data in copy:
                    out.write(data)
        lines = out.getvalue().decode().splitlines()
        assert lines[0] == "copy-0" and lines[-1] == "copy-4999" and len(lines) == 5000
        assert conn.execute("SELECT count(*) FROM tenant_initech.items WHERE name LIKE 'copy-%'").fetchone() == (5000,)


def test_copy_out_of_a_shared_table_respects_row_level_security(router: RouterThread) -> None:
    with psycopg.connect(url(router, "globex"), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) SELECT 'bulk-' || g FROM generate_series(1, 2000) g")
        with conn.cursor() as cur, cur.copy("COPY (SELECT tenant_id, name FROM items) TO STDOUT") as copy:
            rows = [row for row in copy.rows()]
        assert len(rows) >= 2000
        assert {r[0] for r in rows} == {"globex"}


def test_copy_failure_leaves_session_usable(router: RouterThread) -> None:
    with psycopg.connect(url(router, "initech"), autocommit=True) as conn:
        with (
            pytest.raises(psycopg.errors.QueryCanceled),
            conn.cursor() as cur,
            cur.copy("COPY items (name) FROM STDIN") as copy,
        ):
            copy.write_row(("x",))
            raise psycopg.errors.QueryCanceled("client aborts the copy")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_reaches_the_running_query(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        # cancel_safe, not cancel: libpq's blocking PQcancel holds the GIL, which would freeze the
        # router running in this very process.
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 5
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_psql_ctrl_c_cancels_through_the_router(router: RouterThread, deployment: Deployment) -> None:
    psql = subprocess.Popen(
        ["psql", url(router, "globex"), "-X", "-c", "SELECT pg_sleep(20)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Ctrl-C once the query runs on the server: a cancel that arrives earlier finds nothing to cancel.
    # Found by its wait event: the router's role runs with track_activities off (`rls enable` sets
    # it, so shared tenants cannot read each other's statements), which hides state and query text.
    running = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
    shard = deployment.env.shards[deployment.placement["globex"]]
    wait_until(
        lambda: shard.execute(running), "psql's pg_sleep(20) to run on the shard", within=10, until=lambda n: n == "1"
    )
    started = time.monotonic()
    psql.send_signal(signal.SIGINT)
    _out, err = psql.communicate(timeout=10)
    assert time.monotonic() - started < 5
    assert "canceling statement due to user request" in err


async def test_asyncpg_timeout_cancels_through_the_router(router: RouterThread) -> None:
    conn = await asyncpg.connect(url(router, "globex"))
    try:
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT pg_sleep(20)", timeout=0.5)
        assert await conn.fetchval("SELECT 7") == 7
    finally:
        await conn.close()


def test_client_that_leaves_mid_transaction_does_not_leak_it(make_router: RouterFactory) -> None:
    router = make_router(pool={"size": 1})
    conn = psycopg.connect(url(router, "acme"))
    conn.execute("INSERT INTO items (name) VALUES ('never-committed')")
    conn.close()  # closes the socket with the transaction open
    with psycopg.connect(url(router, "acme"), autocommit=True) as other:
        assert other.execute("SELECT count(*) FROM items WHERE name = 'never-committed'").fetchone() == (0,)
        # The one server connection is usable and not inside the abandoned transaction.
        assert other.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert other.execute("SELECT now() = statement_timestamp()").fetchone() == (True,)


def test_session_mode_keeps_one_server_and_resets_it(make_router: RouterFactory) -> None:
    router = make_router(pool={"size": 1, "mode": "session"})
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        conn.execute("SET application_name = 'leaky'")
        conn.execute("PREPARE mine AS SELECT 1")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == pid
    with psycopg.connect(url(router, "globex"), autocommit=True) as conn:
        # DISCARD ALL ran before the connection was handed on.
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert conn.execute("SHOW application_name").fetchone() != ("leaky",)
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("globex",)


def test_server_parameters_are_the_servers_own(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme"), client_encoding="utf8", application_name="probe") as conn:
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert conn.info.parameter_status("application_name") == "probe"
        assert (
            conn.info.parameter_status(
                "server_version",
            )
            is not None
        )
        assert conn.info.server_version >= 150000
        assert conn.info.backend_pid != 0


def test_pg_password_over_md5(make_router: RouterFactory) -> None:
    router = make_router(auth_method="md5")
    with psycopg.connect(url(router, "acme")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url(router, "acme", password="wrong"))


def test_trust_auth(make_router: RouterFactory) -> None:
    router = make_router(auth_method="trust")
    with psycopg.connect(f"postgresql://app.acme@127.0.0.1:{router.port}/app") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_handovers_and_wipes_are_counted_in_the_metrics(make_router: RouterFactory) -> None:
    """Two clients taking turns on one server connection: every turn is a hand-over, which operators
    can watch as tenant_router_pool_handovers; only one after a statement not proven inert wipes the
    session first (tenant_router_pool_handover_wipes)."""
    router = make_router(pool={"size": 1}, http_port=free_port())
    with taking_turns(router) as (first, second):
        for _ in range(3):
            for conn in (first, second):
                conn.execute("SELECT 1")
        first.execute("DO $$BEGIN END$$")
        second.execute("SELECT 1")
    sample = pool_metrics(router)
    assert sample("tenant_router_pool_handovers_total") == 7
    assert sample("tenant_router_pool_handover_wipes_total") == 1


def test_a_handover_after_a_write_discards_only_sequence_state(make_router: RouterFactory) -> None:
    """An INSERT into a table with a serial column leaves the session's currval() behind: the next
    client must not read the previous one's last key, yet the session keeps everything else (no
    wipe, settings applied once), and operators see the lighter reset in the metrics."""
    router = make_router(pool={"size": 1}, http_port=free_port())
    with taking_turns(router) as (writer, reader):
        row = writer.execute("INSERT INTO items (name) VALUES ('seq-probe') RETURNING id").fetchone()
        assert row is not None
        assert writer.execute("SELECT currval('items_id_seq')").fetchone() == row  # its own session still
        pid = writer.execute("SELECT pg_backend_pid()").fetchone()
        assert reader.execute("SELECT pg_backend_pid()").fetchone() == pid  # the same server session...
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not yet defined in this session"):
            reader.execute("SELECT currval('items_id_seq')")  # ... without the writer's sequence state
        assert reader.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("acme",)
        writer.execute("DELETE FROM items WHERE name = 'seq-probe'")
    sample = pool_metrics(router)
    assert sample("tenant_router_pool_handover_wipes_total") == 0
    # writer -> reader after the INSERT; reader -> writer (DELETE) after a currval(), which only reads.
    assert sample("tenant_router_pool_handover_sequence_resets_total") == 1


def test_a_copy_from_the_client_is_handed_over_like_a_write(make_router: RouterFactory, deployment: Deployment) -> None:
    """COPY ... FROM STDIN fills a serial column from its sequence like an INSERT: the next client
    of the server session gets it after DISCARD SEQUENCES, not the full wipe; COPY ... TO STDOUT is
    a read and leaves nothing to clear. (A table without row-level security: PostgreSQL refuses
    COPY FROM into one with it.)"""
    env = deployment.env
    shard_dsn = env.shard_dsn(deployment.placement["acme"], env.SUPERUSER, env.SUPERUSER_PASSWORD)
    with psycopg.connect(shard_dsn, autocommit=True) as admin:  # the admin owns shared tables
        admin.execute("DROP TABLE IF EXISTS copy_probe")
        admin.execute("CREATE TABLE copy_probe (id bigserial PRIMARY KEY, name text NOT NULL)")
        admin.execute(f"GRANT SELECT, INSERT ON copy_probe TO {env.ROUTER_ROLE}")
        admin.execute(f"GRANT USAGE ON SEQUENCE copy_probe_id_seq TO {env.ROUTER_ROLE}")
    router = make_router(pool={"size": 1}, http_port=free_port())
    try:
        with taking_turns(router) as (loader, reader):
            with loader.cursor() as cur, cur.copy("COPY copy_probe (name) FROM STDIN") as copy:
                for i in range(3):
                    copy.write_row([f"row-{i}"])
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not yet defined in this session"):
                reader.execute("SELECT currval('copy_probe_id_seq')")
            with loader.cursor() as cur, cur.copy("COPY (SELECT name FROM copy_probe ORDER BY id) TO STDOUT") as copy:
                assert [bytes(row).decode().strip() for row in copy] == [f"row-{i}" for i in range(3)]
            reader.execute("SELECT 1")
    finally:
        with psycopg.connect(shard_dsn, autocommit=True) as admin:
            admin.execute("DROP TABLE copy_probe")
    sample = pool_metrics(router)
    assert sample("tenant_router_pool_handover_wipes_total") == 0
    # loader -> reader after the COPY FROM; then reader -> loader -> reader after reads only.
    assert sample("tenant_router_pool_handover_sequence_resets_total") == 1


@contextlib.contextmanager
def taking_turns(
    router: RouterThread, tenant: str = "acme"
) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    """Two autocommit clients of `tenant`; through a router with pool size 1 they take turns on one
    server session, so every switch between them is a hand-over."""
    first = psycopg.connect(url(router, tenant), autocommit=True)
    try:
        second = psycopg.connect(url(router, tenant), autocommit=True)
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


def pool_metrics(router: RouterThread) -> Callable[[str], float]:
    """The router's /metrics now, as a lookup of the one sample of a metric (one pool)."""
    client = http.client.HTTPConnection("127.0.0.1", router.http_port, timeout=5)
    client.request("GET", "/metrics")
    text = client.getresponse().read().decode()

    def sample(name: str) -> float:
        (line,) = [row for row in text.splitlines() if row.startswith(f"{name}{{")]
        return float(line.rsplit(" ", 1)[1])

    return sample
