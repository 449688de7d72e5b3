"""classify(): the session-level effects of SQL text, one table row per case, plus the prefilter,
the cache, value round trips and never raising on arbitrary text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from router.sql.analysis import analysis_stats, judge
from router.sql.statements import (
    ADVISORY_LOCK,
    EMPTY,
    HOLD_CURSOR,
    LISTEN,
    PIN_KINDS,
    PREPARE,
    TEMP_TABLE,
    Effects,
    SettingChange,
    classify,
)


def change(name: str, value: str | None, local: bool = False) -> Effects:
    return Effects(settings=(SettingChange(name, value, local),))


def pin(*kinds: str) -> Effects:
    return Effects(pins=frozenset(kinds))


def unpin(*kinds: str) -> Effects:
    return Effects(unpins=frozenset(kinds))


UNPARSED = Effects(unparsed=True)
AUTHORIZATION = Effects(session_authorization=True)
TENANT = Effects(tenant_statement=True)
ROLE = Effects(role_change=True)
LARGE = Effects(large_objects=True)

CASES: list[tuple[str, Effects]] = [
    # --- nothing to do -------------------------------------------------------------------------
    ("SELECT * FROM orders WHERE id = $1", EMPTY),
    ("INSERT INTO orders (id, total) VALUES ($1, $2)", EMPTY),
    ("UPDATE orders SET total = $1 WHERE id = $2", EMPTY),  # SET is UPDATE's keyword: parsed, then EMPTY
    ("DELETE FROM orders WHERE id = 1", EMPTY),
    ("", EMPTY),
    ("-- only a comment about SET", EMPTY),
    ("SELECT 'SET search_path TO x', 'LISTEN a' AS \"DISCARD ALL\"", EMPTY),  # words inside strings
    ("SHOW search_path", EMPTY),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", EMPTY),  # transaction-local
    ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", EMPTY),
    ("PREPARE TRANSACTION 'gid'", EMPTY),
    ("ALTER DATABASE app SET search_path = tenant_a", EMPTY),  # a SET inside DDL is no SET
    ("ALTER DATABASE app RESET ALL", EMPTY),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x AS 'SELECT 1'", EMPTY),
    ("DO $$BEGIN PERFORM set_config('a.b', 'c', false); END$$", EMPTY),  # bodies are invisible
    # --- SET / RESET ---------------------------------------------------------------------------
    ('SET search_path TO a, "B c"', change("search_path", 'a, "B c"')),
    ("SET search_path = 'a, b'", change("search_path", "'a, b'")),  # one literal stays one literal
    ("SET search_path = DEFAULT", change("search_path", None)),
    ('SET search_path TO "$user", public', change("search_path", '"$user", public')),
    ("SET SCHEMA 'tenant_a'", change("search_path", "'tenant_a'")),
    ("SET TIME ZONE 'UTC'", change("timezone", "'UTC'")),
    ("SET TIME ZONE LOCAL", change("timezone", None)),
    ("SET TIME ZONE -7", change("timezone", "-7")),
    ("SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE", UNPARSED),  # the server normalises it
    ("SET NAMES 'utf8'", change("client_encoding", "'utf8'")),
    ("SET statement_timeout = 5000", change("statement_timeout", "5000")),
    ("SET extra_float_digits TO -1.5e0", change("extra_float_digits", "-1.5e0")),  # numbers as written
    ("SET enable_seqscan = off", change("enable_seqscan", "off")),
    ("SET enable_seqscan = on", change("enable_seqscan", "on")),
    ("SET application_name = 'it''s'", change("application_name", "'it''s'")),
    ("SET application_name = E'a\\\\b'", change("application_name", "E'a\\\\b'")),
    ("SET application_name = ''", change("application_name", "''")),
    ("SET application_name = $$dollar$$", change("application_name", "'dollar'")),
    ('SET application_name = "default"', change("application_name", '"default"')),  # not DEFAULT
    ("SET LOCAL statement_timeout = 0", change("statement_timeout", "0", local=True)),
    ("SET SESSION statement_timeout = 0", change("statement_timeout", "0")),
    ("SET app.tenant_id = '42'", change("app.tenant_id", "'42'")),
    ('SET "App"."Tenant_Id" = 42', change("app.tenant_id", "42")),  # names are case-insensitive
    ("RESET statement_timeout", change("statement_timeout", None)),
    ("RESET ALL", Effects(reset_all=True)),
    ("SET work_mem FROM CURRENT", UNPARSED),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY, NOT DEFERRABLE",
        Effects(
            settings=(
                SettingChange("default_transaction_isolation", "'read committed'", False),
                SettingChange("default_transaction_read_only", "on", False),
                SettingChange("default_transaction_deferrable", "off", False),
            )
        ),
    ),
    # --- comments, spacing, letter case, quoting --------------------------------------------------
    ("/* why */  SeT\n\tSearch_Path\n=\n'x'   -- trailing\n", change("search_path", "'x'")),
    ("set local TIME zone 'Europe/Paris';", change("timezone", "'Europe/Paris'", local=True)),
    ('SET "search_path" TO "My Schema", "x""y"', change("search_path", '"My Schema", "x""y"')),
    # --- set_config ----------------------------------------------------------------------------
    ("SELECT set_config('app.tenant_id', '42', false)", change("app.tenant_id", "'42'")),
    ("select SET_CONFIG('App.Tenant_Id', '42', true)", change("app.tenant_id", "'42'", local=True)),
    (
        "SELECT set_config('a.b', 'c', 'on'), set_config('a.b', NULL, NULL)",
        Effects(settings=(SettingChange("a.b", "'c'", True), SettingChange("a.b", None, False))),
    ),
    ("SELECT set_config('a.b', 'c'::text, 'yes'::boolean)", change("a.b", "'c'", local=True)),
    ("SELECT pg_catalog.set_config('search_path', '', false);", change("search_path", "''")),  # pg_dump
    (
        "SELECT set_config('search_path', 'Tenant_A, \"B c\", $user', false)",
        change("search_path", 'tenant_a, "B c", "$user"'),
    ),
    ("SELECT set_config('search_path', 'a,', false)", UNPARSED),  # the server rejects the list
    ("SELECT set_config('app.tenant_id', $1, false)", UNPARSED),
    ("SELECT set_config($1, '42', false)", UNPARSED),
    ("SELECT set_config('a.b', 'c', $1)", UNPARSED),
    ("SELECT set_config('a.b', 'c', false) FROM tenants", UNPARSED),  # runs once per row, maybe never
    ("SELECT CASE WHEN $1 THEN set_config('a.b', 'c', false) END", UNPARSED),
    ("SELECT set_config('router.tenant', 'acme', false)", UNPARSED),
    ("SELECT set_config('role', 'admin', false)", AUTHORIZATION),
    ("SELECT myschema.set_config('a', 'b', false)", EMPTY),  # not the built-in
    # --- advisory locks ------------------------------------------------------------------------
    ("SELECT pg_advisory_lock(1)", pin(ADVISORY_LOCK)),
    ("SELECT pg_catalog.pg_advisory_lock_shared(1, 2)", pin(ADVISORY_LOCK)),
    ("SELECT pg_try_advisory_lock(id) FROM jobs WHERE id = 3", pin(ADVISORY_LOCK)),
    ("SELECT 1 WHERE pg_try_advisory_lock_shared(7)", pin(ADVISORY_LOCK)),
    ('SELECT U&"pg_\\0061dvisory_lock"(1)', pin(ADVISORY_LOCK)),  # the name in Unicode escapes
    ("SELECT pg_advisory_xact_lock(1)", EMPTY),  # transaction-scoped
    ("SELECT pg_advisory_unlock(1)", EMPTY),  # the router cannot count
    ("SELECT pg_advisory_unlock_all()", unpin(ADVISORY_LOCK)),
    ("SELECT pg_advisory_lock(1); SELECT pg_advisory_unlock_all()", unpin(ADVISORY_LOCK)),
    ("SELECT pg_advisory_unlock_all(), pg_advisory_lock(1)", pin(ADVISORY_LOCK)),
    # --- LISTEN --------------------------------------------------------------------------------
    ("LISTEN jobs", pin(LISTEN)),
    ("UNLISTEN jobs", EMPTY),
    ("UNLISTEN *", unpin(LISTEN)),
    ("NOTIFY jobs", EMPTY),
    ("LISTEN a; UNLISTEN *", unpin(LISTEN)),
    ("UNLISTEN *; LISTEN a", pin(LISTEN)),
    # --- temporary objects ---------------------------------------------------------------------
    ("CREATE TEMP TABLE t (a int)", pin(TEMP_TABLE)),
    ("create temporary table if not exists t (a int) on commit delete rows", pin(TEMP_TABLE)),
    ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", EMPTY),
    ("CREATE TABLE pg_temp.t (a int)", pin(TEMP_TABLE)),
    ("CREATE TEMP VIEW v AS SELECT 1", pin(TEMP_TABLE)),
    ("CREATE TEMP SEQUENCE s", pin(TEMP_TABLE)),
    ("CREATE TEMP TABLE t AS SELECT 1", pin(TEMP_TABLE)),
    ("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", EMPTY),
    ("SELECT 1 AS a INTO TEMP t", pin(TEMP_TABLE)),
    ("SELECT 1 AS a INTO TEMPORARY TABLE t UNION SELECT 2", pin(TEMP_TABLE)),
    ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", pin(TEMP_TABLE)),
    ("CREATE TABLE attempts (a int)", EMPTY),
    # --- prepared statements and cursors -------------------------------------------------------
    ("PREPARE p (int) AS SELECT $1", pin(PREPARE)),
    ("DEALLOCATE p", EMPTY),
    ("DEALLOCATE ALL", unpin(PREPARE)),
    ("DEALLOCATE PREPARE ALL", unpin(PREPARE)),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", pin(HOLD_CURSOR)),
    ("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", EMPTY),
    ("CLOSE c", EMPTY),
    ("CLOSE ALL", unpin(HOLD_CURSOR)),
    # --- DISCARD -------------------------------------------------------------------------------
    ("DISCARD ALL", Effects(reset_all=True, discard_all=True, unpins=PIN_KINDS)),
    ("DISCARD TEMP", unpin(TEMP_TABLE)),
    ("DISCARD TEMPORARY", unpin(TEMP_TABLE)),
    ("DISCARD PLANS", EMPTY),
    ("DISCARD SEQUENCES", EMPTY),
    (
        "LISTEN a; DISCARD ALL; PREPARE p AS SELECT 1",
        Effects(reset_all=True, discard_all=True, pins=frozenset({PREPARE}), unpins=PIN_KINDS - {PREPARE}),
    ),
    # --- roles and authorization ---------------------------------------------------------------
    ("SET SESSION AUTHORIZATION 'joe'", AUTHORIZATION),
    ("SET SESSION AUTHORIZATION DEFAULT", AUTHORIZATION),
    ("RESET SESSION AUTHORIZATION", AUTHORIZATION),
    ("SET ROLE admin", AUTHORIZATION),
    ("SET LOCAL ROLE NONE", AUTHORIZATION),
    ("RESET ROLE", AUTHORIZATION),
    # --- router.tenant -------------------------------------------------------------------------
    ("SET router.tenant = 'acme'", TENANT),
    ("set Router.Tenant to acme", TENANT),
    ("RESET router.tenant", TENANT),
    ("SHOW router.tenant", TENANT),
    (
        "SET router.tenant = 'acme'; SET statement_timeout = 0",
        Effects(settings=(SettingChange("statement_timeout", "0", False),), tenant_statement=True),
    ),
    # --- databases that DDL needs free of connections -------------------------------------------
    ("DROP DATABASE tenant_a", Effects(database_ddl=("tenant_a",))),
    ('DROP DATABASE IF EXISTS "Tenant B" WITH (FORCE)', Effects(database_ddl=("Tenant B",))),
    ("ALTER DATABASE old_name RENAME TO new_name", Effects(database_ddl=("old_name",))),
    ("CREATE DATABASE copy TEMPLATE tenant_template", Effects(database_ddl=("tenant_template",))),
    ("CREATE DATABASE fresh", EMPTY),
    ("ALTER DATABASE app SET TABLESPACE fast", Effects(database_ddl=("app",))),
    ("SELECT current_database()", EMPTY),
    # --- several statements: effects in order ----------------------------------------------------
    (
        "SET a.x = 1; SET a.x = 2",
        Effects(settings=(SettingChange("a.x", "1", False), SettingChange("a.x", "2", False))),
    ),
    ("SET a.x = 1; RESET ALL; SET a.y = 2", Effects(settings=(SettingChange("a.y", "2", False),), reset_all=True)),
    (
        "BEGIN; SET LOCAL a.x = 1; LISTEN c; COMMIT",
        Effects(settings=(SettingChange("a.x", "1", True),), pins=frozenset({LISTEN})),
    ),
    # --- statements on roles: refused (a role's password and defaults decide later logins) ----------
    ("ALTER ROLE app SET statement_timeout = 0", ROLE),  # a SET inside ALTER ROLE is no SET
    ("ALTER ROLE CURRENT_USER PASSWORD 'x'", ROLE),
    ("alter user current_user with password 'x' valid until 'infinity'", ROLE),
    ("ALTER ROLE CURRENT_USER IN DATABASE app RESET ALL", ROLE),
    ("ALTER USER app RENAME TO other", ROLE),
    ("ALTER GROUP g ADD USER u", ROLE),
    ("CREATE ROLE r LOGIN", ROLE),
    ("CREATE USER u", ROLE),
    ("CREATE GROUP g", ROLE),
    ("DROP ROLE IF EXISTS r", ROLE),
    ("DROP USER u", ROLE),
    ("GRANT admins TO CURRENT_USER", ROLE),
    ("REVOKE admins FROM app", ROLE),
    ("SELECT 1; ALTER ROLE CURRENT_USER SET search_path = x", ROLE),
    ("DO $$BEGIN EXECUTE 'ALTER ROLE app PASSWORD ''x'''; END$$", EMPTY),  # hidden: the server side holds
    ("SELECT user_id, role FROM users GROUP BY user_id, role", EMPTY),
    ("GRANT SELECT ON orders TO app", EMPTY),  # privileges on objects, not on roles
    # --- large objects: refused to shared tenants (no row-level security, owned by the shared role) --
    ("SELECT lo_create(0)", LARGE),
    ("SELECT pg_catalog.lo_from_bytea(0, 'x')", LARGE),
    ("SELECT loread(lo_open($1, 262144), 8192)", LARGE),
    ("SELECT lowrite(0, 'x')", LARGE),
    ("SELECT id FROM docs WHERE blob IN (SELECT lo_unlink(oid) FROM t)", LARGE),
    ('SELECT U&"lo\\005fget"(1)', LARGE),
    ("SELECT * FROM pg_largeobject_metadata", LARGE),
    ("TABLE pg_catalog.pg_largeobject", LARGE),
    ("COPY pg_largeobject_metadata TO STDOUT", LARGE),
    ("ALTER LARGE OBJECT 1 OWNER TO app", LARGE),
    ("GRANT SELECT ON LARGE OBJECT 1 TO PUBLIC", LARGE),
    ("COMMENT ON LARGE OBJECT 1 IS 'x'", LARGE),
    ("SELECT hello_world(), solo_flag FROM large_things", EMPTY),
    ("SELECT app.lo_create(1)", EMPTY),  # a function of the application's own, not the built-in
    # --- what the parser rejects ------------------------------------------------------------------
    ("SET search_path TO", UNPARSED),
    ("SELEC set_config('a', 'b', false)", UNPARSED),
    ("SET x = 1; this is not SQL", UNPARSED),
]


pytestmark = pytest.mark.usefixtures("fresh_analysis")


@pytest.fixture
def parser_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(sql: str) -> str:
        raise AssertionError(f"parsed {sql!r}")

    monkeypatch.setattr(pg_parser, "parse_sql_json", refuse)


@pytest.mark.parametrize(("sql", "expected"), CASES, ids=[sql[:60] for sql, _ in CASES])
def test_classify(sql: str, expected: Effects) -> None:
    assert classify(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM orders WHERE id = $1",
        "INSERT INTO orders (id, total) VALUES ($1, $2)",
        "DELETE FROM orders WHERE id = 1",
        "CREATE TABLE attempts (a int)",
        "SELECT * FROM assets ORDER BY id LIMIT 10 OFFSET 20",  # trigger word, but not as a token
        "SELECT closed_at, dataset, attempts FROM settings",
        "SELECT user_id, users.group_id FROM users GROUP BY user_id, users.group_id",  # names, GROUP BY
        "SELECT current_user, role_name FROM roles_granted",
    ],
)
@pytest.mark.usefixtures("parser_forbidden")
def test_prefilter_returns_empty_without_parsing(sql: str) -> None:
    assert classify(sql) is EMPTY


@pytest.mark.parametrize(("sql", "expected"), [case for case in CASES if case[1].settings], ids=str)
def test_values_are_sql_that_reapplies_the_same_setting(sql: str, expected: Effects) -> None:
    for setting in expected.settings:
        again = classify(setting.as_sql())
        assert again.settings == (setting,), setting.as_sql()


def test_as_sql_quotes_names_and_spells_defaults() -> None:
    assert SettingChange("search_path", 'a, "B c"', False).as_sql() == 'SET search_path TO a, "B c"'
    assert SettingChange("app.select", "'x'", True).as_sql() == "SET LOCAL app.\"select\" TO 'x'"
    assert SettingChange("timezone", None, False).as_sql() == "SET timezone TO DEFAULT"


def test_empty() -> None:
    assert EMPTY.empty
    assert Effects().empty
    assert not Effects(unparsed=True).empty
    assert not unpin(LISTEN).empty
    assert not Effects(database_ddl=("x",)).empty


def test_cache_returns_the_same_object_and_parses_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    parse = pg_parser.parse_sql_json

    def counting(sql: str) -> str:
        calls.append(sql)
        return parse(sql)

    monkeypatch.setattr(pg_parser, "parse_sql_json", counting)
    sql = "SET search_path TO tenant_a, public"
    first = classify(sql)
    assert classify(sql) is first
    assert classify("UPDATE t SET a = 1") is EMPTY  # empty results are the shared EMPTY
    assert classify("UPDATE t SET a = 1") is EMPTY
    assert calls == [sql, "UPDATE t SET a = 1"]


def test_long_texts_are_classified_but_not_cached() -> None:
    sql = "SET application_name = '" + "x" * 10_000 + "'"
    assert classify(sql).settings[0].name == "application_name"
    assert analysis_stats()["entries"] == 0


# --- properties ------------------------------------------------------------------------------------

# Fragments that make parseable statements with and without effects, so that random joins reach the
# parser and the handlers, not only the syntax-error path.
FRAGMENTS = [
    "SET",
    "set",
    "RESET",
    "LOCAL",
    "SESSION",
    "search_path",
    "router.tenant",
    "TO",
    "=",
    "DEFAULT",
    "ALL",
    "'x'",
    '"Y z"',
    "1",
    "-2.5",
    ",",
    ";",
    "(",
    ")",
    "SELECT",
    "FROM",
    "t",
    "WHERE",
    "set_config",
    "'a.b'",
    "true",
    "$1",
    "pg_advisory_lock",
    "LISTEN",
    "UNLISTEN",
    "*",
    "CREATE",
    "TEMP",
    "TABLE",
    "AS",
    "DISCARD",
    "PREPARE",
    "DEALLOCATE",
    "DECLARE",
    "CURSOR",
    "WITH",
    "HOLD",
    "FOR",
    "CLOSE",
    "DROP",
    "DATABASE",
    "OFFSET",
    "settings",
    "attempt",
    'U&"\\0061"',
    "/* c */",
    "-- c\n",
    "\n",
    "SHOW",
    "ROLE",
    "INTO",
    "ALTER",
    "USER",
    "CURRENT_USER",
    "GROUP",
    "BY",
    "GRANT",
    "REVOKE",
    "TO",
    "PASSWORD 'x'",
    "lo_create(0)",
    "pg_largeobject_metadata",
    "LARGE",
    "OBJECT",
    "1",
]
SQLISH = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), SQLISH))
def test_classify_never_raises(sql: str) -> None:
    assert isinstance(classify(sql), Effects)


@settings(max_examples=300, deadline=None)
@given(SQLISH)
def test_prefilter_has_no_false_negatives(sql: str) -> None:
    """Whatever the parse tree says a text does, the prefiltered path says too (unparseable texts
    aside: the server rejects them as well)."""
    full = judge(sql).effects
    if not full.unparsed:
        assert classify(sql) == full
