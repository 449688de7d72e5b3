"""Whether a SQL text may run on a read replica, for read/write splitting.

Owns: `ReadClassifier.is_plain_read(sql)`, true only when every statement in the text is a plain
read (a SELECT, VALUES, TABLE or set operation with no INTO, no locking clause, no data-modifying
CTE and no call to a function that writes or needs the primary; SHOW; EXPLAIN of such a read
without ANALYZE), and `begins_read_only(sql)`, true when the text is one BEGIN or START TRANSACTION
that opens a READ ONLY transaction. Pure: text in, bool out.

Must not: do I/O, keep per-session state, or decide policy (where to send the text, whether a
transaction is already open, whether the replica lags too far): the caller does. When unsure it
answers "not a plain read", which sends the text to the primary; that is always safe. What it cannot
see: the bodies of user functions, views, rules and operators (a function that writes is caught only
if it is named in `volatile_functions`), a session's default_transaction_read_only, and what
EXECUTE of a prepared statement runs.

Cost: `is_plain_read` looks the exact text up in a per-classifier dict (a hit is one dict lookup);
on a miss, a text whose first word cannot start a read (INSERT, UPDATE, BEGIN, ...) is answered
without parsing, and the rest goes to PostgreSQL's own parser (pglast; tens of µs for a short
statement) and is cached by its shape (`statement_shape`: literals replaced), so texts that differ
only in their literals share one parse. Run `python -m router.sql.read_statements` for the numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final

from router.sql.statements import node_strings, parse_statements, tree_fields

__all__ = ["ReadClassifier", "begins_read_only"]

# Built-in functions that write, take locks or session state a replica cannot hold, or fail during
# recovery. Matched on the last name component whatever the schema: routing a same-named user
# function to the primary costs nothing but load.
_PRIMARY_FUNCTIONS: Final = frozenset(
    {
        # sequences (currval and lastval read session state that nextval left on the primary)
        "nextval",
        "setval",
        "currval",
        "lastval",
        # settings, notifications, transaction ids, WAL, other backends
        "set_config",
        "pg_notify",
        "txid_current",
        "pg_current_xact_id",
        "pg_switch_wal",
        "pg_walfile_name",
        "pg_walfile_name_offset",
        "pg_create_restore_point",
        "pg_logical_emit_message",
        "pg_promote",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_drop_replication_slot",
        "pg_replication_slot_advance",
        "pg_import_system_collations",
        # large objects: writers, and lo_open, whose mode may be INV_WRITE
        "lo_create",
        "lo_creat",
        "lo_import",
        "lo_unlink",
        "lo_put",
        "lo_from_bytea",
        "lo_open",
        "lowrite",
        "lo_truncate",
        "lo_truncate64",
        # dblink
        "dblink_exec",
    }
)
_PRIMARY_PREFIXES: Final = (
    "pg_advisory_",  # pg_advisory_lock[_shared], pg_advisory_xact_lock[_shared], pg_advisory_unlock*
    "pg_try_advisory_",
    "pg_current_wal_",  # pg_current_wal_lsn, _insert_lsn, _flush_lsn
    "pg_create_",  # replication slots, restore points
    "pg_copy_",  # pg_copy_{physical,logical}_replication_slot
    "pg_replication_origin_",
    "pg_stat_reset",
)

# The first words a plain read can start with; any other first word answers False without parsing.
_READ_WORDS: Final = frozenset({"select", "values", "with", "table", "show", "explain"})
# PostgreSQL's scanner: white space, then an identifier or keyword ({ident_start}{ident_cont}*, with
# the non-ASCII letters left out: a keyword is ASCII, so a word running on into one is no keyword).
_FIRST_WORD: Final = re.compile(r"[ \t\n\r\f\v]*([A-Za-z_][A-Za-z0-9_$]*)")

_CACHE_ENTRIES: Final = 10_000
# Texts longer than this are parsed every time rather than cached, so that the cache stays small
# (at most 10 000 x 8 KiB) whatever clients send.
_CACHED_TEXT_LIMIT: Final = 8192

# The tree is read as libpg_query's JSON, as in router.sql.statements: several times faster than
# building pglast's node objects. JSON is untyped, so `Any` stays in the private helpers.
_Node = dict[str, Any]


# A regular expression finds every literal only in texts with no double-quoted identifiers, dollar
# quotes, backslashes (escape strings) or comments, where quotes or digits would mean otherwise
# (statement_shape tests for those). Shapes are computed for every statement on the hot path
# (router.sql.inert_statements): substring tests, and a pattern that opens with a look-ahead for a
# character class, which `re` scans for quickly; about twice as fast as a regular expression for
# the marks and a plain alternation for the literals.
_LITERAL: Final = re.compile(r"(?=['\d])(?:'[^']*(?:''[^']*)*'|(?<![\w.])\d+(?:\.\d+)?(?![\w.]))")


def statement_shape(sql: str) -> str:
    """`sql` with its string and number literals replaced by 0, or `sql` itself when it has quoting
    a regular expression cannot follow. Literals never change whether a statement only reads, so
    texts of one shape share a verdict: `WHERE aid = 17` and `WHERE aid = 42` are parsed once."""
    if _hard_to_follow(sql):
        return sql
    shape = _LITERAL.sub("0", sql)
    return shape if shape != sql else sql


_ASCII_DIGIT: Final = re.compile(r"[0-9]")


def _hard_to_follow(sql: str) -> bool:
    """Quoting in which quotes or digits mean something else than `_LITERAL` assumes: quoted
    identifiers, dollar quotes, backslashes (escape strings) and comments."""
    return '"' in sql or "$" in sql or "\\" in sql or "--" in sql or "/*" in sql


def digits_only_in_literals(sql: str) -> bool:
    """Whether every ASCII digit in `sql` is in a literal that `statement_shape` replaces: none in a
    name (`t1`, `md5`), a quoted identifier or an escape. Then a text that differs from `sql` only in
    its digits has the same shape (the characters around each digit, which decide how it is read,
    are the same), so whatever holds for the shape holds for both."""
    if _hard_to_follow(sql):
        return False
    return _ASCII_DIGIT.search(_LITERAL.sub("", sql)) is None


class ReadClassifier:
    """Decides whether a SQL text is a plain read, with the caller's list of volatile functions.

    `volatile_functions` names user functions that write or must see the primary's state, each
    `name` or `schema.name`, compared case-insensitively (no quoting: write `MyFunc` or `myfunc`,
    not `"MyFunc"`). A bare name matches a call in any schema; `schema.name` matches an unqualified
    call and one qualified with that schema, not one qualified with another. A configured name also
    matches the attribute notation `rel.name` / `(row).name`, which may call a function taking a row,
    so a column of the same name sends its reads to the primary.

    Safe to share between tasks and threads: the cache is a dict that is only read, filled and
    cleared, never iterated."""

    __slots__ = ("_any_schema", "_cache", "_qualified", "_qualified_names")

    def __init__(self, volatile_functions: Iterable[str] = ()) -> None:
        any_schema: set[str] = set()
        qualified: set[tuple[str, str]] = set()
        for raw in volatile_functions:
            parts = raw.strip().lower().split(".")
            if not 1 <= len(parts) <= 2 or not all(parts):
                raise ValueError(f"volatile function {raw!r}: expected 'name' or 'schema.name'")
            if len(parts) == 1:
                any_schema.add(parts[0])
            else:
                qualified.add((parts[0], parts[1]))
        self._any_schema: frozenset[str] = frozenset(any_schema)
        self._qualified: frozenset[tuple[str, str]] = frozenset(qualified)
        self._qualified_names: frozenset[str] = frozenset(name for _, name in qualified)
        self._cache: dict[str, bool] = {}

    def is_plain_read(self, sql: str) -> bool:
        """True if every statement in `sql` may run on a read replica; False when any may not, when
        the text has no statement, or when PostgreSQL's parser rejects it. Never raises."""
        cached = self._cache.get(sql)
        if cached is not None:
            return cached
        first = _FIRST_WORD.match(sql)
        if first is not None and first.group(1).lower() not in _READ_WORDS:
            return False  # the first statement is no read, or the text is not valid SQL
        if len(sql) > _CACHED_TEXT_LIMIT:
            return self._classify(sql)
        shape = statement_shape(sql)
        result = self._cache.get(shape) if shape is not sql else None
        if result is None:
            result = self._classify(sql)
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[shape] = result  # texts with literals are found by their shape, not kept
        return result

    def _classify(self, sql: str) -> bool:
        """The answer from the parse tree, with no prefilter or cache (tests compare the two)."""
        statements = parse_statements(sql)
        if not statements:
            return False
        return all(self._statement_is_read(raw.get("stmt", {})) for raw in statements)

    def _statement_is_read(self, stmt: _Node) -> bool:
        if len(stmt) != 1:
            return False
        ((kind, fields),) = stmt.items()
        if kind == "SelectStmt":
            return self._tree_is_read(fields)
        if kind == "VariableShowStmt":
            return True
        if kind == "ExplainStmt":
            if any(_explain_analyzes(option.get("DefElem", {})) for option in fields.get("options", [])):
                return False
            query = fields.get("query", {})
            return set(query) == {"SelectStmt"} and self._tree_is_read(query["SelectStmt"])
        return False

    def _tree_is_read(self, root: _Node) -> bool:
        """No INTO, locking clause, statement other than SELECT, or primary-only function call
        anywhere under `root` (a SELECT). Iterative, as trees can be deep."""
        for key, value in tree_fields(root):
            if key in ("intoClause", "lockingClause"):
                return False
            if key == "FuncCall":
                if self._needs_primary(node_strings(value.get("funcname", []))):
                    return False
            elif key.endswith("Stmt") and key != "SelectStmt" and key[:1].isupper():
                return False  # INSERT, UPDATE, DELETE or MERGE in a CTE
            elif (key == "ColumnRef" and self._is_volatile_attribute(value.get("fields", []), 2)) or (
                key == "A_Indirection" and self._is_volatile_attribute(value.get("indirection", []), 1)
            ):
                return False
        return True

    def _needs_primary(self, names: list[str]) -> bool:
        if not names:
            return True  # unknown shape: be safe
        name = names[-1].lower()
        if name in _PRIMARY_FUNCTIONS or name.startswith(_PRIMARY_PREFIXES) or name in self._any_schema:
            return True
        if len(names) == 1:
            return name in self._qualified_names
        return (names[-2].lower(), name) in self._qualified

    def _is_volatile_attribute(self, fields: list[_Node], least: int) -> bool:
        """`rel.f` (a ColumnRef, `least` 2) or `(row).f` (an A_Indirection, `least` 1): attribute
        notation, which calls f(rel) when rel has no column f."""
        if len(fields) < least or not (self._any_schema or self._qualified_names):
            return False
        last = fields[-1].get("String")
        if last is None:  # rel.*, (row)[1]
            return False
        name = str(last.get("sval", "")).lower()
        return name in self._any_schema or name in self._qualified_names


