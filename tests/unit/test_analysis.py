"""The one statement analysis: one parse per statement shape, one bounded cache, every verdict at once;
the views (classify, residue, residue_text, ReadClassifier, begins_read_only, statement_names_used)
answering from it; the counters; never raising."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.sql import analysis
from router.sql.analysis import (
    Analysis,
    analyse,
    analyse_text,
    analysis_stats,
    cached,
    clear_analysis,
    judge,
    set_cache_limit,
)
from router.sql.effects import EMPTY
from router.sql.inert_statements import LEAVES_ANYTHING, LEAVES_NOTHING, LEAVES_SEQUENCES, residue, residue_text
from router.sql.prepared_sql import statement_names_used
from router.sql.read_statements import ReadClassifier, begins_read_only
from router.sql.setting_values import SettingChange
from router.sql.statements import classify
from router.sql.tree import parse_statements
from tests.unit.test_inert_statements import INERT, NOT_INERT, SEQUENCES
from tests.unit.test_read_statements import BEGIN_CASES, READS, WRITES
from tests.unit.test_statements import CASES

pytestmark = pytest.mark.usefixtures("fresh_analysis")


def parses() -> int:
    return analysis_stats()["parses"]


# --- one parse per shape ---------------------------------------------------------------------------


def test_texts_of_one_shape_are_parsed_once() -> None:
    first = analyse("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;")
    for aid in (1, 42, 999_999, 17):
        assert analyse(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};") is first
    assert analyse("select name from t where name = 'x' and n = 1.5") is analyse(
        "select name from t where name = 'it''s' and n = 2"
    )
    assert parses() == 2
    # The two shapes, and the texts by their digits (one key per number of digits, and per text).
    assert analysis_stats() == {"parses": 2, "hits": 5, "misses": 2, "entries": 8}


def test_texts_as_sent_are_parsed_once_and_found_by_their_digits() -> None:
    for aid in range(1, 200):
        assert analyse_text(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};".encode()).residue == 0
    assert parses() == 1
    stats = analysis_stats()
    assert stats["misses"] == 1
    assert stats["hits"] == 198
    # One key per number of digits, and the shape: the cache holds a handful, not 199 texts.
    assert stats["entries"] == 4


def test_negative_numbers_are_literals_of_the_same_shape() -> None:
    """pgbench's tpcb-like script adds a delta that may be negative: one shape for both signs."""
    for delta in (-203, 2979, -1, 5000):
        analyse_text(f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = 5;".encode())
        analyse(f"INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (5, 1, 7, {delta});")
    assert parses() == 2


def test_every_view_answers_from_one_parse() -> None:
    sql = "SELECT o.id FROM orders o WHERE o.customer_id = 42 ORDER BY o.id LIMIT 10"
    assert residue(sql) == LEAVES_NOTHING
    assert residue_text(sql.replace("42", "7").encode()) == LEAVES_NOTHING
    assert ReadClassifier().is_plain_read(sql) is True
    assert ReadClassifier(["f"]).is_plain_read(sql.replace("42", "43")) is True
    assert classify(sql.replace("10", "20")) is EMPTY
    assert statement_names_used(sql) == frozenset()
    assert parses() == 1


def test_effects_that_read_a_literal_are_kept_per_text() -> None:
    """SET's value is a literal: texts of one shape have other effects, so each is parsed and
    kept under its own text, and asked again, found there."""
    five = classify("SET statement_timeout = 5000")
    six = classify("SET statement_timeout = 6000")
    assert five.settings == (SettingChange("statement_timeout", "5000", False),)
    assert six.settings == (SettingChange("statement_timeout", "6000", False),)
    assert classify("SET statement_timeout = 5000") is five
    assert parses() == 2
    assert analyse("SET statement_timeout = 5000").per_text
    for value in ("'a.b'", "'c.d'"):  # set_config's arguments too, as sent
        sql = f"SELECT set_config({value}, 'x', false)"
        assert analyse_text(sql.encode()).effects.settings[0].name == value.strip("'")
    assert analysis_stats()["parses"] == 4


def test_explain_analyze_with_a_value_is_judged_per_text() -> None:
    """(ANALYZE 0) and (ANALYZE 1) are texts of one shape with other read verdicts."""
    assert ReadClassifier().is_plain_read("explain (analyze 0) select 1") is True
    assert ReadClassifier().is_plain_read("explain (analyze 1) select 1") is False
    assert ReadClassifier().is_plain_read("explain (analyze 0) select 1") is True


def test_a_text_that_leaves_anything_without_effects_or_names_is_not_parsed() -> None:
    result = analyse("CREATE TABLE attempts (a int)")
    assert result.residue == LEAVES_ANYTHING
    assert result.effects is EMPTY
    assert not result.reads.reads
    assert parses() == 0
    assert analysis_stats()["misses"] == 1


# --- the cache -------------------------------------------------------------------------------------


def test_the_cache_is_bounded() -> None:
    set_cache_limit(5)
    for i in range(40):  # every text its own shape (the table names differ)
        assert analyse_text(f"select a from t{i} where b = 1".encode()).residue == LEAVES_NOTHING
        assert analyse(f"select nextval('s{i}')").residue == LEAVES_SEQUENCES
        assert len(analysis._CACHE.by_text) <= 5
        assert len(analysis._CACHE.by_digits) <= 5
    assert analyse("select 1 from t39 where b = 2").residue == LEAVES_NOTHING


def test_long_texts_are_analysed_but_not_cached() -> None:
    sql = "select " + ", ".join(["1"] * 5000)
    assert analyse(sql).residue == LEAVES_NOTHING
    assert analyse_text(sql.encode()).residue == LEAVES_NOTHING
    assert analysis_stats()["entries"] == 0
    assert parses() == 2


def test_cached_only_looks() -> None:
    assert cached("select 1 from t") is None
    assert analysis_stats() == {"parses": 0, "hits": 0, "misses": 0, "entries": 0}
    found = analyse("select 1 from t")
    assert cached("select 2 from t") is found
    assert cached("SET a.b = 1") is None
    analyse("SET a.b = 1")
    assert cached("SET a.b = 2") is None  # the effects hold for the other text only
    assert analysis_stats()["hits"] == 1


def test_clear_empties_the_cache_and_zeroes_the_counters() -> None:
    analyse("select 1")
    analyse("select 2")
    clear_analysis()
    assert analysis_stats() == {"parses": 0, "hits": 0, "misses": 0, "entries": 0}


# --- every verdict as the views give it ----------------------------------------------------------


TEXTS = sorted(
    {*INERT, *SEQUENCES, *NOT_INERT, *(sql for sql, _ in CASES), *READS, *WRITES, *(sql for sql, _ in BEGIN_CASES)}
)


def _agrees(found: Analysis, sql: str) -> None:
    tree = judge(sql)
    assert found.residue == tree.residue, sql
    assert found.reads.reads == tree.reads.reads, sql
    if tree.reads.reads:  # what a caller's volatile functions are matched against
        assert (found.reads.calls, found.reads.attributes) == (tree.reads.calls, tree.reads.attributes), sql
    assert found.begins_read_only == tree.begins_read_only, sql
    assert found.statement_names == tree.statement_names, sql
    if not tree.effects.unparsed:  # unparseable without a trigger word: EMPTY (the server rejects it)
        assert found.effects == tree.effects, sql


@pytest.mark.parametrize("sql", TEXTS)
def test_the_cached_analysis_agrees_with_the_tree(sql: str) -> None:
    _agrees(analyse(sql), sql)
    _agrees(analyse(sql), sql)  # a hit
    _agrees(analyse_text(sql.encode()), sql)


def test_every_text_of_the_old_tables_asked_in_one_cache() -> None:
    """All the texts through one cache, each view as its own tests expect."""
    for sql in INERT:
        assert residue(sql) == LEAVES_NOTHING
    for sql in SEQUENCES:
        assert residue_text(sql.encode()) == LEAVES_SEQUENCES
    for sql in NOT_INERT:
        assert residue(sql) == LEAVES_ANYTHING
    for sql, expected in CASES:
        assert classify(sql) == expected, sql
    for sql in READS:
        assert ReadClassifier().is_plain_read(sql) is True, sql
    for sql in WRITES:
        assert ReadClassifier().is_plain_read(sql) is False, sql
    for sql, begins in BEGIN_CASES:
        assert begins_read_only(sql) is begins, sql


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("EXECUTE p(1, 'x')", {"p"}),
        ("execute p; deallocate q", {"p", "q"}),
        ("DEALLOCATE PREPARE q", {"q"}),
        ("deallocate all", set()),
        ("explain execute r(1)", {"r"}),
        ("create table x as execute s", {"s"}),
        ('EXECUTE "Mixed Case"', {"Mixed Case"}),
        ("select 'execute p'", set()),
        ("execute", set()),  # not valid SQL: the server says so
        ("prepare p as select 1", set()),
    ],
)
def test_statement_names(sql: str, names: set[str]) -> None:
    assert statement_names_used(sql) == frozenset(names)
    assert analyse(sql).statement_names == frozenset(names)


