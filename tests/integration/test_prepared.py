"""Prepared statements under transaction pooling, against real PostgreSQL: a client's Parse parses
now (after DDL through the router or on the shard), the router's record of what a server connection
has prepared never drifts from the server's, and statement names behave as PostgreSQL's."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import psycopg
import pytest

from router.isolation import schema_name
from router.testing.routerthread import RouterThread

from .conftest import Deployment, RouterFactory, url

TENANT = "initech"  # a schema tenant: its own schema, where a client may run DDL


@pytest.fixture
def one_server(make_router: RouterFactory) -> RouterThread:
    """Pool size 1: every client's statements meet on one server connection."""
    return make_router(pool={"size": 1, "wait_timeout": 5.0})


Ddl = Callable[[str, asyncpg.Connection], Awaitable[None]]


@pytest.fixture(params=["through-router", "on-shard"])
async def ddl(request: pytest.FixtureRequest, one_server: RouterThread, deployment: Deployment) -> AsyncIterator[Ddl]:
    """Run DDL in the tenant's schema through the router (by the client given), or directly on the
    shard (a migration tool), as the schema's owner."""
    through_router = request.param == "through-router"
    if through_router:
        conn = await asyncpg.connect(url(one_server, TENANT))
    else:
        shard = deployment.env.shards[deployment.placement[TENANT]]
        conn = await asyncpg.connect(shard.dsn(dbname="app"))
        schema = schema_name(TENANT)
        owner = await conn.fetchval("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", schema)
        await conn.execute(f'SET ROLE "{owner}"; SET search_path = "{schema}"')

    async def run(sql: str, client: asyncpg.Connection) -> None:
        await (client if through_router else conn).execute(sql)

    yield run
    await conn.close()


async def test_a_new_parse_after_the_table_was_recreated_sees_the_new_type(one_server: RouterThread, ddl: Ddl) -> None:
    insert = "INSERT INTO prep_tab VALUES ($1)"
    first = await asyncpg.connect(url(one_server, TENANT))
    second = await asyncpg.connect(url(one_server, TENANT))
    try:
        await ddl("DROP TABLE IF EXISTS prep_tab; CREATE TABLE prep_tab (v date)", first)
        for conn in (first, second):
            await conn.execute(insert, datetime.date(2024, 1, 2))  # parsed, and cached by asyncpg
        await ddl("DROP TABLE prep_tab; CREATE TABLE prep_tab (v time)", first)
        # A new Parse of the same text, from either client, is described as PostgreSQL does it now.
        for conn in (first, second):
            statement = await conn.prepare(insert)
            assert [t.name for t in statement.get_parameters()] == ["time"]
            await statement.fetch(datetime.time(12, 30))
        third = await asyncpg.connect(url(one_server, TENANT))
        await third.execute(insert, datetime.time(1, 2))
        assert await third.fetch("SELECT v FROM prep_tab ORDER BY v") == [
            (datetime.time(1, 2),),
            (datetime.time(12, 30),),
            (datetime.time(12, 30),),
        ]
        await third.close()
    finally:
        await ddl("DROP TABLE IF EXISTS prep_tab", first)
        await first.close()
        await second.close()


async def test_asyncpg_recovers_from_a_changed_result_type(one_server: RouterThread, ddl: Ddl) -> None:
    """asyncpg's documented recovery: InvalidCachedStatementError, drop the cache, prepare again
    (done by asyncpg itself outside a transaction). Through the router the fresh Parse parses anew."""
    query = "SELECT * FROM prep_alter"
    first = await asyncpg.connect(url(one_server, TENANT))
    second = await asyncpg.connect(url(one_server, TENANT))
    try:
        await ddl("DROP TABLE IF EXISTS prep_alter; CREATE TABLE prep_alter (a int, b int)", first)
        await ddl("INSERT INTO prep_alter VALUES (1, 2)", first)
        for conn in (first, second):
            assert await conn.fetch(query) == [(1, 2)]
        await ddl("ALTER TABLE prep_alter ALTER COLUMN b TYPE text", first)
        # In a transaction the error reaches the application, which retries after it.
        with pytest.raises(asyncpg.InvalidCachedStatementError):
            async with first.transaction():
                await first.fetch(query)
        assert await first.fetch(query) == [(1, "2")]
        # Another client prepares the text anew (its own recovery): the new shape, too.
        statement = await second.prepare(query)
        assert await statement.fetch() == [(1, "2")]
        # And asyncpg's automatic retry outside a transaction, after a second change.
        await ddl("ALTER TABLE prep_alter ALTER COLUMN b TYPE bigint USING b::bigint", first)
        assert await first.fetch(query) == [(1, 2)]
    finally:
        await ddl("DROP TABLE IF EXISTS prep_alter", first)
        await first.close()
        await second.close()


