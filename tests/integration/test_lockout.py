"""A tenant must not be able to lock the others out, nor share large objects with them (issue 15, items 6, 7).

Against the hardened setup (signed context, `rls enable`, per-tenant roles) deployed as the escape
suite deploys it, with its own names (router/testing/escape.py). Shared tenants all act as the
router's role. Item 6: a tenant changing that role's password or session defaults, visibly (refused,
42501) or hidden in a DO block or a pg_temp function (run, then repaired by the router through the
admin credentials the next time it opens a server connection; counted in a metric; `check` says
when there is no admin to repair with). Item 7: large-object functions, catalogs and the fast-path
protocol are refused to shared tenants (0A000), also on the server where the router cannot see the
call, while schema and database tenants, acting as their own roles, keep them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from router.admin.rls_enable import enable_rls
from router.admin.role_audit import audit_server_role
from router.isolation import quote_ident
from router.ops.metrics import RouterCollector
from router.testing.escape import ROLE_PASSWORD, EscapeDeployment, Layout, deploy, remove
from router.testing.pgcluster import PgEnvironment
from router.testing.routerthread import RouterThread

pytestmark = pytest.mark.integration

LOCKOUT = Layout("hardened", "lock_router", "lock_catalog", "lock_items", "tenant_isolation", "lock")
ROLE = quote_ident(LOCKOUT.role)
TABLE = quote_ident(LOCKOUT.table)
SHARED = LOCKOUT.tenants("shared")


@pytest.fixture(scope="module")
def deployment(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EscapeDeployment]:
    deployed = deploy(pg_env, tmp_path_factory.mktemp("lockout"), LOCKOUT)
    try:
        yield deployed
    finally:
        remove(deployed)


@pytest.fixture
def superuser(deployment: EscapeDeployment) -> Iterator[psycopg.Connection[Any]]:
    """The shard's superuser; puts the router role's password and defaults back afterwards."""
    with psycopg.connect(deployment.superuser_dsn(), autocommit=True) as conn:
        yield conn
        conn.execute(f"ALTER ROLE {ROLE} PASSWORD '{ROLE_PASSWORD}'")  # type: ignore[call-overload]
        conn.execute(f"ALTER ROLE {ROLE} RESET search_path")  # type: ignore[call-overload]
        conn.execute(f"ALTER ROLE {ROLE} RESET statement_timeout")  # type: ignore[call-overload]
        db = quote_ident(deployment.env.SHARD_DB)
        conn.execute(f"ALTER ROLE {ROLE} IN DATABASE {db} RESET ALL")  # type: ignore[call-overload]


def connect(deployment: EscapeDeployment, tenant: str, router: RouterThread | None = None) -> psycopg.Connection[Any]:
    return psycopg.connect(deployment.url(tenant, router=router), autocommit=True, connect_timeout=10)


def fresh_server_sessions(deployment: EscapeDeployment, superuser: psycopg.Connection[Any]) -> None:
    """End the router role's server sessions on the shard and close the router's idle ones: the next
    statement of a shared tenant needs a new login."""
    superuser.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (LOCKOUT.role,))
    deployment.close_idle_server_connections()


def shared_tenants_work(deployment: EscapeDeployment, router: RouterThread | None = None) -> None:
    for tenant in SHARED:
        with connect(deployment, tenant, router) as conn:
            rows = conn.execute(f"SELECT tenant_id, secret FROM {TABLE} ORDER BY 2").fetchall()  # type: ignore[call-overload]
            assert rows == [(tenant, secret) for secret in sorted(deployment.secrets[tenant])]


def repairs(deployment: EscapeDeployment) -> dict[str, float]:
    """tenant_router_role_repairs_total by kind, as Prometheus scrapes it."""
    registry = CollectorRegistry()
    registry.register(RouterCollector(deployment.router.router))
    found: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("tenant_router_role_repairs_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            found[kind] = found.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def role_defaults(superuser: psycopg.Connection[Any]) -> list[str]:
    rows = superuser.execute(
        "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setrole = %s::regrole ORDER BY 1", (LOCKOUT.role,)
    ).fetchall()
    return [row[0] for row in rows]


# --- item 6: the router's role -----------------------------------------------------------------------

ROLE_STATEMENTS = [
    "ALTER ROLE CURRENT_USER PASSWORD 'x'",
    "ALTER USER CURRENT_USER WITH PASSWORD 'x'",
    "ALTER ROLE CURRENT_USER SET search_path = pg_catalog",
    "ALTER ROLE CURRENT_USER IN DATABASE app RESET ALL",
    "ALTER ROLE lock_router RENAME TO someone",
    "ALTER GROUP lock_group ADD USER lock_router",
    "CREATE ROLE lock_intruder",
    "DROP ROLE IF EXISTS lock_intruder",
    "GRANT pg_read_all_data TO CURRENT_USER",
    "SELECT 1; ALTER ROLE CURRENT_USER PASSWORD 'x'",
]


@pytest.mark.parametrize("model", ["shared", "schema"])
def test_role_statements_are_refused(
    deployment: EscapeDeployment, superuser: psycopg.Connection[Any], model: str
) -> None:
    tenant = LOCKOUT.tenants(model)[0]  # type: ignore[arg-type]
    with connect(deployment, tenant) as conn:
        for sql in ROLE_STATEMENTS:
            for prepare in (False, True):  # simple query; Parse/Bind/Execute
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="statements on roles"):
                    conn.execute(sql, prepare=prepare)  # type: ignore[call-overload]
        assert conn.execute("SELECT 1").fetchone() == (1,)
    fresh_server_sessions(deployment, superuser)
    shared_tenants_work(deployment)


HIDDEN_PASSWORD_CHANGES = {
    "DO block": "DO $$BEGIN EXECUTE 'ALTER ROLE ' || quote_ident(current_user) || ' PASSWORD ''x'''; END$$",
    "pg_temp function": (
        "CREATE FUNCTION pg_temp.lock_out() RETURNS void LANGUAGE plpgsql AS"
        " $$BEGIN EXECUTE 'ALTER ROLE ' || quote_ident(current_user) || ' PASSWORD ''y'''; END$$;"
        " SELECT pg_temp.lock_out()"
    ),
}


@pytest.mark.parametrize("variant", list(HIDDEN_PASSWORD_CHANGES))
def test_hidden_password_change_is_repaired(
    deployment: EscapeDeployment,
    superuser: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
    variant: str,
) -> None:
    before = repairs(deployment).get("password", 0.0)
    with connect(deployment, SHARED[0]) as conn:
        conn.execute(HIDDEN_PASSWORD_CHANGES[variant])  # type: ignore[call-overload]
    # The change took: the configured password no longer opens a session as the router's role.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(deployment.env.shard_dsn("shard_a", LOCKOUT.role, ROLE_PASSWORD, deployment.env.SHARD_DB))
    fresh_server_sessions(deployment, superuser)
    with caplog.at_level(logging.ERROR, logger="router.net.role_guard"):
        shared_tenants_work(deployment)
    assert repairs(deployment).get("password", 0.0) == before + 1
    assert any(LOCKOUT.role in r.getMessage() and "repairing" in r.getMessage() for r in caplog.records), caplog.text
    psycopg.connect(deployment.env.shard_dsn("shard_a", LOCKOUT.role, ROLE_PASSWORD, deployment.env.SHARD_DB)).close()


def test_hidden_role_defaults_are_repaired(deployment: EscapeDeployment, superuser: psycopg.Connection[Any]) -> None:
    """Session defaults set through a DO block, for every database and for this one, are removed
    as the admin before a shared tenant's statement runs; the operator's superuser-only default stays."""
    before = repairs(deployment).get("role_defaults", 0.0)
    db = deployment.env.SHARD_DB
    with connect(deployment, SHARED[0]) as conn:
        conn.execute(  # type: ignore[call-overload]
            "DO $$BEGIN"
            " EXECUTE 'ALTER ROLE ' || quote_ident(current_user) || ' SET search_path = pg_catalog';"
            f" EXECUTE 'ALTER ROLE ' || quote_ident(current_user) || ' IN DATABASE {db} SET statement_timeout = 1';"
            " END$$"
        )
    assert len(role_defaults(superuser)) == 3  # track_activities=off (rls enable's), and the tenant's two
    fresh_server_sessions(deployment, superuser)
    shared_tenants_work(deployment)
    assert role_defaults(superuser) == ["track_activities=off"]
    assert repairs(deployment).get("role_defaults", 0.0) == before + 1


def test_without_admin_the_lockout_is_a_clear_error_and_check_says_so(
    deployment: EscapeDeployment, superuser: psycopg.Connection[Any]
) -> None:
    config = dataclasses.replace(deployment.config, admin=None)
    audits = asyncio.run(audit_server_role(config, deployment.topology))
    assert audits and all(any("no `admin`" in problem for problem in audit.problems) for audit in audits), audits
    router = RouterThread(config, deployment.topology).start()
    try:
        superuser.execute(f"ALTER ROLE {ROLE} SET search_path = pg_catalog")  # type: ignore[call-overload]
        audits = asyncio.run(audit_server_role(deployment.config, deployment.topology))
        assert any("session defaults" in problem for audit in audits for problem in audit.problems), audits
        with pytest.raises(psycopg.Error, match="session defaults of its own"):  # noqa: SIM117
            with connect(deployment, SHARED[0], router) as conn:
                conn.execute(f"SELECT * FROM {TABLE}")  # type: ignore[call-overload]
        superuser.execute(f"ALTER ROLE {ROLE} RESET search_path")  # type: ignore[call-overload]
        superuser.execute(f"ALTER ROLE {ROLE} PASSWORD 'changed'")  # type: ignore[call-overload]
        router.call(_close_idle(router))
        with pytest.raises(psycopg.Error, match="rejected the router's credentials") as refused:  # noqa: SIM117
            with connect(deployment, SHARED[0], router) as conn:
                conn.execute(f"SELECT * FROM {TABLE}")  # type: ignore[call-overload]
        assert "ALTER ROLE CURRENT_USER PASSWORD" in str(refused.value), refused.value  # the hint
    finally:
        router.stop()


async def _close_idle(router: RouterThread) -> None:
    for pool in router.router.iter_pools():
        pool.close_idle("test: a new login")


# --- item 7: large objects ---------------------------------------------------------------------------

LARGE_OBJECT_READS = [
    "SELECT lo_create(0)",
    "SELECT lo_creat(-1)",
    "SELECT pg_catalog.lo_from_bytea(0, 'secret')",
    "SELECT lo_get(1)",
    "SELECT loread(lo_open(1, 262144), 10)",
    "SELECT lo_unlink(1)",
    "SELECT * FROM pg_largeobject_metadata",
    "TABLE pg_catalog.pg_largeobject_metadata",
    "SELECT count(*) FROM pg_largeobject",
    "COMMENT ON LARGE OBJECT 1 IS 'x'",
]


def test_shared_tenants_cannot_use_large_objects(deployment: EscapeDeployment) -> None:
    with connect(deployment, SHARED[0]) as conn:
        for sql in LARGE_OBJECT_READS:
            for prepare in (False, True):
                with pytest.raises(psycopg.errors.FeatureNotSupported, match="large objects"):
                    conn.execute(sql, prepare=prepare)  # type: ignore[call-overload]
        # Hidden from the router: the server refuses it (rls enable took the functions from PUBLIC).
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DO $$BEGIN PERFORM lo_create(0); END$$")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DO $$BEGIN PERFORM count(*) FROM pg_largeobject_metadata; END$$")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    audits = asyncio.run(audit_server_role(deployment.config, deployment.topology))
    assert all(audit.problems == () for audit in audits), audits


def test_psql_lo_import_is_refused_to_a_shared_tenant(deployment: EscapeDeployment, tmp_path: Path) -> None:
    """psql's \\lo_import creates and writes the large object with fast-path function calls."""
    source = tmp_path / "secret.txt"
    source.write_text("a shared tenant's large object")
    result = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", f"\\lo_import {source}", deployment.url(SHARED[0])],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    assert result.returncode != 0, result.stdout
    assert "fast-path function call protocol" in result.stderr, result.stderr


