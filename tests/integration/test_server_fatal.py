"""When PostgreSQL ends a session (pg_terminate_backend, shutdown), the client gets the server's own
FATAL: its SQLSTATE and its message, as it would directly. The router says which shard only in the
DETAIL. A server session that ends between transactions goes unnoticed: the next transaction runs
on another server connection."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import asyncpg
import psycopg
import pytest

from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, RouterFactory, url

ADMIN_COMMAND = "terminating connection due to administrator command"
TENANT = "acme"


def _shard(deployment: Deployment) -> str:
    return deployment.placement[TENANT]


def _terminate(deployment: Deployment, pid: int) -> None:
    deployment.env.shards[_shard(deployment)].execute(f"SELECT pg_terminate_backend({pid})")


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    wait_until(condition, what, within=10.0)


def _terminate_once_sleeping(deployment: Deployment, pid: int) -> None:
    """End the server session `pid` once it is inside pg_sleep (its wait event says so)."""
    shard = deployment.env.shards[_shard(deployment)]
    _wait_until(
        lambda: shard.execute(f"SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}").strip() == "PgSleep",
        "the query sleeps on the server",
    )
    _terminate(deployment, pid)


def _router_holds(router: RouterThread, pid: int) -> bool:
    return any(conn.process_id == pid for pool in router.router.iter_pools() for conn in pool.connections())


def _assert_the_servers_fatal(error: psycopg.Error, deployment: Deployment) -> None:
    assert error.sqlstate == "57P01"
    assert error.diag.severity_nonlocalized == "FATAL"
    assert error.diag.message_primary == ADMIN_COMMAND
    assert f"shard {_shard(deployment)}" in (error.diag.message_detail or "")


def test_a_session_terminated_while_idle_in_a_transaction_gets_the_servers_fatal(
    make_router: RouterFactory, deployment: Deployment
) -> None:
    router = make_router(pool={"size": 1})
    with psycopg.connect(url(router, TENANT)) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()  # opens a transaction
        assert row is not None
        _terminate(deployment, row[0])
        _wait_until(lambda: not _router_holds(router, row[0]), "the router has seen the server session end")
        with pytest.raises(psycopg.errors.AdminShutdown) as info:
            conn.execute("SELECT 1")
        _assert_the_servers_fatal(info.value, deployment)


@pytest.mark.parametrize("autocommit", [False, True], ids=["in-a-transaction", "autocommit"])
def test_a_session_terminated_mid_query_gets_the_servers_fatal(
    make_router: RouterFactory, deployment: Deployment, autocommit: bool
) -> None:
    router = make_router(pool={"size": 1})  # one server connection: the next query runs where this one did
    with psycopg.connect(url(router, TENANT), autocommit=autocommit) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        killer = threading.Thread(target=_terminate_once_sleeping, args=(deployment, row[0]))
        killer.start()
        try:
            with pytest.raises(psycopg.errors.AdminShutdown) as info:
                conn.execute("SELECT pg_sleep(60)")
        finally:
            killer.join()
        _assert_the_servers_fatal(info.value, deployment)


def test_asyncpg_sees_the_servers_fatal_as_it_does_directly(make_router: RouterFactory, deployment: Deployment) -> None:
    router = make_router(pool={"size": 1})

    async def mid_query(dsn: str) -> asyncpg.ConnectionDoesNotExistError:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("BEGIN")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            sleeping = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(60)"))
            await asyncio.to_thread(_terminate_once_sleeping, deployment, pid)
            with pytest.raises(asyncpg.ConnectionDoesNotExistError) as info:
                async with asyncio.timeout(10):
                    await sleeping
            return info.value
        finally:
            conn.terminate()

    direct = asyncio.run(mid_query(deployment.env.shard_dsn(_shard(deployment))))
    routed = asyncio.run(mid_query(url(router, TENANT)))
    # asyncpg reports the server's FATAL inside its own "connection was closed" error.
    assert str(direct) == f"connection was closed in the middle of operation: {ADMIN_COMMAND}"
    assert str(routed) == str(direct)


def test_a_server_session_ending_between_transactions_goes_unnoticed(
    make_router: RouterFactory, deployment: Deployment
) -> None:
    router = make_router(pool={"size": 1})

    async def main() -> None:
        conn = await asyncpg.connect(url(router, TENANT))
        try:
            before = await conn.fetchval("SELECT pg_backend_pid()")
            await asyncio.to_thread(_terminate, deployment, before)
            await asyncio.to_thread(
                _wait_until, lambda: not _router_holds(router, before), "the router has seen the server session end"
            )
            async with conn.transaction():
                after = await conn.fetchval("SELECT pg_backend_pid()")
                assert await conn.fetchval("SELECT current_setting('app.tenant_id')") == TENANT
            assert after != before
        finally:
            await conn.close()

    asyncio.run(main())
