"""ReadClassifier.is_plain_read and begins_read_only: one table row per case, plus the prefilter and
the cache agreeing with the parser, configured volatile functions, and never raising."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.sql import analysis
from router.sql.analysis import analysis_stats, judge, set_cache_limit
from router.sql.read_statements import ReadClassifier, begins_read_only
from router.sql.shapes import statement_shape

pytestmark = pytest.mark.usefixtures("fresh_analysis")


READS: list[str] = [
    "select 1",
    "SELECT * FROM orders WHERE id = $1",
    "select 1;",
    "select 1; select 2",
    "values (1)",
    "VALUES (1, 'a'), (2, 'b') ORDER BY 1",
    "table t",
    "select 1 union select 2",
    "select a from t intersect select a from u except select a from v",
    "(select 1) union all (select 2)",
    "with x as (select * from t) select * from x",
    "with recursive r(n) as (select 1 union all select n + 1 from r where n < 10) select * from r",
    "show search_path",
    "SHOW ALL",
    "explain select 1",
    "EXPLAIN (COSTS OFF, VERBOSE) SELECT * FROM t",
    "explain (analyze false) select 1",
    "explain (analyze off) select 1",
    "explain (analyze 0) select 1",
    "select now(), random(), count(*) from t group by 1 having count(*) > 1",
    "select * from t, lateral (select * from u where u.id = t.id) l",
    "select * from generate_series(1, 10)",
    "select txid_current_if_assigned(), pg_is_in_recovery()",
    "select public.f()",  # f is not configured here
    "select 'nextval(1)', 'insert into t values (1)' as \"for update\"",  # words inside strings
    "select nextval_count from t",  # a column, not a call
    "select * from t where id in (select id from u) order by (select max(x) from v)",
    "  \n\t select 1  ",
    "/* leading comment */ select 1",
    "-- leading comment\nselect 1",
    "select 1 -- trailing comment",
    "select pg_advisory_lock_count from locks",  # a column named like a function is no call
    "select",  # valid: an empty target list
]

WRITES: list[str] = [
    "",
    "   ",
    ";",
    "-- only a comment",
    "/* only a comment */",
    "select 1; delete from t",
    "delete from t; select 1",
    "insert into t values (1)",
    "update t set a = 1",
    "delete from t",
    "merge into t using s on t.id = s.id when matched then delete",
    "create table t (a int)",
    "drop table t",
    "truncate t",
    "copy t to stdout",
    "call p()",
    "do $$ begin end $$",
    "set search_path to a",
    "reset all",
    "begin",
    "begin read only",
    "commit",
    "lock table t",
    "vacuum t",
    "analyze t",
    "listen ch",
    "notify ch",
    "prepare p as select 1",
    "execute p",
    "declare c cursor for select 1",
    "fetch 1 from c",
    "create table t2 as select * from t",
    "select * into t2 from t",
    "select * into temp t2 from t",
    "select 1 into t2 union select 2",
    "select * from t for update",
    "select * from t for no key update",
    "select * from t for share",
    "select * from t for key share",
    "select * from t for update of t skip locked",
    "select * from t for update nowait",
    "select * from (select * from t for share) s",
    "with x as (select * from t for update) select * from x",
    "select * from t where id in (select id from u for update)",
    "select 1 union select 2 for update",
    "with d as (delete from t returning *) select * from d",
    "with i as (insert into t values (1) returning id) select id from i",
    "with u as (update t set a = 1 returning *) select * from u",
    "with a as (select 1), b as (delete from t returning *) select * from a",
    "with x as (with y as (delete from t returning *) select * from y) select * from x",
    "select nextval('s')",
    "SELECT NEXTVAL('s')",
    "select pg_catalog.nextval('s')",
    "select setval('s', 1)",
    "select currval('s')",
    "select lastval()",
    "select * from nextval('s')",
    "select * from t where id = nextval('s')",
    "select * from t order by nextval('s')",
    "select * from t, lateral (select nextval('s')) n",
    "with x as (select nextval('s')) select * from x",
    "select (select nextval('s'))",
    "select coalesce(null, nextval('s'))",
    "select pg_advisory_lock(1)",
    "select pg_advisory_lock_shared(1)",
    "select pg_try_advisory_lock(1)",
    "select pg_try_advisory_xact_lock(1)",
    "select pg_advisory_xact_lock(1)",
    "select pg_advisory_unlock(1)",
    "select pg_advisory_unlock_all()",
    "select set_config('a.b', 'c', false)",
    "select pg_notify('ch', 'x')",
    "select txid_current()",
    "select pg_current_xact_id()",
    "select pg_current_wal_lsn()",
    "select pg_switch_wal()",
    "select pg_terminate_backend(1)",
    "select pg_cancel_backend(1)",
    "select lo_create(0)",
    "select lo_import('/tmp/x')",
    "select lo_unlink(1)",
    "select lo_put(1, 0, 'x')",
    "select lo_from_bytea(0, 'x')",
    "select lowrite(0, 'x')",
    "select dblink_exec('c', 'delete from t')",
    "select U&\"nextv\\0061l\"('s')",  # the parser decodes the name
    "explain analyze select 1",
    "explain analyse select 1",
    "explain (analyze) select 1",
    "explain (analyze true) select 1",
    "explain (analyze on, costs off) select 1",
    "explain (analyze 1) select 1",
    "explain insert into t values (1)",
    "explain select * from t for update",
    "explain select nextval('s')",
    "explain execute p",
    "explain create table t2 as select 1",
    "start transaction read only",
    "select from",
    "selec 1",
    "select (1",
    "select 'unterminated",
    "select * from t where",
]


@pytest.mark.parametrize("sql", READS)
def test_plain_reads(sql: str) -> None:
    assert ReadClassifier().is_plain_read(sql) is True


@pytest.mark.parametrize("sql", WRITES)
def test_not_plain_reads(sql: str) -> None:
    assert ReadClassifier().is_plain_read(sql) is False


@pytest.mark.parametrize("sql", READS + WRITES)
def test_prefilter_and_cache_agree_with_the_parser(sql: str) -> None:
    classifier = ReadClassifier()
    assert classifier.is_plain_read(sql) == classifier._classify(sql)
    assert classifier.is_plain_read(sql) == classifier._classify(sql)  # second call: a cache hit if cached


VOLATILE_CASES: list[tuple[list[str], str, bool]] = [
    (["f"], "select f()", False),
    ([], "select f()", True),
    (["F"], "select f()", False),  # configured names are case-insensitive
    (["f"], "select F()", False),
    (["f"], 'select "F"()', False),  # a quoted name is compared case-insensitively too: safe side
    (["f"], "select public.f()", False),
    (["f"], "select other.f()", False),
    (["other.f"], "select public.f()", True),
    (["other.f"], "select other.f()", False),
    (["Other.F"], "select OTHER.f()", False),
    (["other.f"], "select f()", False),  # unqualified: may resolve to other.f through search_path
    (["other.f"], "select g()", True),
    (["f"], "select * from t where a = f(t.b)", False),
    (["f"], "select * from t order by f()", False),
    (["f"], "select * from f()", False),
    (["f"], "select * from t, lateral f(t.a) x", False),
    (["f"], "select * from t where exists (select 1 from u where u.x = f())", False),
    (["f"], "with x as (select f()) select * from x", False),
    (["f"], "select count(*) filter (where f()) from t", False),
    (["f"], "select sum(a) over (order by f()) from t", False),
    (["f"], "select case when a then f() end from t", False),
    (["f"], "explain select f()", False),
    (["f"], "select t.f from t", False),  # attribute notation: f(t) if t has no column f
    (["s.f"], "select (t).f from t", False),
    (["f"], "select f from t", True),  # a bare column
    (["f"], "select t.* from t", True),
    (["f"], "select 'f()'", True),
    (["f", "g"], "select g()", False),
    (["f", "public.g"], "select public.g(), f2()", False),
]


@pytest.mark.parametrize(("volatile", "sql", "expected"), VOLATILE_CASES)
def test_volatile_functions(volatile: list[str], sql: str, expected: bool) -> None:
    assert ReadClassifier(volatile).is_plain_read(sql) is expected


@pytest.mark.parametrize("name", ["", " ", "a.b.c", ".f", "s.", "a..b"])
def test_bad_volatile_function_names(name: str) -> None:
    with pytest.raises(ValueError):
        ReadClassifier([name])


def test_cache_is_bounded_and_stays_correct() -> None:
    set_cache_limit(3)
    classifier = ReadClassifier()
    for i in range(10):
        assert classifier.is_plain_read(f"select {i} from t{i}") is True  # every text its own shape
        assert len(analysis._CACHE.by_text) <= 3
    assert classifier.is_plain_read("select * from t for update") is False
    assert classifier.is_plain_read("select * from t for update") is False


def test_prefilter_answers_without_caching() -> None:
    classifier = ReadClassifier()
    assert classifier.is_plain_read("insert into t values (1)") is False
    assert analysis_stats()["entries"] == 0


def test_long_texts_are_not_cached() -> None:
    classifier = ReadClassifier()
    sql = "select " + ", ".join(["1"] * 5000)
    assert classifier.is_plain_read(sql) is True
    assert analysis_stats()["entries"] == 0


def test_classifiers_do_not_share_configuration() -> None:
    assert ReadClassifier(["f"]).is_plain_read("select f()") is False
    assert ReadClassifier().is_plain_read("select f()") is True


def test_deep_nesting_is_not_a_read_and_does_not_raise() -> None:
    sql = "select " + "(" * 5000 + "1" + ")" * 5000
    assert isinstance(ReadClassifier().is_plain_read(sql), bool)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises(sql: str) -> None:
    classifier = ReadClassifier(["f", "s.g"])
    assert isinstance(classifier.is_plain_read(sql), bool)
    assert isinstance(begins_read_only(sql), bool)


BEGIN_CASES: list[tuple[str, bool]] = [
    ("begin read only", True),
    ("BEGIN READ ONLY", True),
    ("begin transaction read only", True),
    ("begin work read only", True),
    ("start transaction read only", True),
    ("start transaction isolation level serializable, read only", True),
    ("start transaction read only, isolation level repeatable read", True),
    ("begin isolation level serializable read only deferrable", True),
    ("BEGIN TRANSACTION READ ONLY, DEFERRABLE", True),
    ("begin read only;", True),
    ("  /* c */ begin read only -- c", True),
    ("begin read write, read only", True),  # the last one wins
    ("begin", False),
    ("BEGIN READ WRITE", False),
    ("begin read only, read write", False),
    ("start transaction", False),
    ("begin isolation level serializable", False),
    ("begin deferrable", False),
    ("set transaction read only", False),
    ("set session characteristics as transaction read only", False),
    ("begin read only; insert into t values (1)", False),  # more than one statement
    ("begin read only; select 1", False),
    ("select 'begin read only'", False),
    ("commit", False),
    ("", False),
    ("begin read onl", False),
    ("begin read only only", False),
]


@pytest.mark.parametrize(("sql", "expected"), BEGIN_CASES)
def test_begins_read_only(sql: str, expected: bool) -> None:
    assert begins_read_only(sql) is expected
    assert judge(sql).begins_read_only is expected  # without the prefilter and cache


def test_begin_read_only_is_not_a_plain_read() -> None:
    assert ReadClassifier().is_plain_read("begin read only") is False


def test_statement_shape_replaces_literals_only_where_it_can_see_them() -> None:
    assert statement_shape("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;") == (
        "SELECT abalance FROM pgbench_accounts WHERE aid = 0;"
    )
    assert statement_shape("select 'it''s', t1.c2 from t1 where x = 1.5") == "select 0, t1.c2 from t1 where x = 0"
    for opaque in (
        'select "a1" from t where a = 1',
        "select $$1$$",
        "select 1 -- '",
        "select E'\\'' ",
        "/* 1 */ select 1",
    ):
        assert statement_shape(opaque) == opaque


def test_texts_of_one_shape_share_a_verdict_and_different_shapes_do_not() -> None:
    classifier = ReadClassifier()
    assert classifier.is_plain_read("SELECT * FROM t WHERE a = 1")
    assert classifier.is_plain_read("SELECT * FROM t WHERE a = 2")
    assert not classifier.is_plain_read("SELECT * FROM t WHERE a = 3 FOR UPDATE")
    assert not classifier.is_plain_read("SELECT nextval('a')")
    assert classifier.is_plain_read("SELECT 'nextval(1)'")  # a string, not a call
    assert not classifier.is_plain_read("SELECT 1; DELETE FROM t WHERE a = 4")
    assert classifier.is_plain_read("SELECT '; DELETE FROM t'")
