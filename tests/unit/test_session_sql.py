"""The router's own session SQL: exact strings, quoting, and nothing sent when nothing differs."""

from __future__ import annotations

import pglast

from router.admin.rls import CARRIER
from router.sql.session_sql import SESSION_SETTINGS_SQL, raise_sql, session_sync_sql, settings_in_force_sql


def test_nothing_to_do_gives_no_statement() -> None:
    assert session_sync_sql({"a.b": "1"}, {"a.b": "1"}) is None


def test_changes_use_set_config_and_resets_use_reset() -> None:
    sql = session_sync_sql({"search_path": "x", "gone": "1"}, {"search_path": '"$user", public', "app.t": "it's"})
    assert sql == (
        "SELECT set_config('search_path', '\"$user\", public', false), set_config('app.t', 'it''s', false); RESET gone"
    )


def test_only_resets() -> None:
    assert session_sync_sql({"work_mem": "8MB"}, {}) == "RESET work_mem"


def test_settings_in_force_names_placeholders_only() -> None:
    sql = settings_in_force_sql(["work_mem", "myapp.b", "myapp.a", "myapp.a"])
    assert sql == (
        "SELECT name, current_setting(name) FROM pg_settings WHERE source = 'session'"
        " AND name <> 'backtrace_functions'"
        " UNION ALL SELECT n, current_setting(n, true) FROM unnest(ARRAY['myapp.a', 'myapp.b']::text[]) AS n"
    )
    assert "work_mem" not in sql
    assert settings_in_force_sql(["work_mem"]) == SESSION_SETTINGS_SQL


def test_the_carrier_of_the_entered_tenant_is_never_read_back() -> None:
    """The entered tenant's setting is the router's to write (router/admin/rls.py): read back as a
    client's setting it would travel with the client and be applied with set_config, which the
    router's role may not do (and must not, as another tenant's connection)."""
    assert CARRIER == "backtrace_functions"
    assert SESSION_SETTINGS_SQL == (
        "SELECT name, current_setting(name) FROM pg_settings WHERE source = 'session' AND name <> 'backtrace_functions'"
    )
    pglast.parse_sql(SESSION_SETTINGS_SQL)
    # Not even when a client is known to have named it: only placeholders are named explicitly.
    for known in ([CARRIER], [CARRIER, "myapp.a"], ["BACKTRACE_FUNCTIONS"]):
        sql = settings_in_force_sql(known)
        assert sql.count(CARRIER) == 1 and sql.lower().count(CARRIER) == 1, sql
        pglast.parse_sql(sql)


def test_raise_sql_quotes_the_message() -> None:
    assert raise_sql("25001", "can't") == (
        "DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '25001', MESSAGE = 'can''t'; END$$"
    )


def test_bind_and_execute_messages() -> None:
    from router.protocol.pg import frontend as fe

    assert (
        fe.bind("", "s", ("ab", ""))
        == b"B\x00\x00\x00\x17\x00s\x00\x00\x00\x00\x02\x00\x00\x00\x02ab\x00\x00\x00\x00\x00\x00"
    )
    assert fe.execute("") == b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
