"""Shard-side isolation against real PostgreSQL: the entered tenant and row-level security
(`rls enable`), the router role audit (`check`), and per-tenant roles for schema and database
tenants (`tenants add` / `tenants remove --drop-data`).

Everything talks to the shards directly as the router's role, entering the tenant the way the
router does (router.enter_tenant with the signature computed in Python, as bind values), so these
tests hold whatever the router's runtime does. Own table and tenant names; everything is removed
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from router.admin import rls
from router.admin.rls_enable import enable_rls
from router.admin.role_audit import audit_server_role
from router.admin.tenant_admin import ProvisioningFailed, add_tenant, init_catalog, remove_tenant
from router.cli import main
from router.config import RouterConfig
from router.core.topology import Topology
from router.errors import AdminRequired, ProvisioningError, UnknownTenant, UnsafeLayout
from router.isolation import (
    database_name,
    quote_ident,
    schema_name,
    sign_tenant,
    tenant_role,
    tenant_role_password,
)
from router.testing.deploy import CONTEXT_SECRET, load, write_configs
from router.testing.pgcluster import PgEnvironment, free_port

from .conftest import TENANTS, Deployment, RouterFactory

pytestmark = pytest.mark.integration

SECRET = CONTEXT_SECRET  # the session's: a shard database holds one key (see deploy.CONTEXT_SECRET)
SETTING = "app.tenant_id"
TABLE = "rls_it_items"
OWNED_TABLE = "rls_it_router_owned"
CATALOG_SCHEMA = "rls_it"
TENANT_A, TENANT_B = "rls-a", "rls-b"

APP_SQL = "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\n"
MIGRATIONS = {
    "002_rows.sql": "INSERT INTO notes (body) VALUES ('from 002');\n",
    "001_table.sql": APP_SQL,  # written second, applied first: name order
    "README.txt": "not SQL: ignored",
}


def _router_yaml_extra(env: PgEnvironment, **tenant: Any) -> dict[str, Any]:
    return {
        "catalog": {"dsn": env.catalog_dsn(), "schema": CATALOG_SCHEMA},
        "admin": {"user": env.SUPERUSER, "password": env.SUPERUSER_PASSWORD},
        "tenant": {"setting": SETTING, "context_secret": SECRET, "default_isolation": "shared", **tenant},
    }


@pytest.fixture(scope="module")
def config_dir(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rls")
    (directory / "app.sql").write_text(APP_SQL)
    (directory / "migrations").mkdir()
    for name, text in MIGRATIONS.items():
        (directory / "migrations" / name).write_text(text)
    write_configs(directory, pg_env, extra=_router_yaml_extra(pg_env, schema_sql="app.sql"))
    return directory


@pytest.fixture(scope="module")
def setup(config_dir: Path) -> tuple[RouterConfig, Topology]:
    return load(config_dir / "router.yaml")


@pytest.fixture(scope="module")
def config(setup: tuple[RouterConfig, Topology]) -> RouterConfig:
    return setup[0]


@pytest.fixture(scope="module")
def topology(setup: tuple[RouterConfig, Topology]) -> Topology:
    return setup[1]


async def _superuser(env: PgEnvironment, shard: str, dbname: str | None = None) -> Any:
    return await asyncpg.connect(env.shard_dsn(shard, env.SUPERUSER, env.SUPERUSER_PASSWORD, dbname or env.SHARD_DB))


async def _router(env: PgEnvironment, shard: str, tenant: str | None = None, signature: str | None = None) -> Any:
    """A direct connection as the router's role, which has entered `tenant` the way the router does
    (its signature unless `signature` is given; a wrong one raises). No statement cache: a test's
    DISCARD ALL would drop asyncpg's prepared statements."""
    conn = await asyncpg.connect(env.shard_dsn(shard), statement_cache_size=0)
    if tenant is not None:
        try:
            await _enter(conn, tenant, signature)
        except BaseException:
            await conn.close()
            raise
    return conn


async def _enter(conn: Any, tenant: str | None, signature: str | None = None) -> Any:
    sig = sign_tenant(SECRET, tenant) if signature is None and tenant is not None else signature
    return await conn.fetchval(rls.ENTER_TENANT_SQL, tenant, sig)


async def _state(conn: Any) -> tuple[str, str | None]:
    """What a session has entered: the carrier's raw value and the claim app.tenant_id."""
    row = await conn.fetchrow(
        f"SELECT current_setting('{rls.CARRIER}') AS carried, current_setting($1, true) AS claim", SETTING
    )
    return row["carried"], row["claim"]


async def _names_seen(conn: Any) -> list[str]:
    return [r["name"] for r in await conn.fetch(f"SELECT name FROM {TABLE} ORDER BY name")]


@pytest.fixture(scope="module")
async def protected(pg_env: PgEnvironment, config: RouterConfig, topology: Topology) -> AsyncIterator[list[str]]:
    """TABLE on every shard, owned by the admin, with one row per tenant, protected twice over."""
    for shard in pg_env.shards:
        conn = await _superuser(pg_env, shard)
        try:
            await conn.execute(
                f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} ("
                " id bigserial PRIMARY KEY,"
                f" tenant_id text NOT NULL DEFAULT current_setting('{SETTING}'),"
                " name text NOT NULL)"
            )
            await conn.execute(
                f"INSERT INTO {TABLE} (tenant_id, name) VALUES ($1, 'a1'), ($2, 'b1')", TENANT_A, TENANT_B
            )
        finally:
            await conn.close()
    await enable_rls(config, topology, TABLE)
    reports = await enable_rls(config, topology, TABLE)  # idempotent
    yield reports
    for shard in pg_env.shards:
        conn = await _superuser(pg_env, shard)
        try:
            await conn.execute(f"DELETE FROM router.rls_tables WHERE table_name = '{TABLE}'::regclass")
            await conn.execute(f"DROP TABLE {TABLE}")
        finally:
            await conn.close()


# --- rls enable ----------------------------------------------------------------------------------


