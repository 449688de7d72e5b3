"""residue and is_inert: one table row per case, the allowlist's hygiene, and the prefilter and the cache (by
exact text and by shape) agreeing with the parser; never raising."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.sql import analysis
from router.sql.analysis import judge
from router.sql.inert_statements import (
    INERT_FUNCTIONS,
    LEAVES_ANYTHING,
    LEAVES_NOTHING,
    LEAVES_SEQUENCES,
    SEQUENCE_FUNCTIONS,
    is_inert,
    residue,
    residue_text,
    trusted_search_path,
)
from router.sql.shapes import LITERAL

INERT: list[str] = [
    "select currval('s'), lastval()",  # reads only what this session's own writes left
    "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
    "select 1",
    "select",
    "values (1), (2)",
    "table t",
    "select 1 union select 2",
    "(select 1) union all (select 2)",
    "with x as (select * from t) select * from x",
    "with d as (delete from t where a = 1 returning *) select * from d",
    "with u as (update t set a = 1 returning *) select count(*) from u",
    "select lower(name), upper(name), length(name), count(*), max(a) from t group by 1, 2, 3",
    "select pg_catalog.lower('A')",
    "select now(), current_timestamp, current_user, current_date, current_schema",
    "select extract(year from now()), substring('abc' from 1 for 2), trim(both from ' a '), position('a' in 'b')",
    "select a at time zone 'utc' from t",
    "select jsonb_build_object('a', 1), to_jsonb(t), json_agg(t.a) from t",
    "select * from generate_series(1, 10)",
    "select unnest(array[1, 2]), array_length(array[1], 1)",
    "select row_number() over (order by a), lag(a) over w from t window w as (order by b)",
    "select coalesce(a, 0), nullif(a, 1), greatest(a, b), a::text, case when a then 1 end from t",
    "select * from t where a in (select a from u) for update",
    "select x from t where a like 'a%' and b similar to 'x'",
    "select t.name from t",  # attribute notation: would need a function of t's row type (the operator's)
    "select 'set_config(1)', 1 as nextval",  # a string and a column alias, no calls
    "SELECT $1::int + 100 AS q",
    "select current_setting('app.tenant_id'), pg_backend_pid(), gen_random_uuid(), random()",
    "update t set a = a + 1 where id = 1",
    "UPDATE t SET a = lower(b) FROM u WHERE t.id = u.id",
    "delete from t where id = 1 returning id",
    "begin",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "start transaction read only",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint s1",
    "release savepoint s1",
    "rollback to savepoint s1",
    "commit and chain",
    "show search_path",
    "SHOW ALL",
    "explain select 1",
    "explain analyze select * from t",
    "explain (analyze, buffers) update t set a = 1",
    "explain delete from t",
    "begin; select 1; commit",
    "select * from public.t join pg_catalog.pg_class c on true, information_schema.tables",
    "select 1::pg_catalog.int4, 1::interval, a operator(pg_catalog.+) b from t order by a using <",
    "update public.t set a = 1",
    "copy t to stdout",
    "copy (select a, lower(b) from t) to stdout with (format csv, header true)",
    "  \n\t select 1  ",
    "/* a comment */ select 1",
]

# Writes rows or advances a sequence: the session's currval()/lastval() may stay behind (a serial
# default calls nextval), which DISCARD SEQUENCES clears; nothing else may.
SEQUENCES: list[str] = [
    "insert into t values (1)",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
    "insert into public.t (a) values (default) returning id",
    "insert into t select * from u",
    "insert into t values (1) on conflict (a) do update set b = excluded.b",
    "merge into t using s on t.id = s.id when matched then delete",
    "merge into t using s on t.id = s.id when not matched then insert values (s.id)",
    "update t set a = default",
    "update t set (a, b) = (default, 1)",
    "with i as (insert into t values (1) returning id) select * from i",
    "explain analyze insert into t values (1)",
    "select nextval('s')",
    "select pg_catalog.nextval('s'), currval('s'), lastval()",
    "select setval('s', 1)",
    "explain select nextval('s')",
    "begin; insert into t values (1); update t set a = 2; commit",
    "copy t from stdin",
    "copy t (a, b) from stdin with (format csv) where a > 1",
    "select 1; insert into t values (1)",
]

NOT_INERT: list[str] = [
    "",
    "   ",
    ";",
    "-- only a comment",
    "select (1",
    "selec 1",
    "DO $$BEGIN PERFORM set_config('search_path', 'evil', false); END$$",
    "do $$ begin end $$",
    "DO $$BEGIN RAISE EXCEPTION 'refused'; END$$",
    "select set_config('search_path', 'x', false)",
    "select pg_catalog.set_config('a.b', 'c', true)",
    "select * from t where set_config('a.b', a, false) is not null",
    "select U&\"set\\005fconfig\"('a.b', 'c', false)",  # the parser decodes the name
    "select \"LOWER\"('a')",  # quoted: another name than lower
    "select 1 into x",
    "select * into temp t2 from t",
    "create table t2 as select 1",
    "create temp table t (a int)",
    "call p()",
    "select setseed(0.5)",
    "select public.lower('a')",
    "select myschema.f()",
    "select pg_temp.f()",
    "select a.b.c()",
    # a schema other than the operator's may be a tenant's, whose views and triggers run its code
    "select * from tenant_c.v",
    "table tenant_c.v",
    "select * from t join tenant_c.u on true",
    "with x as (select * from tenant_c.v) select * from x",
    "update tenant_c.t set a = 1",
    "delete from tenant_c.t",
    "explain analyze select * from tenant_c.v",
    "select 'x'::tenant_c.dom",
    "select a operator(tenant_c.+) b from t",
    "select a from t where a operator(tenant_c.=) any (select 1)",
    "select a from t order by a using operator(tenant_c.<)",
    "select 1::a.b.c",
    "select f()",
    "select * from t where a = unknown_function(1)",
    "select count(*) filter (where f()) from t",
    "insert into tenant_c.t values (1)",  # a tenant's schema: its triggers are a tenant's code
    "copy tenant_c.t from stdin",
    "copy (select f()) to stdout",
    "copy t from stdin where a > f()",
    "copy t from '/tmp/x'",  # the server's files and programs: not judged
    "copy t to program 'cat'",
    "insert into t values (f())",
    "insert into t values (nextval('s')); select set_config('a.b', 'c', false)",
    "with i as (insert into t values (1) returning id) select * into t2 from i",
    "merge into t using tenant_c.s on t.id = s.id when matched then delete",
    "select myschema.nextval('s')",
    "select pg_advisory_lock(1)",
    "select pg_advisory_xact_lock(1)",
    "select pg_notify('c', 'x')",
    "select lo_create(0)",
    "select dblink('c', 'select 1')",
    "listen ch",
    "unlisten *",
    "notify ch",
    "prepare p as select 1",
    "execute p",
    "deallocate all",
    "declare c cursor with hold for select 1",
    "fetch 1 from c",
    "close c",
    "discard all",
    "reset all",
    "set search_path = x",
    "set local statement_timeout = 1",
    "set transaction isolation level serializable",
    "lock table t",
    "vacuum t",
    "truncate t",
    "create function f() returns int language sql as 'select 1'",
    "create view v as select 1",
    "drop table t",
    "prepare transaction 'x'",
    "commit prepared 'x'",
    "rollback prepared 'x'",
    "select 1; set search_path = x",
    "set search_path = x; select 1",
    "begin; select set_config('a.b', 'c', false); commit",
    "select 1; do $$begin end$$",
    "explain execute p",
    "explain create table t2 as select 1",
]


pytestmark = pytest.mark.usefixtures("fresh_analysis")


@pytest.mark.parametrize("sql", INERT)
def test_inert(sql: str) -> None:
    assert is_inert(sql) is True


@pytest.mark.parametrize("sql", INERT)
def test_inert_texts_leave_nothing(sql: str) -> None:
    assert residue(sql) == LEAVES_NOTHING


@pytest.mark.parametrize("sql", SEQUENCES)
def test_writes_leave_only_sequence_state(sql: str) -> None:
    assert residue(sql) == LEAVES_SEQUENCES
    assert is_inert(sql) is False


@pytest.mark.parametrize("sql", NOT_INERT)
def test_not_inert(sql: str) -> None:
    assert residue(sql) == LEAVES_ANYTHING
    assert is_inert(sql) is False


def test_the_allowlist_has_nothing_with_session_effects() -> None:
    for name in ("set_config", "setseed", "nextval", "setval", "pg_notify", "dblink"):
        assert name not in INERT_FUNCTIONS
    assert not INERT_FUNCTIONS & SEQUENCE_FUNCTIONS
    assert not [name for name in INERT_FUNCTIONS if name.startswith(("pg_advisory_", "pg_try_advisory_", "lo_"))]
    assert all(name == name.lower() for name in INERT_FUNCTIONS)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, True),
        ({"application_name": "x"}, True),
        ({"search_path": '"$user", public'}, True),
        ({"search_path": "pg_catalog, public"}, True),
        ({"search_path": "PUBLIC,pg_temp"}, True),
        ({"search_path": "tenant_c, public"}, False),
        ({"SEARCH_PATH": "tenant_c"}, False),  # setting names are case-insensitive
        ({"search_path": '"Public"'}, False),  # quoted: another schema
        ({"search_path": 'public, "a,b"'}, False),
        ({"search_path": ""}, False),  # nothing to trust is not worth recognising
    ],
)
def test_trusted_search_path(settings: dict[str, str], expected: bool) -> None:
    assert trusted_search_path(settings) is expected


def _with_other_literals(sql: str) -> str:
    """`sql` with every literal statement_shape sees replaced by another value."""
    return LITERAL.sub(lambda m: "'other'" if m.group().startswith("'") else "42", sql)


def test_the_cache_agrees_with_the_parser() -> None:
    """One cache for all texts, each asked twice and with other literals (a shape hit)."""
    texts = INERT + SEQUENCES + NOT_INERT
    for sql in texts + texts + [_with_other_literals(sql) for sql in texts]:
        assert residue(sql) == judge(sql).residue, sql


def test_texts_of_one_shape_share_a_verdict() -> None:
    assert is_inert("SELECT abalance FROM pgbench_accounts WHERE aid = 1;")
    assert is_inert("SELECT abalance FROM pgbench_accounts WHERE aid = 2;")
    assert list(analysis._CACHE.by_text) == ["SELECT abalance FROM pgbench_accounts WHERE aid = 0;"]
    assert not is_inert("SELECT setseed(0.5)")
    assert is_inert("SELECT 'setseed(0.5)'")  # a string, not a call


def test_the_cache_is_bounded() -> None:
    # Every text its own shape (the table names differ): the cache never grows past its bound.
    # (The bound is read, not patched: compiled, the module's constants are not looked up.)
    for i in range(analysis._CACHE.limit + 10):
        assert is_inert(f"select 1 from t{i}") is True
        assert len(analysis._CACHE.by_text) <= analysis._CACHE.limit
    assert is_inert("select nextval('s')") is False


def test_long_texts_are_not_cached() -> None:
    sql = "select " + ", ".join(["1"] * 5000)
    assert is_inert(sql) is True
    assert analysis._CACHE.by_text == {}


def test_deep_nesting_does_not_raise() -> None:
    assert isinstance(is_inert("select " + "(" * 5000 + "1" + ")" * 5000), bool)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises(sql: str) -> None:
    assert residue(sql) in (LEAVES_NOTHING, LEAVES_SEQUENCES, LEAVES_ANYTHING)


def test_texts_as_sent_agree_with_the_parser() -> None:
    """residue_text, keyed by the text with its digits zeroed, answers like the parser: for every
    text, asked twice, with other literals, and with other digits everywhere (names included)."""
    texts = INERT + SEQUENCES + NOT_INERT
    variants = [_with_other_literals(sql) for sql in texts] + [sql.translate(_OTHER_DIGITS) for sql in texts]
    for sql in texts + texts + variants:
        assert residue_text(sql.encode()) == judge(sql).residue, sql


_OTHER_DIGITS = str.maketrans("0123456789", "5678901234")


def test_only_texts_whose_digits_are_all_literals_share_a_key() -> None:
    assert residue_text(b"SELECT abalance FROM pgbench_accounts WHERE aid = 4711;") == LEAVES_NOTHING
    assert residue_text(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1742;") == LEAVES_NOTHING
    key = b"SELECT abalance FROM pgbench_accounts WHERE aid = 0000;"  # one per number of digits
    assert list(analysis._CACHE.by_digits) == [key]
    # A digit in a name: md5 is allowlisted, md0 (the same key) is not; neither is filed by digits.
    assert residue_text(b"SELECT md5('x')") == LEAVES_NOTHING
    assert residue_text(b"SELECT md0('x')") == LEAVES_ANYTHING
    assert residue_text(b"SELECT public.f1(2)") == LEAVES_ANYTHING
    assert residue_text(b"SELECT * FROM t1 WHERE a = 5") == LEAVES_NOTHING
    assert list(analysis._CACHE.by_digits) == [key]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='selctfromwhe md5()01234\'" ,.;_*=-/\n"$'))
def test_texts_as_sent_agree_with_the_parser_whatever_they_are(sql: str) -> None:
    assert residue_text(sql.encode()) == judge(sql).residue
    assert residue_text(sql.translate(_OTHER_DIGITS).encode()) == judge(sql.translate(_OTHER_DIGITS)).residue