def test_check_reports_large_objects_open_to_the_router_role(
    deployment: EscapeDeployment, superuser: psycopg.Connection[Any]
) -> None:
    superuser.execute("GRANT EXECUTE ON FUNCTION pg_catalog.lo_create(oid) TO PUBLIC")
    try:
        audits = asyncio.run(audit_server_role(deployment.config, deployment.topology))
        assert any("large objects" in problem for audit in audits for problem in audit.problems), audits
    finally:
        superuser.execute("REVOKE EXECUTE ON FUNCTION pg_catalog.lo_create(oid) FROM PUBLIC")


@pytest.mark.parametrize("model", ["schema", "database"])
def test_schema_and_database_tenants_keep_their_large_objects(deployment: EscapeDeployment, model: str) -> None:
    # rls enable again, now that the schema tenants exist: it gives them back what it takes from PUBLIC.
    asyncio.run(enable_rls(deployment.config, deployment.topology, LOCKOUT.table, "tenant_id"))
    tenant = LOCKOUT.tenants(model)[0]  # type: ignore[arg-type]
    with connect(deployment, tenant) as conn:
        oid = conn.execute("SELECT lo_from_bytea(0, 'mine')").fetchone()[0]  # type: ignore[index]
        assert conn.execute("SELECT lo_get(%s)", (oid,)).fetchone() == (b"mine",)
        assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = %s", (oid,)).fetchone() == (1,)
        conn.execute("SELECT lo_unlink(%s)", (oid,))