async def test_enable_is_idempotent_and_installs_everything(pg_env: PgEnvironment, protected: list[str]) -> None:
    assert len(protected) == len(pg_env.shards)
    for shard, report in zip(pg_env.shards, protected, strict=True):
        assert report.startswith(f"shard {shard} (")
        assert f"public.{TABLE} protected by tenant_isolation on tenant_id (text); key written" in report
        conn = await _superuser(pg_env, shard)
        try:
            row = await conn.fetchrow(
                "SELECT c.relrowsecurity, c.relforcerowsecurity,"
                " (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies,"
                " (SELECT pg_get_expr(p.polqual, p.polrelid) FROM pg_policy p WHERE p.polrelid = c.oid) AS using_,"
                " (SELECT pg_get_expr(p.polwithcheck, p.polrelid) FROM pg_policy p WHERE p.polrelid = c.oid) AS check_,"
                " (SELECT count(*) FROM router.context_key) AS keys,"
                " (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'router') AS schema_owner,"
                " ARRAY(SELECT proname || ':' || pg_get_userbyid(proowner) || ':' || prosecdef::text"
                "  || ':' || array_to_string(coalesce(proconfig, '{}'), ',')"
                "  FROM pg_proc WHERE pronamespace = 'router'::regnamespace ORDER BY proname) AS functions,"
                " ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'router'::regnamespace"
                "  AND has_function_privilege('public', p.oid, 'EXECUTE') ORDER BY 1) AS public_functions,"
                " (SELECT column_name FROM router.rls_tables WHERE table_name = $1::regclass) AS recorded,"
                " (SELECT rolcanlogin FROM pg_roles WHERE rolname = $2) AS rls_role_logs_in,"
                " has_parameter_privilege($2, $3, 'SET') AS rls_role_sets_carrier,"
                " has_parameter_privilege($4, $3, 'SET') AS router_sets_carrier,"
                " has_table_privilege($4, 'router.context_key', 'SELECT') AS router_reads_key"
                " FROM pg_class c WHERE c.oid = $1::regclass",
                TABLE,
                rls.RLS_ROLE,
                rls.CARRIER,
                pg_env.ROUTER_ROLE,
            )
        finally:
            await conn.close()
        result = dict(row)
        using, check = result.pop("using_"), result.pop("check_")
        assert result == {
            "relrowsecurity": True,
            "relforcerowsecurity": True,
            "policies": 1,
            "keys": 1,
            "schema_owner": rls.RLS_ROLE,
            # Only the new objects: enter and leave as the RLS role with a pinned path, the others
            # as the caller (current_tenant() without SET, so that it can be inlined).
            "functions": [
                f"current_tenant:{rls.RLS_ROLE}:false:",
                f"enter_tenant:{rls.RLS_ROLE}:true:",
                f"leave_tenant:{rls.RLS_ROLE}:true:",
                f"no_tenant_context:{rls.RLS_ROLE}:false:search_path=pg_catalog, pg_temp",
            ],
            "public_functions": ["current_tenant", "enter_tenant", "leave_tenant", "no_tenant_context"],
            "recorded": "tenant_id",
            "rls_role_logs_in": False,
            "rls_role_sets_carrier": True,
            "router_sets_carrier": False,
            "router_reads_key": False,
        }
        # The policy reads the carrier inline; the claim and the old checking functions play no part.
        assert using == check
        assert f"current_setting('{rls.CARRIER}'" in using and "NULLIF" in using and "no_tenant_context" not in using
        assert "current_tenant" not in using and SETTING not in using


async def test_enter_tenant_checks_the_signature(pg_env: PgEnvironment, protected: list[str]) -> None:
    for shard in pg_env.shards:
        for tenant in (TENANT_A, "x", "tenant_with-every_char-0123456789", "9" * 48):
            conn = await _router(pg_env, shard)
            try:
                # The SQL-side HMAC over the stored pads equals Python's sign_tenant.
                assert await _enter(conn, tenant) == tenant
                assert await conn.fetchval("SELECT router.current_tenant()") == tenant
                assert await _state(conn) == (rls.carried_value(tenant), tenant)
            finally:
                await conn.close()
    cases = {
        "forged": (TENANT_B, "0" * 64),
        "another tenant's signature": (TENANT_B, sign_tenant(SECRET, TENANT_A)),
        "another secret": (TENANT_B, sign_tenant("guessed", TENANT_B)),
        "upper-case hex": (TENANT_B, sign_tenant(SECRET, TENANT_B).upper()),
        "unsigned": (TENANT_B, ""),
        "no signature": (TENANT_B, None),
        "truncated": (TENANT_B, sign_tenant(SECRET, TENANT_B)[:-1]),
        "a signature of the id with a dash written as D": (TENANT_B, sign_tenant(SECRET, rls.carried_value(TENANT_B))),
    }
    for case, (tenant, signature) in cases.items():
        # A fresh session stays without a tenant; one that entered A stays A's: never B's.
        for before in (None, TENANT_A):
            conn = await _router(pg_env, "shard_a", before)
            try:
                expected = await _state(conn)
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="forged tenant context") as info:
                    await conn.fetchval(rls.ENTER_TENANT_SQL, tenant, signature)
                assert info.value.sqlstate == "42501"
                assert await _state(conn) == expected
                if before is None:
                    assert expected == ("", None)
                    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no tenant context"):
                        await conn.fetchval("SELECT router.current_tenant()")
                    assert await conn.fetch(f"SELECT * FROM {TABLE}") == []
                else:
                    assert await conn.fetchval("SELECT router.current_tenant()") == TENANT_A
                    assert await _names_seen(conn) == ["a1"]
            except BaseException as exc:
                exc.add_note(f"{case}, entered before: {before}")
                raise
            finally:
                await conn.close()
    # Not a tenant id: refused before the signature is even looked at (it is a valid one here, of a
    # value the carrier would take, or not).
    conn = await _router(pg_env, "shard_a", TENANT_A)
    try:
        for bad in ("", "Acme", "a b", "-a", "a,b", "a\n", "a.b", "rlsDa"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="not a tenant id"):
                await conn.fetchval(rls.ENTER_TENANT_SQL, bad, sign_tenant(SECRET, bad))
            assert await _state(conn) == (rls.carried_value(TENANT_A), TENANT_A), bad
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="not a tenant id"):
            await conn.fetchval(rls.ENTER_TENANT_SQL, None, sign_tenant(SECRET, ""))
        assert await _names_seen(conn) == ["a1"]
    finally:
        await conn.close()