def begins_read_only(sql: str) -> bool:
    """True if `sql` is exactly one BEGIN / START TRANSACTION whose modes make it READ ONLY (the
    last READ ONLY / READ WRITE wins, as in PostgreSQL). False for a plain BEGIN, which follows the
    session's default_transaction_read_only that only the server knows, and for anything else,
    including a BEGIN READ ONLY followed by more statements in the same text. Never raises."""
    if "only" not in sql.lower():  # a keyword cannot be spelt with escapes
        return False
    if len(sql) > _CACHED_TEXT_LIMIT:
        return _begins_read_only(sql)
    return _begins_read_only_cached(sql)


@lru_cache(maxsize=256)
def _begins_read_only_cached(sql: str) -> bool:
    return _begins_read_only(sql)


def _begins_read_only(sql: str) -> bool:
    statements = parse_statements(sql)
    if statements is None or len(statements) != 1:
        return False
    transaction = statements[0].get("stmt", {}).get("TransactionStmt")
    if transaction is None or transaction.get("kind") not in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
        return False
    read_only = False
    for option in transaction.get("options", []):
        element = option.get("DefElem", {})
        if element.get("defname") == "transaction_read_only":
            read_only = bool(element.get("arg", {}).get("A_Const", {}).get("ival", {}).get("ival", 0))
    return read_only


