"""Transaction pooling without leaks: on a pool of ONE server connection shared by several clients
(so every transaction is a hand-over), each client keeps its own session and sees nothing of the
others'."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest
import sqlalchemy

from router.admin.tenant_admin import add_tenant, remove_tenant
from router.testing.deploy import load, write_configs
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import TENANTS, Deployment, RouterFactory, url


@pytest.fixture
def one_server(make_router: RouterFactory) -> RouterThread:
    return make_router(pool={"size": 1, "wait_timeout": 3.0})


def _value(conn: psycopg.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def _pair(router: RouterThread, tenant: str = "acme") -> tuple[psycopg.Connection, psycopg.Connection]:
    return (
        psycopg.connect(url(router, tenant), autocommit=True),
        psycopg.connect(url(router, tenant), autocommit=True),
    )


def test_one_server_connection_really_is_shared(one_server: RouterThread) -> None:
    a, b = _pair(one_server)
    with a, b:
        assert _value(a, "SELECT pg_backend_pid()") == _value(b, "SELECT pg_backend_pid()")


def test_set_travels_with_its_client_only(one_server: RouterThread) -> None:
    a, b = _pair(one_server)
    with a, b:
        default = _value(b, "SHOW search_path")
        a.execute("SET search_path = pg_catalog, public")
        a.execute("SET statement_timeout = '7s'")
        for _ in range(2):
            assert _value(b, "SHOW search_path") == default
            assert _value(b, "SHOW statement_timeout") == "0"
            assert _value(a, "SHOW search_path") == "pg_catalog, public"
            assert _value(a, "SHOW statement_timeout") == "7s"
        a.execute("RESET statement_timeout")
        assert _value(a, "SHOW statement_timeout") == "0"
        a.execute("SET search_path TO DEFAULT")
        assert _value(a, "SHOW search_path") == default


def test_set_config_travels_and_custom_settings_too(one_server: RouterThread) -> None:
    a, b = _pair(one_server)
    with a, b:
        a.execute("SELECT set_config('myapp.user_id', '42', false)")
        a.execute("SET myapp.locale = 'fr'")
        assert _value(b, "SELECT current_setting('myapp.user_id', true)") in (None, "")
        assert _value(a, "SELECT current_setting('myapp.user_id')") == "42"
        assert _value(a, "SELECT current_setting('myapp.locale')") == "fr"
        assert _value(a, "SELECT current_setting('app.tenant_id')") == "acme"


def test_settings_the_router_cannot_see_do_not_leak(one_server: RouterThread) -> None:
    a, b = _pair(one_server)
    with a, b:
        # Changed inside a function: invisible to any statement parser.
        a.execute("DO $$BEGIN PERFORM set_config('work_mem', '77MB', false); END$$")
        assert _value(a, "SHOW work_mem") == "77MB"  # same connection, same client: still there
        assert _value(b, "SHOW work_mem") != "77MB"


def _handovers_and_wipes(router: RouterThread) -> tuple[int, int]:
    pools = list(router.router.iter_pools())
    return sum(pool.handovers for pool in pools), sum(pool.wipes for pool in pools)


def test_inert_statements_hand_over_without_a_wipe(one_server: RouterThread) -> None:
    """After nothing but inert statements (SELECT, SHOW) the session passes to the other client
    without RESET ALL & co.: only the settings that differ are sent, and each client keeps its own."""
    a = psycopg.connect(url(one_server, "acme"), autocommit=True, application_name="client-a")
    b = psycopg.connect(url(one_server, "acme"), autocommit=True, application_name="client-b")
    with a, b:
        default = _value(b, "SHOW search_path")
        a.execute("SET search_path = pg_catalog, public")  # not inert: the next hand-over wipes
        assert _value(b, "SELECT 1") == 1
        handovers, wipes = _handovers_and_wipes(one_server)
        for _ in range(3):
            assert _value(a, "SHOW application_name") == "client-a"
            assert _value(a, "SHOW search_path") == "pg_catalog, public"
            assert _value(b, "SHOW application_name") == "client-b"
            assert _value(b, "SELECT current_setting('search_path')") == default
        assert _handovers_and_wipes(one_server) == (handovers + 6, wipes)  # two a turn, none wiped


def test_inert_prepared_statements_hand_over_without_a_wipe(one_server: RouterThread) -> None:
    """The extended protocol: the verdict on a Parse follows its statement to the Binds."""
    a = psycopg.connect(url(one_server, "acme"), autocommit=True, prepare_threshold=0)
    b = psycopg.connect(url(one_server, "acme"), autocommit=True, prepare_threshold=0)
    with a, b:
        assert _value(b, "SELECT 1") == 1
        handovers, wipes = _handovers_and_wipes(one_server)
        for i in range(3):
            assert a.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
            assert b.execute("SELECT %s::int * 2", (i,)).fetchone() == (i * 2,)
        assert _handovers_and_wipes(one_server) == (handovers + 6, wipes)
        a.execute("SELECT set_config('myapp.flag', %s, false)", ("on",))
        assert _value(b, "SELECT current_setting('myapp.flag', true)") in (None, "")
        assert _handovers_and_wipes(one_server) == (handovers + 8, wipes + 1)


@pytest.mark.parametrize(
    "hidden",
    [
        "DO $$BEGIN PERFORM set_config('search_path', 'evil', false); END$$",
        "DO $$BEGIN EXECUTE 'CREATE TEMP TABLE handover_leftover (x int)'; END$$",
        "DO $$BEGIN EXECUTE 'LISTEN handover_leftover'; END$$",
    ],
)
def test_state_the_router_cannot_see_is_wiped(one_server: RouterThread, hidden: str) -> None:
    a, b = _pair(one_server)
    with a, b:
        default = _value(b, "SHOW search_path")
        _handovers, wipes = _handovers_and_wipes(one_server)
        a.execute(hidden)
        assert _value(b, "SHOW search_path") == default
        assert _value(b, "SELECT count(*) FROM pg_class WHERE relname = 'handover_leftover'") == 0
        assert _value(b, "SELECT count(*) FROM pg_listening_channels()") == 0
        assert _handovers_and_wipes(one_server)[1] == wipes + 1


def test_a_function_off_the_allowlist_marks_the_session(one_server: RouterThread, deployment: Deployment) -> None:
    """A SELECT is inert only if every function it calls is a built-in without session effects."""
    env = deployment.env
    admin = psycopg.connect(
        env.shard_dsn(deployment.placement["acme"], env.SUPERUSER, env.SUPERUSER_PASSWORD), autocommit=True
    )
    admin.execute(
        "CREATE OR REPLACE FUNCTION public.handover_sneaky() RETURNS int LANGUAGE plpgsql AS"
        " $$BEGIN PERFORM set_config('search_path', 'sneaky', false); RETURN 0; END$$"
    )
    a, b = _pair(one_server)
    try:
        with a, b:
            default = _value(b, "SHOW search_path")
            for call in ("SELECT public.handover_sneaky()", "SELECT 1 + handover_sneaky()"):
                a.execute(call)
                assert _value(b, "SHOW search_path") == default
    finally:
        admin.execute("DROP FUNCTION public.handover_sneaky()")
        admin.close()


def test_set_local_and_rolled_back_set_do_not_persist(one_server: RouterThread) -> None:
    a, b = _pair(one_server)
    with a, b:
        with a.transaction():
            a.execute("SET LOCAL statement_timeout = '3s'")
            assert _value(a, "SHOW statement_timeout") == "3s"
        assert _value(b, "SELECT 1") == 1
        assert _value(a, "SHOW statement_timeout") == "0"
        a.autocommit = False
        a.execute("SET statement_timeout = '9s'")
        a.rollback()
        a.autocommit = True
        assert _value(b, "SELECT 1") == 1
        assert _value(a, "SHOW statement_timeout") == "0"


def test_reset_all_keeps_startup_settings_and_tenant(one_server: RouterThread) -> None:
    a = psycopg.connect(url(one_server, "initech"), autocommit=True, application_name="startup-name")
    b = psycopg.connect(url(one_server, "acme"), autocommit=True)
    with a, b:
        a.execute("SET application_name = 'changed'")
        a.execute("RESET ALL")
        assert _value(b, "SELECT 1") == 1
        assert _value(a, "SHOW application_name") == "startup-name"
        assert _value(a, "SELECT current_setting('app.tenant_id')") == "initech"
        assert _value(a, "SELECT current_schema()") == "tenant_initech"


def test_parameter_status_is_the_servers_truth(one_server: RouterThread) -> None:
    a, b = _pair(one_server)
    with a, b:
        a.execute("SET application_name = 'client-a'")
        assert a.info.parameter_status("application_name") == "client-a"
        b.execute("SET application_name = 'client-b'")
        assert _value(a, "SELECT 1") == 1  # a's next transaction: another hand-over
        assert a.info.parameter_status("application_name") == "client-a"
        assert _value(a, "SHOW application_name") == "client-a"
        a.execute("SET client_encoding = 'utf-8'")
        assert a.info.parameter_status("client_encoding") == "UTF8"


def test_prepared_statements_stay_private_to_their_tenant(one_server: RouterThread, deployment: Deployment) -> None:
    # Another shared tenant on acme's shard, so that one server connection serves both.
    other = next(
        tenant
        for tenant, isolation, _pin in TENANTS
        if tenant != "acme" and isolation == "shared" and deployment.placement[tenant] == deployment.placement["acme"]
    )
    a = psycopg.connect(url(one_server, "acme"), autocommit=True, prepare_threshold=0)
    b = psycopg.connect(url(one_server, other), autocommit=True, prepare_threshold=0)
    with a, b:
        for i in range(3):
            assert a.execute("SELECT %s::int + 100 AS secret_query_of_a", (i,)).fetchone() == (i + 100,)
        # One server connection (pool size 1) serves both tenants, in turn.
        assert _value(a, "SELECT pg_backend_pid()") == _value(b, "SELECT pg_backend_pid()")
        texts = [r[0] for r in b.execute("SELECT statement FROM pg_prepared_statements").fetchall()]
        assert not any("secret_query_of_a" in t for t in texts)
        # And both can use the same driver-chosen names for different statements.
        assert b.execute("SELECT %s::text || '-b'", ("x",)).fetchone() == ("x-b",)
        assert a.execute("SELECT %s::int + 100 AS secret_query_of_a", (5,)).fetchone() == (105,)


def test_prepared_statements_are_shared_by_clients_of_one_tenant(one_server: RouterThread) -> None:
    """Within a tenant, a statement prepared on a server connection stays for the next client
    (prepared once per server, not once per hand-over); clients still name statements their own way."""
    a = psycopg.connect(url(one_server, "acme"), autocommit=True, prepare_threshold=0)
    b = psycopg.connect(url(one_server, "acme"), autocommit=True, prepare_threshold=0)
    with a, b:
        for i in range(3):
            assert a.execute("SELECT %s::int + 100 AS shared_query", (i,)).fetchone() == (i + 100,)
        texts = [r[0] for r in b.execute("SELECT statement FROM pg_prepared_statements").fetchall()]
        assert any("shared_query" in t for t in texts)
        assert b.execute("SELECT %s::int + 100 AS shared_query", (7,)).fetchone() == (107,)
        assert b.execute("SELECT %s::text || '-b'", ("x",)).fetchone() == ("x-b",)
        assert a.execute("SELECT %s::int + 100 AS shared_query", (5,)).fetchone() == (105,)


async def test_asyncpg_clients_with_statement_caches_share_one_server(one_server: RouterThread) -> None:
    conns = [await asyncpg.connect(url(one_server, t)) for t in ("acme", "globex", "acme", "initech")]
    try:
        for i in range(4):
            values = await asyncio.gather(*(c.fetchval("SELECT $1::int * 3", i) for c in conns))
            assert values == [i * 3] * 4
            names = await asyncio.gather(*(c.fetchval("SELECT current_setting('app.tenant_id')") for c in conns))
            assert names == ["acme", "globex", "acme", "initech"]
    finally:
        for conn in conns:
            await conn.close()


def test_sql_prepare_pins_and_is_private(one_server: RouterThread, make_router: RouterFactory) -> None:
    router = make_router(pool={"size": 2})
    a, b = _pair(router)
    with a, b:
        a.execute("PREPARE mine(int) AS SELECT $1 * 2")
        assert _value(a, "EXECUTE mine(21)") == 42
        assert _value(b, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'mine'") == 0
        assert _value(a, "EXECUTE mine(5)") == 10


def test_temp_table_pins_and_is_cleaned_when_the_client_leaves(one_server: RouterThread) -> None:
    a = psycopg.connect(url(one_server, "acme"), autocommit=True)
    a.execute("CREATE TEMP TABLE scratch (x int)")
    a.execute("INSERT INTO scratch VALUES (1)")
    assert _value(a, "SELECT count(*) FROM scratch") == 1
    a.close()  # pinned until now; the one server connection comes back wiped
    with psycopg.connect(url(one_server, "acme"), autocommit=True) as b:
        assert _value(b, "SELECT count(*) FROM pg_class WHERE relname = 'scratch'") == 0


def test_advisory_lock_is_released_when_the_client_leaves(one_server: RouterThread) -> None:
    a = psycopg.connect(url(one_server, "acme"), autocommit=True)
    assert _value(a, "SELECT pg_advisory_lock(4242) IS NOT NULL") is True
    assert _value(a, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242") == 1
    a.close()
    with psycopg.connect(url(one_server, "acme"), autocommit=True) as b:
        assert _value(b, "SELECT pg_try_advisory_lock(4242)") is True
        b.execute("SELECT pg_advisory_unlock_all()")


def test_listen_notify_in_transaction_mode(make_router: RouterFactory) -> None:
    router = make_router(pool={"size": 2})
    listener = psycopg.connect(url(router, "acme"), autocommit=True)
    sender = psycopg.connect(url(router, "acme"), autocommit=True)
    with listener, sender:
        listener.execute("LISTEN jobs")
        sender_pid = _value(sender, "SELECT pg_backend_pid()")
        got: list[psycopg.Notify] = []

        def receive() -> None:
            for notify in listener.notifies(timeout=5, stop_after=1):
                got.append(notify)

        thread = threading.Thread(target=receive)
        thread.start()
        # No need to wait for the receiver: psycopg keeps a notification that arrives before
        # notifies() runs (in the socket or its backlog), so either order delivers it.
        sender.execute("NOTIFY jobs, 'hello'")
        thread.join(10)
        assert [(n.channel, n.payload, n.pid) for n in got] == [("jobs", "hello", sender_pid)]


def test_refused_session_state(make_router: RouterFactory) -> None:
    router = make_router(pool={"size": 1, "refuse": ["listen", "advisory_lock"]})
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="listen"):
            conn.execute("LISTEN nope")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="advisory_lock"):
            conn.execute("SELECT pg_advisory_lock(1)")
        assert _value(conn, "SELECT 1") == 1


def test_set_role_is_refused(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="SET ROLE"):
            conn.execute("SET ROLE postgres")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET SESSION AUTHORIZATION postgres")
        assert _value(conn, "SELECT current_user") == "tenant_router"


def test_drop_database_is_not_blocked_by_idle_pooled_connections(
    make_router: RouterFactory, deployment: Deployment, tmp_path: Path
) -> None:
    # legacy_unsigned=True: only there may a client DROP a tenant's database through the router.
    # Hardened, the database belongs to the tenant's own role, whose sessions are all inside it
    # (and PostgreSQL refuses to drop the database a session is connected to).
    router = make_router(legacy_unsigned=True)
    config, topology = load(write_configs(tmp_path / "legacy", deployment.env, legacy_unsigned=True))
    shard = deployment.placement["acme"]
    asyncio.run(add_tenant(config, topology, "dropme", "database", shard))
    wait_until(lambda: router.router.catalog.get("dropme"), "the router to see tenant dropme", within=5)
    with psycopg.connect(url(router, "dropme"), autocommit=True) as conn:
        assert _value(conn, "SELECT current_database()") == "tenant_dropme"
    # The router now holds an idle pooled connection to tenant_dropme.
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        started = time.monotonic()
        conn.execute("DROP DATABASE tenant_dropme")
        assert time.monotonic() - started < 4
    asyncio.run(remove_tenant(config, topology, "dropme"))


def test_sqlalchemy_search_path_in_a_connect_event(one_server: RouterThread) -> None:
    engine = sqlalchemy.create_engine(
        url(one_server, "acme").replace("postgresql://", "postgresql+psycopg://"), pool_size=3
    )

    @sqlalchemy.event.listens_for(engine, "connect")
    def set_search_path(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("SET search_path TO pg_catalog, public")
        cursor.close()
        dbapi_connection.commit()

    other = psycopg.connect(url(one_server, "acme"), autocommit=True)
    try:
        with engine.connect() as conn:
            for _ in range(3):
                assert conn.execute(sqlalchemy.text("SHOW search_path")).scalar() == "pg_catalog, public"
                conn.commit()
                assert _value(other, "SHOW search_path") != "pg_catalog, public"
    finally:
        other.close()
        engine.dispose()


def test_tracked_handover_undoes_what_the_router_saw(make_router: RouterFactory) -> None:
    """The cheaper `pool.handover: tracked` mode: visible settings still travel and do not leak;
    changes made inside functions are not covered (which is why `exact` is the default)."""
    # legacy_unsigned=True: with a context secret the tracked hand-over is refused (what it does not
    # see, a temporary table say, would reach the next tenant); it exists for the unsigned mode only.
    router = make_router(pool={"size": 1, "handover": "tracked"}, legacy_unsigned=True)
    a, b = _pair(router)
    with a, b:
        default = _value(b, "SHOW search_path")
        a.execute("SET search_path = pg_catalog, public")
        a.execute("SELECT set_config('myapp.flag', 'on', false)")
        for _ in range(2):
            assert _value(b, "SHOW search_path") == default
            assert _value(b, "SELECT current_setting('myapp.flag', true)") in (None, "")
            assert _value(a, "SHOW search_path") == "pg_catalog, public"
            assert _value(a, "SELECT current_setting('myapp.flag')") == "on"
            assert _value(b, "SELECT current_setting('app.tenant_id')") == "acme"


def test_hold_cursor_pins_and_is_gone_for_the_next_client(one_server: RouterThread) -> None:
    a = psycopg.connect(url(one_server, "acme"), autocommit=True)
    a.execute("DECLARE kept CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g")
    assert _value(a, "FETCH 1 FROM kept") == 1
    assert _value(a, "FETCH 1 FROM kept") == 2  # a later transaction, same cursor
    a.close()
    with psycopg.connect(url(one_server, "acme"), autocommit=True) as b:
        assert _value(b, "SELECT count(*) FROM pg_cursors") == 0


def test_listen_is_gone_for_the_next_client(one_server: RouterThread) -> None:
    a = psycopg.connect(url(one_server, "acme"), autocommit=True)
    a.execute("LISTEN private_channel")
    assert _value(a, "SELECT count(*) FROM pg_listening_channels()") == 1
    a.close()
    with psycopg.connect(url(one_server, "acme"), autocommit=True) as b:
        assert _value(b, "SELECT count(*) FROM pg_listening_channels()") == 0