async def test_enter_tenant_refuses_when_the_key_is_not_installed(pg_env: PgEnvironment, protected: list[str]) -> None:
    admin = await _superuser(pg_env, "shard_a")
    try:
        async with admin.transaction():
            await admin.execute("DELETE FROM router.context_key")
            await admin.execute(f"SET LOCAL ROLE {pg_env.ROUTER_ROLE}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="the tenant context key is not installed"):
                async with admin.transaction():  # a savepoint: the key comes back with the rollback below
                    await _enter(admin, TENANT_A)
            assert await admin.fetchval(f"SELECT current_setting('{rls.CARRIER}')") == ""
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await admin.close()
    conn = await _router(pg_env, "shard_a", TENANT_A)  # the key is back
    await conn.close()


class _Rollback(Exception):
    pass


async def test_the_entered_tenant_decides_until_the_session_leaves_or_enters_another(
    pg_env: PgEnvironment, protected: list[str]
) -> None:
    conn = await _router(pg_env, "shard_a", TENANT_A)
    try:
        assert await _names_seen(conn) == ["a1"]
        # The claim app.tenant_id is for applications to read: changing it changes nothing else.
        await conn.execute(f"SET {SETTING} = '{TENANT_B}'")
        assert await conn.fetchval("SELECT current_setting($1)", SETTING) == TENANT_B
        assert await conn.fetchval("SELECT router.current_tenant()") == TENANT_A
        assert await _names_seen(conn) == ["a1"]
        await conn.execute("SELECT set_config($1, '', false)", SETTING)
        assert await _names_seen(conn) == ["a1"]
        # Entering another tenant with its signature switches; the claim follows.
        assert await _enter(conn, TENANT_B) == TENANT_B
        assert await _state(conn) == (rls.carried_value(TENANT_B), TENANT_B)
        assert await _names_seen(conn) == ["b1"]
        # Leaving: no tenant at all: no row to read, none to write, and current_tenant() says so.
        await conn.execute(rls.LEAVE_TENANT_SQL)
        assert (await _state(conn))[0] == ""
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no tenant context"):
            await conn.fetchval("SELECT router.current_tenant()")
        assert await conn.fetch(f"SELECT * FROM {TABLE}") == []
        for tenant in (TENANT_B, ""):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await conn.execute(f"INSERT INTO {TABLE} (tenant_id, name) VALUES ('{tenant}', 'x')")
        assert await _enter(conn, TENANT_A) == TENANT_A
        assert await _names_seen(conn) == ["a1"]
        # Entering in a transaction that is rolled back is undone with it.
        with pytest.raises(_Rollback):
            async with conn.transaction():
                await _enter(conn, TENANT_B)
                assert await _names_seen(conn) == ["b1"]
                raise _Rollback
        assert await _names_seen(conn) == ["a1"]
    finally:
        await conn.close()


@pytest.mark.parametrize("reset", ["RESET ALL", "DISCARD ALL"])
async def test_reset_all_and_discard_all_leave_no_tenant(
    pg_env: PgEnvironment, protected: list[str], reset: str
) -> None:
    conn = await _router(pg_env, "shard_a", TENANT_A)
    try:
        await conn.execute(reset)  # no privilege needed, and the carrier is reset with the rest
        assert await _state(conn) == ("", "")  # the claim, a placeholder by now, resets to empty
        assert await conn.fetch(f"SELECT * FROM {TABLE}") == []
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no tenant context"):
            await conn.fetchval("SELECT router.current_tenant()")
        await _enter(conn, TENANT_B)
        assert await _names_seen(conn) == ["b1"]
        if reset == "RESET ALL":  # inside a transaction too (DISCARD ALL cannot run in one)
            async with conn.transaction():
                await conn.execute(reset)
                assert await conn.fetch(f"SELECT * FROM {TABLE}") == []
            assert (await _state(conn))[0] == ""
    finally:
        await conn.close()


async def test_a_statement_cannot_change_the_tenant_halfway(pg_env: PgEnvironment, protected: list[str]) -> None:
    """The claim changed row by row, in the middle of a scan, changes nothing: the policies read
    the carrier, which no statement of the router's role can write."""
    conn = await _router(pg_env, "shard_a", TENANT_A)
    try:
        for sql in (
            f"SELECT *, set_config('{SETTING}', '{TENANT_B}', false) FROM {TABLE}",
            f"SELECT * FROM {TABLE} WHERE set_config('{SETTING}', '{TENANT_B}', false) IS NOT NULL",
            f"SELECT * FROM (SELECT set_config('{SETTING}', '{TENANT_B}', false)) AS s, {TABLE}",
            f"SELECT * FROM {TABLE} UNION ALL SELECT * FROM {TABLE}"
            f" WHERE set_config('{SETTING}', '{TENANT_B}', false) IS NOT NULL",
        ):
            await conn.execute("SELECT set_config($1, $2, false)", SETTING, TENANT_A)
            rows = await conn.fetch(sql)
            assert rows and {r["tenant_id"] for r in rows} == {TENANT_A}, sql
            assert await conn.fetchval("SELECT current_setting($1)", SETTING) == TENANT_B  # it did run
            assert await _names_seen(conn) == ["a1"]
        # Writing the carrier itself halfway is refused, and the statement with it.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied to set parameter"):
            await conn.fetch(
                f"SELECT *, set_config('{rls.CARRIER}', '{rls.carried_value(TENANT_B)}', false) FROM {TABLE}"
            )
        assert await _names_seen(conn) == ["a1"]
    finally:
        await conn.close()


async def test_the_router_role_cannot_write_the_carrier(pg_env: PgEnvironment, protected: list[str]) -> None:
    value = rls.carried_value(TENANT_B)
    conn = await _router(pg_env, "shard_a", TENANT_A)
    try:
        attacks = [
            f"SET {rls.CARRIER} = '{value}'",
            f"SET LOCAL {rls.CARRIER} = '{value}'",
            f"RESET {rls.CARRIER}",
            f"SET {rls.CARRIER} TO DEFAULT",
            f"SELECT set_config('{rls.CARRIER}', '{value}', false)",
            f"SELECT set_config('{rls.CARRIER}', '{value}', true)",
            f"SELECT set_config('{rls.CARRIER}', '', false)",
            f"UPDATE pg_settings SET setting = '{value}' WHERE name = '{rls.CARRIER}'",
            f"DO $$BEGIN PERFORM set_config('{rls.CARRIER}', '{value}', false); END$$",
            f"ALTER ROLE CURRENT_USER SET {rls.CARRIER} = '{value}'",
            f"ALTER ROLE {pg_env.ROUTER_ROLE} IN DATABASE {pg_env.SHARD_DB} SET {rls.CARRIER} = '{value}'",
            f"GRANT SET ON PARAMETER {rls.CARRIER} TO CURRENT_USER",
            f"SET ROLE {rls.RLS_ROLE}",
        ]
        for sql in attacks:
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
                async with conn.transaction():
                    await conn.execute(sql)
            if not sql.startswith(("SET ROLE", "GRANT")):
                assert "permission denied to set parameter" in str(info.value), sql
            assert await _state(conn) == (rls.carried_value(TENANT_A), TENANT_A), sql
        # A function of its own with a SET clause for the carrier: refused when it is created or
        # when it runs, as the caller.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied to set parameter"):
            async with conn.transaction():
                await conn.execute(
                    "CREATE FUNCTION pg_temp.sneak() RETURNS text LANGUAGE sql"
                    f" SET {rls.CARRIER} = '{value}' AS $$SELECT current_setting('{rls.CARRIER}')$$"
                )
                await conn.fetchval("SELECT pg_temp.sneak()")
        assert await _names_seen(conn) == ["a1"]
        # ... and no role default was left behind for the next session.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) AS c"
                " WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND c LIKE $1",
                f"{rls.CARRIER}=%",
            )
            == 0
        )
    finally:
        await conn.close()