def test_psycopg_auto_prepare_after_ddl(one_server: RouterThread) -> None:
    """psycopg prepares a query after prepare_threshold executions; after DDL that recreates the
    table, the prepared statement must follow (psycopg drops its cache on DROP, and parses again)."""
    with psycopg.connect(url(one_server, TENANT), autocommit=True, prepare_threshold=1) as conn:
        other = psycopg.connect(url(one_server, TENANT), autocommit=True, prepare_threshold=1)
        with other:
            conn.execute("DROP TABLE IF EXISTS prep_auto; CREATE TABLE prep_auto (v int)")
            for i in range(4):
                for c in (conn, other):
                    c.execute("INSERT INTO prep_auto VALUES (%s)", (i,))
                    assert c.execute("SELECT sum(v) FROM prep_auto WHERE v >= %s", (0,)).fetchone() is not None
            conn.execute("DROP TABLE prep_auto")
            conn.execute("CREATE TABLE prep_auto (v text)")
            for c in (conn, other):
                for i in range(3):
                    c.execute("INSERT INTO prep_auto VALUES (%s)", (f"x{i}",))
            assert conn.execute("SELECT count(*), min(v) FROM prep_auto").fetchone() == (6, "x0")
            conn.execute("DROP TABLE prep_auto")


def test_psycopg_executemany_with_an_enum_in_a_rolled_back_transaction_twice(one_server: RouterThread) -> None:
    """psycopg sends DEALLOCATE ALL after a ROLLBACK; the router must forget what it dropped."""
    with psycopg.connect(url(one_server, TENANT)) as conn:
        for _ in range(2):
            with conn.cursor() as cur:
                cur.execute("CREATE TYPE an_enum AS ENUM ('foo', 'bar')")
                cur.execute("CREATE TABLE enum_table (id serial PRIMARY KEY, c an_enum[])")
                cur.executemany("INSERT INTO enum_table (c) VALUES (%s::an_enum[])", [("{foo}",), ("{bar}",)])
                cur.execute("SELECT count(*) FROM enum_table")
                assert cur.fetchone() == (2,)
            conn.rollback()


async def _duplicate_name(dsn: str) -> tuple[str, str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.prepare("SELECT 1", name="n")
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.prepare("SELECT 2", name="n")
        # The session goes on; the first statement is still there.
        return raised.value.sqlstate, raised.value.args[0], await conn.fetchval("SELECT 3")
    finally:
        await conn.close()


async def test_a_second_parse_of_a_name_fails_as_in_postgresql(
    one_server: RouterThread, deployment: Deployment
) -> None:
    shard = deployment.env.shards[deployment.placement[TENANT]]
    direct = await _duplicate_name(shard.dsn(dbname="app"))
    assert direct == ("42P05", 'prepared statement "n" already exists', 3)
    assert await _duplicate_name(url(one_server, TENANT)) == direct


async def test_duplicate_name_inside_a_transaction_aborts_it(one_server: RouterThread) -> None:
    conn = await asyncpg.connect(url(one_server, TENANT))
    try:
        await conn.prepare("SELECT 1", name="n")
        tx = conn.transaction()
        await tx.start()
        with pytest.raises(asyncpg.DuplicatePreparedStatementError):
            await conn.prepare("SELECT 2", name="n")
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            await conn.fetchval("SELECT 1")
        await tx.rollback()
        assert await conn.fetchval("SELECT 4") == 4
    finally:
        await conn.close()


async def test_execute_of_a_protocol_level_name_from_sql(one_server: RouterThread, deployment: Deployment) -> None:
    shard = deployment.env.shards[deployment.placement[TENANT]]
    direct = await asyncpg.connect(shard.dsn(dbname="app"))
    kept = await direct.prepare("select 1", name="foobar")  # asyncpg closes it once unreferenced
    assert await direct.fetchval("EXECUTE foobar") == 1
    del kept
    await direct.close()
    # Through the router: a clear error naming the limitation, and the session goes on.
    conn = await asyncpg.connect(url(one_server, TENANT))
    try:
        kept = await conn.prepare("select 1", name="foobar")
        with pytest.raises(asyncpg.FeatureNotSupportedError, match='"foobar" was prepared with the extended protocol'):
            await conn.fetchval("EXECUTE foobar")
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="does not support using it from SQL"):
            await conn.execute("DEALLOCATE foobar")
        assert await conn.fetchval("SELECT 5") == 5
        assert await kept.fetchval() == 1
    finally:
        await conn.close()