# --- never raising ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="selct *frmwhe-1234567890'(),;=$\"")))
def test_never_raises(sql: str) -> None:
    assert isinstance(analyse(sql), Analysis)
    assert isinstance(analyse_text(sql.encode("utf-8", "surrogatepass")), Analysis)


# Statements of many kinds whose literals vary (signs included), one to three in a text.
NUMBERS = st.integers(-99_999, 99_999).map(str) | st.sampled_from(["0", "1.5", "-2.25", "10"])
STRINGS = st.sampled_from(["'x'", "'-1'", "'it''s'", "''", "'a.b'", "'set'", "'12'"])
LITERALS = NUMBERS | STRINGS
EXPRESSIONS = st.one_of(
    LITERALS,
    st.builds("a + {}".format, LITERALS),
    st.builds("lower({})".format, STRINGS),
    st.builds("nextval({})".format, STRINGS),
    st.builds("set_config('a.b', {}, false)".format, STRINGS),
    st.builds("pg_advisory_lock({})".format, NUMBERS),
    st.builds("f({}, -{})".format, LITERALS, NUMBERS),
)
STATEMENTS = st.one_of(
    st.builds("SELECT {}, {} FROM t WHERE a = {} LIMIT 5".format, EXPRESSIONS, EXPRESSIONS, LITERALS),
    st.builds("SELECT {} FOR UPDATE".format, EXPRESSIONS),
    st.builds("UPDATE t SET a = a + {} WHERE id = {}".format, NUMBERS, NUMBERS),
    st.builds("INSERT INTO t (a, b) VALUES ({}, {})".format, LITERALS, EXPRESSIONS),
    st.builds("SET statement_timeout = {}".format, NUMBERS),
    st.builds("SET application_name = {}".format, STRINGS),
    st.builds("EXPLAIN (ANALYZE {}) SELECT {}".format, NUMBERS, EXPRESSIONS),
    st.builds("EXECUTE p({})".format, LITERALS),
    st.sampled_from(["BEGIN READ ONLY", "BEGIN", "COMMIT", "DEALLOCATE ALL", "SHOW search_path"]),
)
SQLISH = st.lists(STATEMENTS, min_size=1, max_size=3).map("; ".join)
_OTHER_DIGITS = str.maketrans("0123456789", "7890123456")


@settings(max_examples=500, deadline=None)
@given(SQLISH)
def test_whatever_the_cache_answers_the_tree_says_too(sql: str) -> None:
    """Texts the parser accepts, asked as text, as sent, and with other digits, through one cache
    shared by all examples: the answer is the tree's, whichever text of the shape came first."""
    for text in (sql, sql.translate(_OTHER_DIGITS)):
        if parse_statements(text) is not None:
            _agrees(analyse(text), text)
            _agrees(analyse_text(text.encode()), text)