async def test_router_role_cannot_reach_the_key_or_the_policy(pg_env: PgEnvironment, protected: list[str]) -> None:
    conn = await _router(pg_env, "shard_a", TENANT_A)
    try:
        attacks = [
            "SELECT * FROM router.context_key",
            "UPDATE router.context_key SET inner_pad = inner_pad",
            "CREATE OR REPLACE FUNCTION router.current_tenant() RETURNS text LANGUAGE sql AS $$SELECT 'x'$$",
            "ALTER FUNCTION router.current_tenant() SECURITY INVOKER",
            "CREATE FUNCTION router.mine() RETURNS int LANGUAGE sql AS $$SELECT 1$$",
            "CREATE OR REPLACE FUNCTION router.enter_tenant(text, text) RETURNS text LANGUAGE sql AS $$SELECT $1$$",
            "CREATE OR REPLACE FUNCTION router.leave_tenant() RETURNS void LANGUAGE sql AS $$SELECT$$",
            "ALTER FUNCTION router.enter_tenant(text, text) SET search_path = public",
            "ALTER FUNCTION router.no_tenant_context() RENAME TO gone",
            "DELETE FROM router.rls_tables",
            "COPY router.context_key TO STDOUT",
            f"SET ROLE {rls.RLS_ROLE}",
            f"ALTER TABLE {TABLE} DISABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY",
            f"DROP POLICY tenant_isolation ON {TABLE}",
            f"CREATE POLICY everything ON {TABLE} USING (true)",
            f"TRUNCATE {TABLE}",
            f"DROP TABLE {TABLE}_never",  # nonexistent: just to be sure errors are per statement
        ]
        for sql in attacks[:-1]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(sql)
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.execute(attacks[-1])
        # The key through the function that reads it: no way to make enter_tenant show it.
        assert await conn.fetchval("SELECT has_table_privilege('router.context_key', 'SELECT')") is False
        row = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls, pg_has_role(current_user, $1, 'MEMBER') AS in_rls_role,"
            " row_security_active($2::regclass) AS applies,"
            " pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = $2::regclass), 'MEMBER') AS owns"
            " FROM pg_roles WHERE rolname = current_user",
            rls.RLS_ROLE,
            TABLE,
        )
        assert dict(row) == {
            "rolsuper": False,
            "rolbypassrls": False,
            "in_rls_role": False,
            "applies": True,
            "owns": False,
        }
        # Still usable for everything the application needs.
        assert [r["name"] for r in await conn.fetch(f"SELECT name FROM {TABLE}")] == ["a1"]
    finally:
        await conn.close()


async def test_rows_of_another_tenant_are_invisible_and_untouchable(
    pg_env: PgEnvironment, protected: list[str]
) -> None:
    for shard in pg_env.shards:
        conn = await _router(pg_env, shard, TENANT_A)
        try:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute(f"INSERT INTO {TABLE} (name) VALUES ('a2')")  # tenant_id from the context
            rows = await conn.fetch(f"SELECT tenant_id, name FROM {TABLE} ORDER BY name")
            assert [tuple(r) for r in rows] == [(TENANT_A, "a1"), (TENANT_A, "a2")]
            assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE tenant_id = $1", TENANT_B) == 0
            assert await conn.execute(f"UPDATE {TABLE} SET name = 'x' WHERE tenant_id = $1", TENANT_B) == "UPDATE 0"
            assert await conn.execute(f"DELETE FROM {TABLE} WHERE tenant_id = $1", TENANT_B) == "DELETE 0"
            await transaction.rollback()
            for sql in (
                f"INSERT INTO {TABLE} (tenant_id, name) VALUES ('{TENANT_B}', 'planted')",
                f"UPDATE {TABLE} SET tenant_id = '{TENANT_B}'",
                f"COPY {TABLE} (tenant_id, name) FROM STDIN",
                # The column's default is the claim, which the session may point at B: still A's rows only.
                f"SET LOCAL {SETTING} = '{TENANT_B}'; INSERT INTO {TABLE} (name) VALUES ('planted')",
            ):
                with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.FeatureNotSupportedError)) as info:
                    async with conn.transaction():
                        await conn.execute(sql)
                assert "row-level security" in str(info.value), sql
        finally:
            await conn.close()
    admin = await _superuser(pg_env, "shard_a")
    try:
        rows = await admin.fetch(f"SELECT tenant_id, name FROM {TABLE} ORDER BY 1, 2")
        assert [tuple(r) for r in rows] == [(TENANT_A, "a1"), (TENANT_B, "b1")]
    finally:
        await admin.close()


async def test_enable_refuses_a_table_the_router_role_owns(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, protected: list[str]
) -> None:
    # A table an operator gave to the router's role (which cannot create tables there itself).
    for shard in pg_env.shards:
        conn = await _superuser(pg_env, shard)
        try:
            await conn.execute(f"CREATE TABLE {OWNED_TABLE} (id int, tenant_id text)")
            await conn.execute(f"ALTER TABLE {OWNED_TABLE} OWNER TO {pg_env.ROUTER_ROLE}")
        finally:
            await conn.close()
    try:
        with pytest.raises(UnsafeLayout, match="could disable row-level security") as info:
            await enable_rls(config, topology, OWNED_TABLE)
        assert info.value.hint is not None
        assert f'ALTER TABLE "public"."{OWNED_TABLE}" OWNER TO "postgres"' in info.value.hint
        with pytest.raises(UnsafeLayout, match="has no column 'tenant'"):
            await enable_rls(config, topology, TABLE, "tenant")
        with pytest.raises(UnsafeLayout, match="there is no table 'rls_it_missing'"):
            await enable_rls(config, topology, "rls_it_missing")
        conn = await _superuser(pg_env, "shard_a")
        try:
            policies = await conn.fetchval("SELECT count(*) FROM pg_policy WHERE polrelid = $1::regclass", OWNED_TABLE)
            assert policies == 0
            # Another permissive policy would be OR-ed with ours: refused too.
            await conn.execute(f"ALTER TABLE {OWNED_TABLE} OWNER TO {pg_env.SUPERUSER}")
            await conn.execute(f"CREATE POLICY open_door ON {OWNED_TABLE} USING (true)")
        finally:
            await conn.close()
        with pytest.raises(UnsafeLayout, match=r"other permissive policies \(open_door\)"):
            await enable_rls(config, topology, OWNED_TABLE)
    finally:
        for shard in pg_env.shards:
            conn = await _superuser(pg_env, shard)
            try:
                await conn.execute(f"DROP TABLE IF EXISTS {OWNED_TABLE}")
            finally:
                await conn.close()


OLD_TABLE = "rls_it_old_items"
# The objects of the signed-context design (its function names, simplified bodies): what a database
# protected by an earlier version holds.
OLD_FUNCTIONS = [
    "CREATE FUNCTION router.context_inner_pad() RETURNS bytea LANGUAGE sql IMMUTABLE AS $$SELECT '\\x00'::bytea$$",
    "CREATE FUNCTION router.context_outer_pad() RETURNS bytea LANGUAGE sql IMMUTABLE AS $$SELECT '\\x00'::bytea$$",
    "CREATE FUNCTION router.context_verified_when_planned() RETURNS text LANGUAGE sql IMMUTABLE AS $$SELECT ''$$",
    f"CREATE FUNCTION router.check_tenant_context() RETURNS text LANGUAGE plpgsql STABLE"
    f" AS $$BEGIN RETURN current_setting('{SETTING}', true); END$$",
    "CREATE FUNCTION router.verify_tenant_context() RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER"
    " AS $$BEGIN RETURN router.check_tenant_context(); END$$",
    "CREATE OR REPLACE FUNCTION router.current_tenant() RETURNS text LANGUAGE plpgsql STABLE"
    " AS $$BEGIN RETURN router.verify_tenant_context(); END$$",
]
OLD_NAMES = [
    "check_tenant_context",
    "context_inner_pad",
    "context_outer_pad",
    "context_verified_when_planned",
    "verify_tenant_context",
]


