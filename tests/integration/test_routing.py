"""Tenants reach the shard the ring (or a pin) predicts, see only their own rows, and can switch
tenant between transactions when trusted to."""

from __future__ import annotations

import subprocess

import asyncpg
import psycopg
import pytest

from router.core.hashing import Ring
from router.core.routing import place_tenant
from router.testing.deploy import load
from router.testing.routerthread import RouterThread

from .conftest import Deployment, url


def _port(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT current_setting('port')::int").fetchone()
    assert row is not None
    return int(row[0])


def test_tenants_reach_the_shard_the_ring_predicts(router: RouterThread, deployment: Deployment) -> None:
    _config, topology = load(deployment.directory / "router.yaml")
    ring = Ring.from_topology(topology)
    for tenant in ("acme", "globex", "initech", "umbrella"):
        expected = place_tenant(tenant, None, topology, ring).shard
        assert deployment.placement[tenant] == expected
        with psycopg.connect(url(router, tenant)) as conn:
            assert _port(conn) == deployment.env.shards[expected].port, tenant
    # The fixture's tenants must exercise both shards, or this test proves little.
    assert {deployment.placement[t] for t in ("acme", "globex")} == {"shard_a", "shard_b"}


def test_catalog_pin_wins_over_the_ring(router: RouterThread, deployment: Deployment) -> None:
    with psycopg.connect(url(router, "bigcorp")) as conn:
        assert _port(conn) == deployment.env.shards["shard_b"].port


def test_tenant_from_startup_option(router: RouterThread, deployment: Deployment) -> None:
    dsn = f"postgresql://app:app-secret@127.0.0.1:{router.port}/app?options=-c%20router.tenant%3Dglobex"
    with psycopg.connect(dsn) as conn:
        assert _port(conn) == deployment.shard_port("globex")
        row = conn.execute("SELECT current_setting('app.tenant_id')").fetchone()
        assert row == ("globex",)


def test_shared_tenants_see_only_their_rows(router: RouterThread) -> None:
    for tenant in ("acme", "globex"):
        with psycopg.connect(url(router, tenant), autocommit=True) as conn:
            conn.execute("INSERT INTO items (name) VALUES (%s)", (f"{tenant}-row",))
    for tenant, other in (("acme", "globex"), ("globex", "acme")):
        with psycopg.connect(url(router, tenant)) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM items").fetchall()}
            owners = {r[0] for r in conn.execute("SELECT tenant_id FROM items").fetchall()}
            assert f"{tenant}-row" in names
            assert f"{other}-row" not in names
            assert owners == {tenant}


def test_schema_tenant_uses_its_schema(router: RouterThread, deployment: Deployment) -> None:
    with psycopg.connect(url(router, "initech"), autocommit=True) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
        assert row == ("tenant_initech",)
        conn.execute("INSERT INTO items (name) VALUES ('initech-row')")
        row = conn.execute("SELECT count(*) FROM tenant_initech.items WHERE name = 'initech-row'").fetchone()
        assert row is not None and row[0] >= 1


def test_database_tenant_uses_its_database(router: RouterThread) -> None:
    with psycopg.connect(url(router, "umbrella"), autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("tenant_umbrella",)
        conn.execute("INSERT INTO items (name) VALUES ('umbrella-row')")
        row = conn.execute("SELECT name FROM items").fetchall()
        assert ("umbrella-row",) in row


def test_contexts_do_not_leak_across_tenants_on_one_server_connection(make_router: object) -> None:
    """Pool of one: every transaction of every tenant runs on the same server connection."""
    router = make_router(pool={"size": 1})  # type: ignore[operator]
    conns = {t: psycopg.connect(url(router, t), autocommit=True) for t in ("acme", "initech", "globex", "umbrella")}
    try:
        for _ in range(3):
            for tenant, conn in conns.items():
                setting = conn.execute("SELECT current_setting('app.tenant_id'), current_schema()").fetchone()
                assert setting is not None
                assert setting[0] == tenant
                if tenant == "initech":
                    assert setting[1] == "tenant_initech"
                else:
                    assert setting[1] == "public"
    finally:
        for conn in conns.values():
            conn.close()


def test_trusted_user_switches_tenant_between_transactions(router: RouterThread, deployment: Deployment) -> None:
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        assert _port(conn) == deployment.shard_port("acme")
        conn.execute("SET router.tenant = 'globex'")
        assert conn.execute("SHOW router.tenant").fetchone() == ("globex",)
        assert _port(conn) == deployment.shard_port("globex")
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("globex",)
        conn.execute("SET router.tenant TO initech")
        assert conn.execute("SELECT current_schema()").fetchone() == ("tenant_initech",)
        conn.execute("RESET router.tenant")
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("acme",)


def test_trusted_user_without_tenant_must_pick_one(router: RouterThread, deployment: Deployment) -> None:
    with psycopg.connect(url(router, None), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="no tenant selected"):
            conn.execute("SELECT 1")
        conn.execute("SET router.tenant = 'acme'")
        assert _port(conn) == deployment.shard_port("acme")


def test_switch_inside_a_transaction_is_refused(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme")) as conn:
        conn.execute("SELECT 1")  # psycopg opened a transaction
        with pytest.raises(psycopg.errors.ActiveSqlTransaction, match="inside a transaction"):
            conn.execute("SET router.tenant = 'globex'")
        conn.rollback()
        conn.autocommit = True
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("acme",)


def test_untrusted_user_cannot_switch(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme", user="reporting", password="reporting-secret"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="not allowed to switch"):
            conn.execute("SET router.tenant = 'globex'")
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("acme",)


def test_switch_to_unknown_tenant_is_refused_and_session_survives(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidCatalogName, match='unknown tenant "nobody"'):
            conn.execute("SET router.tenant = 'nobody'")
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("acme",)


async def test_asyncpg_pool_serving_many_tenants(router: RouterThread, deployment: Deployment) -> None:
    """An application-side pool that serves many tenants switches per request."""
    pool = await asyncpg.create_pool(url(router, "acme"), min_size=2, max_size=4)
    try:
        for tenant in ("globex", "acme", "initech", "bigcorp"):
            async with pool.acquire() as conn:
                await conn.execute(f"SET router.tenant = '{tenant}'")
                port = await conn.fetchval("SELECT current_setting('port')::int")
                assert port == deployment.shard_port(tenant)
                assert await conn.fetchval("SELECT current_setting('app.tenant_id')") == tenant
    finally:
        await pool.close()


def test_psql_through_the_router(router: RouterThread) -> None:
    result = subprocess.run(
        ["psql", url(router, "acme"), "-X", "-At", "-c", "SELECT current_setting('app.tenant_id')", "-c", "SELECT 1+1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["acme", "2"]
