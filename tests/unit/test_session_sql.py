"""The router's own session SQL: exact strings, quoting, and nothing sent when nothing differs."""

from __future__ import annotations

from router.net.session_sql import raise_sql, session_sync_sql, settings_in_force_sql


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
    assert sql.endswith("FROM unnest(ARRAY['myapp.a', 'myapp.b']::text[]) AS n")
    assert "work_mem" not in sql
    assert settings_in_force_sql(["work_mem"]) == (
        "SELECT name, current_setting(name) FROM pg_settings WHERE source = 'session'"
    )


def test_raise_sql_quotes_the_message() -> None:
    assert raise_sql("25001", "can't") == (
        "DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '25001', MESSAGE = 'can''t'; END$$"
    )


def test_hidden_settings_travel_as_parameters_never_in_statement_text() -> None:
    from router.net.session_sql import session_sync_statements

    applied = {"app.tenant_id": "a", "app.tenant_id_sig": "sig-a", "work_mem": "4MB"}
    desired = {"app.tenant_id": "b", "app.tenant_id_sig": "sig-b"}
    text, parameterized = session_sync_statements(applied, desired, frozenset({"app.tenant_id_sig"}))
    assert text == "RESET work_mem"
    assert parameterized == (
        "SELECT set_config($1, $2, false), set_config($3, $4, false)",
        ("app.tenant_id", "b", "app.tenant_id_sig", "sig-b"),
    )
    # Nothing hidden changes: the plain statement list, as before.
    text, parameterized = session_sync_statements(
        desired, {**desired, "work_mem": "8MB"}, frozenset({"app.tenant_id_sig"})
    )
    assert parameterized is None and text is not None and "sig-b" not in text


def test_bind_and_execute_messages() -> None:
    from router.protocol.pg import frontend as fe

    assert (
        fe.bind("", "s", ("ab", ""))
        == b"B\x00\x00\x00\x17\x00s\x00\x00\x00\x00\x02\x00\x00\x00\x02ab\x00\x00\x00\x00\x00\x00"
    )
    assert fe.execute("") == b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