def _old_policy(table: str, function: str) -> list[str]:
    condition = f"tenant_id = (SELECT router.{function}())"
    return [
        f"DROP POLICY IF EXISTS tenant_isolation ON {table}",
        f"CREATE POLICY tenant_isolation ON {table} USING ({condition}) WITH CHECK ({condition})",
    ]


async def test_enable_upgrades_a_database_of_the_signed_context_design(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, protected: list[str]
) -> None:
    """The old functions and policies, made by hand as an earlier version left them: `rls enable`
    (of any one table) gives every recorded table the new policy and drops the old functions, which
    the old policies depended on."""
    try:
        await _on_every_shard(
            pg_env,
            f"CREATE TABLE {OLD_TABLE} (id serial PRIMARY KEY, tenant_id text NOT NULL, name text NOT NULL)",
            f"INSERT INTO {OLD_TABLE} (tenant_id, name) VALUES ('{TENANT_A}', 'old-a'), ('{TENANT_B}', 'old-b')",
            f"ALTER TABLE {OLD_TABLE} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {OLD_TABLE} FORCE ROW LEVEL SECURITY",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {OLD_TABLE} TO {pg_env.ROUTER_ROLE}",
            f"SET ROLE {rls.RLS_ROLE}",
            *OLD_FUNCTIONS,
            "RESET ROLE",
            *_old_policy(OLD_TABLE, "current_tenant"),
            *_old_policy(TABLE, "verify_tenant_context"),  # depends on a function that goes
            f"INSERT INTO router.rls_tables VALUES ('{OLD_TABLE}'::regclass, 'tenant_id')",
        )
        # The old layout is live: the claim alone decides there.
        conn = await _router(pg_env, "shard_a")
        try:
            await conn.execute("SELECT set_config($1, $2, false)", SETTING, TENANT_B)
            assert [r["name"] for r in await conn.fetch(f"SELECT name FROM {OLD_TABLE}")] == ["old-b"]
        finally:
            await conn.close()

        reports = await enable_rls(config, topology, TABLE)
        assert len(reports) == len(pg_env.shards)

        for shard in pg_env.shards:
            admin = await _superuser(pg_env, shard)
            try:
                functions = await admin.fetchval(
                    "SELECT array_agg(proname::text ORDER BY proname) FROM pg_proc"
                    " WHERE pronamespace = 'router'::regnamespace"
                )
                policies = await admin.fetch(
                    "SELECT c.relname::text AS name, pg_get_expr(p.polqual, p.polrelid) AS using_,"
                    " pg_get_expr(p.polwithcheck, p.polrelid) AS check_"
                    " FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relname = ANY($1) ORDER BY 1",
                    [OLD_TABLE, TABLE],
                )
                current_language = await admin.fetchval(
                    "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
                    " WHERE p.oid = 'router.current_tenant()'::regprocedure"
                )
            finally:
                await admin.close()
            assert functions == ["current_tenant", "enter_tenant", "leave_tenant", "no_tenant_context"], shard
            assert not set(OLD_NAMES) & set(functions)
            assert current_language == "sql"
            assert [p["name"] for p in policies] == sorted([OLD_TABLE, TABLE]), shard
            for policy in policies:
                assert policy["using_"] == policy["check_"]
                assert f"current_setting('{rls.CARRIER}'" in policy["using_"], policy
                assert "current_tenant" not in policy["using_"] and "verify" not in policy["using_"], policy

            conn = await _router(pg_env, shard)
            try:
                await conn.execute("SELECT set_config($1, $2, false)", SETTING, TENANT_B)
                assert await conn.fetch(f"SELECT name FROM {OLD_TABLE}") == []
                await _enter(conn, TENANT_A)
                await conn.execute("SELECT set_config($1, $2, false)", SETTING, TENANT_B)
                assert [r["name"] for r in await conn.fetch(f"SELECT name FROM {OLD_TABLE}")] == ["old-a"]
                assert await _names_seen(conn) == ["a1"]
            finally:
                await conn.close()
    finally:
        await _on_every_shard(
            pg_env,
            f"DELETE FROM router.rls_tables WHERE table_name = to_regclass('{OLD_TABLE}')",
            f"DROP TABLE IF EXISTS {OLD_TABLE}",
            *(f"DROP FUNCTION IF EXISTS router.{name}() CASCADE" for name in OLD_NAMES),
        )
        await enable_rls(config, topology, TABLE)  # TABLE's policy back, whatever happened above


async def _enabled_with_the_carrier_in_order(pg_env: PgEnvironment, config: RouterConfig, topology: Topology) -> None:
    """Once the cause is removed: rls enable goes through on every shard, and the audit says
    nothing about the carrier."""
    assert len(await enable_rls(config, topology, TABLE)) == len(pg_env.shards)
    for audit in await audit_server_role(config, topology):
        assert not [line for line in (*audit.problems, *audit.warnings) if rls.CARRIER in line], audit


async def test_enable_refuses_a_router_role_that_may_set_the_carrier(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, protected: list[str]
) -> None:
    role = pg_env.ROUTER_ROLE
    setter = "rls_it_carrier_setter"
    for grants, revokes in (
        ([f"GRANT SET ON PARAMETER {rls.CARRIER} TO {role}"], [f"REVOKE SET ON PARAMETER {rls.CARRIER} FROM {role}"]),
        (  # through a role it is a member of
            [
                f"CREATE ROLE {setter} NOLOGIN",
                f"GRANT SET ON PARAMETER {rls.CARRIER} TO {setter}",
                f"GRANT {setter} TO {role}",
            ],
            [f"REVOKE SET ON PARAMETER {rls.CARRIER} FROM {setter}", f"DROP ROLE IF EXISTS {setter}"],
        ),
        (  # ... which it does not inherit the privileges of, but may SET ROLE to
            [
                f"CREATE ROLE {setter} NOLOGIN",
                f"GRANT SET ON PARAMETER {rls.CARRIER} TO {setter}",
                f"GRANT {setter} TO {role}",
                f"ALTER ROLE {role} NOINHERIT",
            ],
            [
                f"ALTER ROLE {role} INHERIT",
                f"REVOKE SET ON PARAMETER {rls.CARRIER} FROM {setter}",
                f"DROP ROLE IF EXISTS {setter}",
            ],
        ),
    ):
        await _on_every_shard(pg_env, *grants)
        try:
            # What the refusal is about: with the grant, a tenant's own SQL enters any tenant.
            conn = await _router(pg_env, "shard_a", TENANT_A)
            try:
                become = f"SET ROLE {setter}; " if "NOINHERIT" in grants[-1] else ""
                await conn.execute(f"{become}SET {rls.CARRIER} = '{rls.carried_value(TENANT_B)}'; RESET ROLE")
                assert await _names_seen(conn) == ["b1"]
            finally:
                await conn.close()
            with pytest.raises(UnsafeLayout, match=f"may set {rls.CARRIER}") as info:
                await enable_rls(config, topology, TABLE)
            assert info.value.hint is not None and f"REVOKE SET ON PARAMETER {rls.CARRIER}" in info.value.hint
            audits = await audit_server_role(config, topology)
            assert [a.shard for a in audits] == list(pg_env.shards)
            for audit in audits:
                found = [p for p in audit.problems if f"may set {rls.CARRIER}" in p]
                assert len(found) == 1, audit
                assert f"REVOKE SET ON PARAMETER {rls.CARRIER} FROM {quote_ident(role)}" in found[0]
        finally:
            await _on_every_shard(pg_env, *revokes)
    await _enabled_with_the_carrier_in_order(pg_env, config, topology)