# --- parse-tree helpers ----------------------------------------------------------------------------


# The words PostgreSQL's defGetBoolean takes for false in an option (any letter case).
_FALSE_WORDS: Final = frozenset({"false", "off"})


def _explain_analyzes(option: _Node) -> bool:
    """Whether an EXPLAIN option is ANALYZE switched on: bare ANALYZE, (ANALYZE), (ANALYZE true),
    (ANALYZE 1). Only a recognisable false turns it off; anything else counts as on."""
    if option.get("defname") != "analyze":
        return False
    arg = option.get("arg")
    if arg is None:
        return True
    if "String" in arg:
        return str(arg["String"].get("sval", "")).lower() not in _FALSE_WORDS
    if "Integer" in arg:
        return int(arg["Integer"].get("ival", 0)) != 0
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval", False))
    return True


# --- measurement -----------------------------------------------------------------------------------


def _benchmark() -> None:
    import timeit

    classifier = ReadClassifier(["audit.touch"])

    def per_call(sql: str, number: int, cached: bool) -> float:
        function = classifier.is_plain_read if cached else classifier._classify
        function(sql)
        return min(timeit.repeat(lambda: function(sql), number=number, repeat=5)) / number

    select = "SELECT id, name, email, created_at FROM customers WHERE tenant_id = $1 AND status = 'active' LIMIT 50"
    update = "UPDATE accounts SET balance = balance - 100, updated_at = now() WHERE id = 42"
    print(f"cache hit, SELECT ({len(select)} chars)          {per_call(select, 200_000, True) * 1e9:7.0f} ns")
    print(f"prefilter, UPDATE ({len(update)} chars)           {per_call(update, 200_000, True) * 1e9:7.0f} ns")
    print(f"cache miss, SELECT ({len(select)} chars)         {per_call(select, 20_000, False) * 1e6:7.1f} µs")


if __name__ == "__main__":
    _benchmark()
