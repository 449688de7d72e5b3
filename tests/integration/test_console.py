"""The admin console (virtual database `tenant_router`), end to end through real clients: psql prints
its answers as tables; psycopg reads every command's result set with its types; a user without
`console: true` is refused with 42501; an unknown command and the extended protocol get clean
errors; PAUSE makes a tenant's new transaction wait and RESUME lets it run; SUSPEND refuses the
tenant's new logins; RELOAD reloads shards.yaml, and says so when it rejects the file."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from router.admin.tenant_admin import add_tenant, remove_tenant
from router.testing.deploy import CONSOLE_PASSWORD, CONSOLE_USER, load
from router.testing.pgcluster import find_pg_bin_dir
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, RouterFactory, url


def console_url(router: RouterThread, user: str = CONSOLE_USER, password: str = CONSOLE_PASSWORD) -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{router.port}/tenant_router"


def console(router: RouterThread) -> psycopg.Connection[Any]:
    return psycopg.connect(console_url(router), autocommit=True, connect_timeout=10)


def rows(conn: psycopg.Connection[Any], command: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = conn.execute(command)  # type: ignore[call-overload]
    assert cur.description is not None, command
    return [c.name for c in cur.description], cur.fetchall()


@pytest.fixture
def own_tenant(deployment: Deployment, request: pytest.FixtureRequest) -> Iterator[str]:
    """A shared tenant of this test's own (PAUSE and SUSPEND reach every router of the session)."""
    tenant = "console-" + request.node.name.removeprefix("test_").replace("_", "-")[:30]
    config, topology = load(deployment.directory / "router.yaml")
    asyncio.run(add_tenant(config, topology, tenant, "shared"))
    yield tenant
    asyncio.run(remove_tenant(config, topology, tenant))


def test_psql_prints_show_pools_as_a_table(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme"), autocommit=True) as app:
        app.execute("SELECT 1")  # the pool of acme's shard exists now
    psql = find_pg_bin_dir() / "psql"
    out = subprocess.run(
        [str(psql), "-X", console_url(router), "-c", "show pools;"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line]
    header = [cell.strip() for cell in lines[0].split("|")]
    assert header == ["shard", "role", "server", "database", "user", "active", "idle", "waiting", "size", "worker"]
    assert set(lines[1]) <= {"-", "+"}  # the rule under the header
    body = [[cell.strip() for cell in line.split("|")] for line in lines[2:] if "|" in line]
    shard = router.router.resolve_target("acme").shard
    assert any(row[0] == shard and row[1] == "primary" for row in body), out.stdout
    assert lines[-1] == f"({len(body)} row{'s' if len(body) != 1 else ''})"


def test_every_show_command_is_a_result_set(router: RouterThread) -> None:
    shard = router.router.resolve_target("acme").shard
    with psycopg.connect(url(router, "acme"), autocommit=True) as app, console(router) as admin:
        app.execute("SELECT 1")
        names, pools = rows(admin, "SHOW POOLS")
        assert names[:5] == ["shard", "role", "server", "database", "user"]
        assert any(p[0] == shard and p[1] == "primary" and isinstance(p[5], int) for p in pools), pools

        names, clients = rows(admin, "show clients")
        assert names == ["pid", "user", "tenant", "state", "address", "server", "worker"]
        assert any(c[2] == "acme" and c[3] == "idle" for c in clients), clients
        assert any(c[1] == CONSOLE_USER and c[3] == "console" and c[2] is None for c in clients), clients

        names, servers = rows(admin, "SHOW SERVERS;")
        assert names[:6] == ["shard", "role", "server", "database", "user", "state"]
        assert any(s[0] == shard and s[5] in ("idle", "active") and s[6] > 0 for s in servers), servers

        names, tenants = rows(admin, "SHOW TENANTS")
        assert names == ["tenant", "isolation", "status", "shard", "placement", "held", "clients"]
        by_id = {t[0]: t for t in tenants}
        assert by_id["acme"][3] == shard and by_id["acme"][5] is False and by_id["acme"][6] >= 1
        assert by_id["hooli"][2] == "suspended"
        assert by_id["bigcorp"][3:5] == ("shard_b", "catalog pin")

        names, stats = rows(admin, "  Show   Stats  ")
        assert names[:3] == ["shard", "role", "transactions"]
        assert any(s[0] == shard and s[2] >= 1 for s in stats), stats

        names, holds = rows(admin, "SHOW HOLDS")
        assert names[:4] == ["tenant", "hold_id", "reason", "expired"]
        assert all(h[0] != "acme" for h in holds)


def test_a_user_without_console_is_refused_with_42501(router: RouterThread) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
        asyncio.run(asyncpg.connect(console_url(router, "app", "app-secret"), timeout=10))
    assert refused.value.sqlstate == "42501"
    assert refused.value.args[0] == 'user "app" may not use the admin console (database "tenant_router")'
    with pytest.raises(psycopg.OperationalError, match='user "reporting" may not use the admin console'):
        psycopg.connect(console_url(router, "reporting", "reporting-secret"), connect_timeout=10)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(console_url(router, CONSOLE_USER, "wrong"), connect_timeout=10)


def test_unknown_commands_and_the_extended_protocol_get_errors(router: RouterThread) -> None:
    with console(router) as admin:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            admin.execute("SHOW FOO")
        assert 'unknown console command "SHOW FOO"' in str(info.value)
        assert "SHOW POOLS" in (info.value.diag.message_hint or "")
        with pytest.raises(psycopg.errors.SyntaxError, match="needs exactly one tenant"):
            admin.execute("PAUSE")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="extended query protocol"):
            admin.execute("SHOW POOLS", prepare=True)
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            admin.execute("SHOW POOLS WHERE %s", [1])
        # Still usable, and nothing went to a server.
        assert rows(admin, "SHOW HOLDS")[0][0] == "tenant"
    with (
        psycopg.connect(console_url(router), connect_timeout=10) as not_autocommit,
        pytest.raises(psycopg.errors.SyntaxError, match="no transactions"),
    ):
        not_autocommit.execute("SHOW POOLS")  # psycopg sends BEGIN first


def test_pause_holds_new_transactions_until_resume(router: RouterThread, own_tenant: str) -> None:
    tenant = own_tenant
    wait_until(lambda: router.router.catalog.get(tenant), f"the router to know {tenant}", within=10)
    with psycopg.connect(url(router, tenant), autocommit=True) as app, console(router) as admin:
        app.execute("SELECT 1")
        names, paused = rows(admin, f"PAUSE {tenant}")
        assert names == ["tenant", "hold_id", "result"]
        assert paused[0][0] == tenant and paused[0][2].startswith("paused on "), paused
        assert tenant in router.router.held
        _, holds = rows(admin, "SHOW HOLDS")
        assert [(h[0], h[2], h[5]) for h in holds if h[0] == tenant] == [(tenant, "console PAUSE", True)]
        assert [t[5] for t in rows(admin, "SHOW TENANTS")[1] if t[0] == tenant] == [True]
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="already held"):
            admin.execute(f"PAUSE {tenant}")

        result: dict[str, object] = {}
        query = threading.Thread(target=lambda: result.update(row=app.execute("SELECT 42").fetchone()))
        query.start()
        wait_until(lambda: len(router.router.held.get(tenant, ())), f"{tenant}'s transaction to wait", within=10)
        assert query.is_alive() and "row" not in result

        names, resumed = rows(admin, f"resume {tenant};")
        assert resumed == [(tenant, "resumed: its waiting transactions run now")]
        query.join(10)
        assert result["row"] == (42,)
        wait_until(lambda: tenant not in router.router.held, f"{tenant} to be released", within=10)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="is not paused"):
            admin.execute(f"RESUME {tenant}")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not in the catalog"):
            admin.execute("PAUSE no-such-tenant")