async def test_enable_and_check_refuse_a_default_of_the_carrier(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, protected: list[str]
) -> None:
    """A default of the carrier is what a session of the router's role has before it enters a
    tenant and after RESET ALL: with one, that session acts as the tenant it names."""
    role, db = pg_env.ROUTER_ROLE, pg_env.SHARD_DB
    carried = rls.carried_value(TENANT_B)
    for grant, revoke in (
        (f"ALTER ROLE {role} SET {rls.CARRIER} = '{carried}'", f"ALTER ROLE {role} RESET {rls.CARRIER}"),
        (f"ALTER DATABASE {db} SET {rls.CARRIER} = '{carried}'", f"ALTER DATABASE {db} RESET {rls.CARRIER}"),
        (
            f"ALTER ROLE {role} IN DATABASE {db} SET {rls.CARRIER} = '{carried}'",
            f"ALTER ROLE {role} IN DATABASE {db} RESET {rls.CARRIER}",
        ),
    ):
        await _on_every_shard(pg_env, grant)
        try:
            # What the refusal is about: A's session, after RESET ALL, is B's.
            conn = await _router(pg_env, "shard_a", TENANT_A)
            try:
                await conn.execute("RESET ALL")
                assert await _names_seen(conn) == ["b1"]
            finally:
                await conn.close()
            with pytest.raises(UnsafeLayout, match=f"{rls.CARRIER} has a default"):
                await enable_rls(config, topology, TABLE)
            for audit in await audit_server_role(config, topology):
                assert [p for p in audit.problems if f"{rls.CARRIER} has a default" in p], audit
        finally:
            await _on_every_shard(pg_env, revoke)
    await _enabled_with_the_carrier_in_order(pg_env, config, topology)


async def test_check_warns_when_enter_tenant_is_missing(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, protected: list[str]
) -> None:
    for audit in await audit_server_role(config, topology):
        assert not [w for w in audit.warnings if "enter_tenant" in w], audit
    await _on_every_shard(pg_env, "ALTER FUNCTION router.enter_tenant(text, text) RENAME TO rls_it_away")
    try:
        audits = await audit_server_role(config, topology)
    finally:
        await _on_every_shard(pg_env, "ALTER FUNCTION router.rls_it_away(text, text) RENAME TO enter_tenant")
    assert [a.shard for a in audits] == list(pg_env.shards)
    for audit in audits:
        warnings = [w for w in audit.warnings if "router.enter_tenant() is not installed" in w]
        assert len(warnings) == 1 and "rls enable" in warnings[0], audit
        assert not [p for p in audit.problems if "enter_tenant" in p], audit


async def test_enable_needs_the_secret_and_the_admin(config: RouterConfig, topology: Topology) -> None:
    no_secret = dataclasses.replace(config, tenant=dataclasses.replace(config.tenant, context_secret=None))
    with pytest.raises(AdminRequired, match="context_secret"):
        await enable_rls(no_secret, topology, TABLE)
    with pytest.raises(AdminRequired, match="no `admin` section"):
        await enable_rls(dataclasses.replace(config, admin=None), topology, TABLE)


def test_rls_enable_command(
    pg_env: PgEnvironment, config_dir: Path, protected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--config", str(config_dir / "router.yaml"), "rls", "enable", TABLE, "--column", "tenant_id"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("shard ")]
    assert [line.split()[1] for line in lines] == list(pg_env.shards)


# --- check ---------------------------------------------------------------------------------------


def test_check_passes_for_the_router_role_without_a_context_secret(
    pg_env: PgEnvironment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_configs(tmp_path, pg_env)
    code = main(["--config", str(path), "check"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.count("server role tenant_router: ok") == 2
    # The test clusters' router role owns the shard database (and, before PostgreSQL 16, has
    # CREATEROLE): weaker spots are warned about, but row-level security applies to it.
    assert all(line.startswith("warning: shard ") for line in err.splitlines()), err
    assert "is a superuser" not in err and "has BYPASSRLS" not in err


def test_check_fails_for_an_escapable_router_role_once_isolation_is_hardened(
    pg_env: PgEnvironment, config_dir: Path, protected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # With a context secret the router promises isolation against hostile SQL: a server role that
    # could grant itself other roles (CREATEROLE before 16) or plant schemas is a problem.
    path = str(config_dir / "router.yaml")
    assert main(["--config", path, "check"]) == 0, capsys.readouterr().err  # the harness's role: LOGIN only
    capsys.readouterr()
    role = pg_env.ROUTER_ROLE
    asyncio.run(
        _on_every_shard(
            pg_env,
            f"ALTER ROLE {role} CREATEROLE",
            f"GRANT CREATE ON DATABASE {pg_env.SHARD_DB} TO {role}",
            f"GRANT CREATE ON SCHEMA public TO {role}",
        )
    )
    try:
        code = main(["--config", path, "check"])
        _out, err = capsys.readouterr()
    finally:
        asyncio.run(
            _on_every_shard(
                pg_env,
                f"ALTER ROLE {role} NOCREATEROLE",
                f"REVOKE CREATE ON DATABASE {pg_env.SHARD_DB} FROM {role}",
                f"REVOKE CREATE ON SCHEMA public FROM {role}",
            )
        )
    assert code == 2
    assert "has CREATEROLE on PostgreSQL" in err and "may create schemas in database app" in err
    assert "may create objects in schema public" in err


PLANTER = "rls_it_planter"
PLANTER_PASSWORD = "rls-it-planter-password"
OPEN_SCHEMA = "rls_it_open"
PLANTED = "public.rls_it_planted()"


async def _on_every_shard(env: PgEnvironment, *statements: str) -> None:
    for shard in env.shards:
        conn = await _superuser(env, shard)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()


def test_check_fails_for_a_server_role_that_could_plant_code(
    pg_env: PgEnvironment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Code planted in the shared database runs inside other tenants' statements where no text shows
    # it (a function named like a built-in, a view): the exact hand-over trusts that there is none.
    path = write_configs(tmp_path, pg_env, extra=_router_yaml_extra(pg_env))
    text = path.read_text().replace(f"user: {pg_env.ROUTER_ROLE}", f"user: {PLANTER}")
    path.write_text(text.replace(f"password: {pg_env.ROUTER_PASSWORD}", f"password: {PLANTER_PASSWORD}"))
    # LOGIN and nothing else, as a hardened router role must be; then one schema open to it and a
    # function given to it.
    asyncio.run(
        _on_every_shard(
            pg_env,
            f"CREATE ROLE {PLANTER} LOGIN PASSWORD '{PLANTER_PASSWORD}'",
            f"ALTER ROLE {PLANTER} SET track_activities = off",
            f"CREATE SCHEMA {OPEN_SCHEMA}",
            f"GRANT USAGE, CREATE ON SCHEMA {OPEN_SCHEMA} TO {PLANTER}",
            f"CREATE FUNCTION {PLANTED} RETURNS int LANGUAGE sql AS 'SELECT 1'",
            f"ALTER FUNCTION {PLANTED} OWNER TO {PLANTER}",
        )
    )
    try:
        code = main(["--config", str(path), "check"])
        _out, err = capsys.readouterr()
        assert code == 2
        lines = err.splitlines()
        creates = [line for line in lines if f"role {PLANTER} may create objects in schema {OPEN_SCHEMA} of" in line]
        owns = [line for line in lines if f"role {PLANTER} owns function {PLANTED} in database app" in line]
        assert len(creates) == len(owns) == len(pg_env.shards), err
        asyncio.run(
            _on_every_shard(
                pg_env,
                f"REVOKE CREATE ON SCHEMA {OPEN_SCHEMA} FROM {PLANTER}",
                f"ALTER FUNCTION {PLANTED} OWNER TO {pg_env.SUPERUSER}",
            )
        )
        code = main(["--config", str(path), "check"])
        _out, err = capsys.readouterr()
        assert code == 0, err
    finally:
        asyncio.run(
            _on_every_shard(
                pg_env,
                f"DROP SCHEMA IF EXISTS {OPEN_SCHEMA} CASCADE",
                f"DROP FUNCTION IF EXISTS {PLANTED}",
                f"DROP OWNED BY {PLANTER}",
                f"DROP ROLE IF EXISTS {PLANTER}",
            )
        )


def test_check_fails_for_a_superuser_server_role(
    pg_env: PgEnvironment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offline = ("127.0.0.1", free_port())
    path = write_configs(tmp_path, pg_env, extra_shards={"shard_gone": offline}, extra=_router_yaml_extra(pg_env))
    text = path.read_text().replace(f"user: {pg_env.ROUTER_ROLE}", f"user: {pg_env.SUPERUSER}")
    path.write_text(text.replace(f"password: {pg_env.ROUTER_PASSWORD}", f"password: {pg_env.SUPERUSER_PASSWORD}"))
    code = main(["--config", str(path), "check"])
    out, err = capsys.readouterr()
    assert code == 2
    assert f"{path}: ok" in out
    problems = [line for line in err.splitlines() if "is a superuser" in line]
    assert [line.split("shard ", 1)[1].split()[0] for line in problems] == list(pg_env.shards), err
    assert all("is a superuser: row-level security does not apply to it" in line for line in problems)
    # An unreachable shard is a warning only.
    assert f"warning: shard shard_gone (127.0.0.1:{offline[1]}/app): could not connect" in err


def test_check_warns_about_an_unreachable_shard_only(
    pg_env: PgEnvironment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_configs(tmp_path, pg_env, extra_shards={"shard_gone": ("127.0.0.1", free_port())})
    code = main(["--config", str(path), "check"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "shard shard_gone" in err and "could not connect as tenant_router" in err
    assert "shard shard_gone" not in out


# --- tenants with their own role -----------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def catalog(config: RouterConfig) -> None:
    await init_catalog(config)


async def _as_tenant(env: PgEnvironment, shard: str, tenant: str, dbname: str | None = None) -> Any:
    password = tenant_role_password(SECRET, tenant)
    return await asyncpg.connect(env.shard_dsn(shard, tenant_role(tenant), password, dbname or env.SHARD_DB))


async def test_schema_tenants_get_their_own_role_and_nothing_else(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, catalog: None, protected: list[str]
) -> None:
    first, second = _id("sch"), _id("sch")
    try:
        for tenant in (first, second):
            await add_tenant(config, topology, tenant, "schema", shard="shard_a")
        admin = await _superuser(pg_env, "shard_a")
        try:
            row = await admin.fetchrow(
                "SELECT r.rolcanlogin, r.rolinherit, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolbypassrls,"
                " (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid OR m.roleid = r.oid) AS memberships,"
                " (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $2) AS schema_owner,"
                " (SELECT array_agg(DISTINCT a.grantee) FROM pg_namespace n, aclexplode(n.nspacl) AS a"
                "  WHERE n.nspname = $2) AS grantees,"
                " (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass($3)) AS notes_owner,"
                " r.oid AS role_oid FROM pg_roles r WHERE r.rolname = $1",
                tenant_role(first),
                schema_name(first),
                f"{quote_ident(schema_name(first))}.notes",
            )
        finally:
            await admin.close()
        role_oid = row["role_oid"]
        assert (row["rolcanlogin"], row["rolinherit"]) == (True, False)
        assert not any(row[k] for k in ("rolsuper", "rolcreatedb", "rolcreaterole", "rolbypassrls", "memberships"))
        assert row["schema_owner"] == tenant_role(first)
        assert row["grantees"] == [role_oid]  # no grant to PUBLIC (0) or anyone else
        assert row["notes_owner"] == tenant_role(first)  # schema_sql (a file) ran as the tenant's role

        conn = await _as_tenant(pg_env, "shard_a", first)  # the derived password logs in
        try:
            await conn.execute(f"SET search_path = {quote_ident(schema_name(first))}")
            await conn.execute("INSERT INTO notes (body) VALUES ('mine')")
            assert await conn.fetchval("SELECT count(*) FROM notes") == 1
            for sql in (
                f"SELECT * FROM {quote_ident(schema_name(second))}.notes",
                f"SELECT * FROM public.{TABLE}",
                "SELECT * FROM router.context_key",
                f"SET ROLE {quote_ident(tenant_role(second))}",
                f"SET ROLE {pg_env.ROUTER_ROLE}",
                f"CREATE TABLE public.{_id('planted').replace('-', '_')} (id int)",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
            # A schema without USAGE is skipped in search_path: the other tenant's table is not found.
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.execute(f"SET search_path = {quote_ident(schema_name(second))}; SELECT * FROM notes")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no tenant context"):
                await conn.fetchval("SELECT router.current_tenant()")
        finally:
            await conn.close()
        router = await _router(pg_env, "shard_a", TENANT_A)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await router.fetch(f"SELECT * FROM {quote_ident(schema_name(first))}.notes")
        finally:
            await router.close()

        await remove_tenant(config, topology, first, drop_data=True)  # the role goes with the schema
        assert await _leftovers(pg_env, "shard_a", first) == (0, 0, 0)
        assert await _leftovers(pg_env, "shard_a", second) == (1, 1, 0)
    finally:
        await _remove_quietly(config, topology, first, second)


async def test_database_tenant_gets_a_database_only_its_role_reaches(
    pg_env: PgEnvironment, config_dir: Path, topology: Topology, catalog: None
) -> None:
    config, _ = load(write_configs(config_dir / "folder", pg_env, extra=_router_yaml_extra(pg_env)))
    schema_sql = str(config_dir / "migrations")  # a folder: 001_table.sql, then 002_rows.sql
    config = dataclasses.replace(config, tenant=dataclasses.replace(config.tenant, schema_sql=schema_sql))
    tenant, other = _id("db"), _id("db")
    database = database_name(tenant)
    try:
        view = await add_tenant(config, topology, tenant, "database")
        conn = await _as_tenant(pg_env, view.shard, tenant, database)
        try:
            assert await conn.fetchval("SELECT string_agg(body, ',') FROM notes") == "from 002"
            owner = await conn.fetchval("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'")
            assert owner == tenant_role(tenant)
        finally:
            await conn.close()
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="CONNECT"):
            await asyncpg.connect(pg_env.shard_dsn(view.shard, dbname=database))
        await add_tenant(config, topology, other, "database", shard=view.shard)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="CONNECT"):
            await _as_tenant(pg_env, view.shard, other, database)

        assert await _leftovers(pg_env, view.shard, tenant) == (1, 0, 1)
        await remove_tenant(config, topology, tenant, drop_data=True)  # the role goes with the database
        assert await _leftovers(pg_env, view.shard, tenant) == (0, 0, 0)
    finally:
        await _remove_quietly(config, topology, tenant, other)


async def test_failed_schema_sql_leaves_nothing_behind(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, catalog: None, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.sql"
    broken.write_text("CREATE TABLE fine (id int);\nCREATE TABLE broken (id no_such_type);\n")
    bad = dataclasses.replace(config, tenant=dataclasses.replace(config.tenant, schema_sql=str(broken)))
    tenant = _id("bad")
    for isolation in ("schema", "database"):
        with pytest.raises(ProvisioningFailed, match=r"broken\.sql") as info:
            await add_tenant(bad, topology, tenant, isolation, shard="shard_b")  # type: ignore[arg-type]
        assert "no_such_type" in str(info.value) and "not added" in str(info.value)
        admin = await _superuser(pg_env, "shard_b")
        try:
            assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", tenant_role(tenant)) == 0
            assert (
                await admin.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema_name(tenant)) == 0
            )
            assert (
                await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", database_name(tenant)) == 0
            )
        finally:
            await admin.close()


async def test_provisioning_refusals(config: RouterConfig, topology: Topology, catalog: None) -> None:
    with pytest.raises(AdminRequired, match="admin"):
        await add_tenant(dataclasses.replace(config, admin=None), topology, _id("noadmin"), "schema")
    # tenant_router_rls is the owner of the key: no tenant may become it.
    with pytest.raises(UnsafeLayout, match="tenant_router_rls"):
        await add_tenant(config, topology, "router_rls", "schema")
    with pytest.raises(UnsafeLayout, match="'tenant_router'"):
        await add_tenant(config, topology, "router", "database")  # the router's own role
    missing = dataclasses.replace(config, tenant=dataclasses.replace(config.tenant, schema_sql="nowhere.sql"))
    with pytest.raises(ProvisioningError, match=r"nowhere\.sql does not exist"):
        await add_tenant(missing, topology, _id("nofile"), "schema")
    # Shared tenants need nothing on the shard, hence no admin either.
    shared = _id("shared")
    try:
        await add_tenant(dataclasses.replace(config, admin=None), topology, shared, "shared")
    finally:
        await _remove_quietly(config, topology, shared)


async def test_a_role_provisioning_did_not_make_is_neither_taken_nor_dropped(
    pg_env: PgEnvironment, config: RouterConfig, topology: Topology, catalog: None
) -> None:
    tenant = _id("squat")
    role = quote_ident(tenant_role(tenant))
    admin = await _superuser(pg_env, "shard_a")
    try:
        await admin.execute(f"CREATE ROLE {role} NOLOGIN")
        with pytest.raises(ProvisioningFailed, match="not a plain tenant role: NOLOGIN"):
            await add_tenant(config, topology, tenant, "schema", shard="shard_a")
        assert await _leftovers(pg_env, "shard_a", tenant) == (1, 0, 0)
        # Without a context secret no tenant role is made, and removing the tenant keeps the role.
        # (The legacy layout on purpose: it is what this part is about. The admin creates the
        # schema, for the router's role, which cannot create schemas.)
        legacy = dataclasses.replace(
            config, tenant=dataclasses.replace(config.tenant, context_secret=None, schema_sql=None)
        )
        await add_tenant(legacy, topology, tenant, "schema", shard="shard_a")
        assert await _leftovers(pg_env, "shard_a", tenant) == (1, 1, 0)
        await remove_tenant(legacy, topology, tenant, drop_data=True)
        assert await _leftovers(pg_env, "shard_a", tenant) == (1, 0, 0)
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def _remove_quietly(config: RouterConfig, topology: Topology, *tenants: str) -> None:
    for tenant in tenants:
        if not tenant:
            continue
        with contextlib.suppress(UnknownTenant):  # already removed by the test itself
            await remove_tenant(config, topology, tenant, drop_data=True)


async def _leftovers(env: PgEnvironment, shard: str, tenant: str) -> tuple[int, int, int]:
    """How many roles, schemas and databases of `tenant` exist on `shard`."""
    admin = await _superuser(env, shard)
    try:
        row = await admin.fetchrow(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1),"
            " (SELECT count(*) FROM pg_namespace WHERE nspname = $2),"
            " (SELECT count(*) FROM pg_database WHERE datname = $3)",
            tenant_role(tenant),
            schema_name(tenant),
            database_name(tenant),
        )
    finally:
        await admin.close()
    return tuple(row)


# --- the unsigned mode ---------------------------------------------------------------------------


def test_serve_warns_at_start_when_shared_tenants_run_unsigned(
    deployment: Deployment, make_router: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="router.app")
    make_router()  # the default, hardened: nothing to warn about
    assert not [r for r in caplog.records if "UNSAFE" in r.getMessage()]
    # legacy_unsigned=True: the unsafe mode is what this test is about.
    make_router(legacy_unsigned=True)
    warnings = [r for r in caplog.records if "UNSAFE" in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    # The session's shared tenants at least (other modules may have added more to the catalog).
    message = warnings[0].getMessage()
    counted = re.search(r"(\d+) shared tenant\(s\) in the catalog get an unsigned app\.tenant_id", message)
    assert counted is not None, message
    assert int(counted[1]) >= sum(isolation == "shared" for _tenant, isolation, _shard in TENANTS)