def test_suspend_refuses_the_tenants_new_logins(router: RouterThread, own_tenant: str) -> None:
    tenant = own_tenant
    wait_until(lambda: router.router.catalog.get(tenant), f"the router to know {tenant}", within=10)
    with psycopg.connect(url(router, tenant), autocommit=True) as app:
        assert app.execute("SELECT 1").fetchone() == (1,)
    with console(router) as admin:
        names, suspended = rows(admin, f'SUSPEND "{tenant}"')
        assert names == ["tenant", "shard", "result"]
        assert suspended[0][0] == tenant and suspended[0][2].startswith("suspended")

    def refused() -> bool:
        try:
            psycopg.connect(url(router, tenant), connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            return "suspended" in str(exc)
        return False

    wait_until(refused, f"new logins of {tenant} to be refused", within=15, interval=0.2)


def test_reload_rereads_shards_yaml_and_reports_a_rejected_file(make_router: RouterFactory) -> None:
    router = make_router(extra={"reload": {"watch": False}})
    shards_file = router.router.config.shards_file
    good = shards_file.read_text()
    with console(router) as admin:
        names, reloaded = rows(admin, "RELOAD")
        assert (names, reloaded) == (["result"], [(f"reloaded {shards_file}",)])
        shards_file.write_text("shards: [this is not a mapping\n")
        try:
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="rejected"):
                admin.execute("RELOAD")
        finally:
            shards_file.write_text(good)
        assert rows(admin, "reload")[1] == [(f"reloaded {shards_file}",)]


def test_a_paused_tenants_transaction_fails_after_the_wait_timeout(make_router: RouterFactory, own_tenant: str) -> None:
    tenant = own_tenant
    router = make_router(pool={"wait_timeout": 1.0})
    wait_until(lambda: router.router.catalog.get(tenant), f"the router to know {tenant}", within=10)
    with psycopg.connect(url(router, tenant), autocommit=True) as app, console(router) as admin:
        rows(admin, f"PAUSE {tenant}")
        try:
            with pytest.raises(psycopg.errors.LockNotAvailable, match="PAUSE at the admin console"):
                app.execute("SELECT 1")
        finally:
            rows(admin, f"RESUME {tenant}")
        wait_until(lambda: tenant not in router.router.held, f"{tenant} to be released", within=10)
        assert app.execute("SELECT 1").fetchone() == (1,)
