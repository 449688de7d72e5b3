"""Whether a statement may run on a read replica, read from its parse tree, for read/write splitting.

Owns the built-in rules: a text is a plain read when every statement in it is a SELECT, VALUES,
TABLE or set operation with no INTO, no locking clause, no data-modifying CTE and no call to a
built-in function that writes or needs the primary; SHOW; EXPLAIN of such a read without ANALYZE
(`reads_of(statements)`, which also lists the functions called and the attribute notations used,
for the caller's own volatile functions: router.sql.read_statements). And whether a text is one
BEGIN or START TRANSACTION that opens a READ ONLY transaction (`begins_read_only_of`).

Must not: parse or cache (router.sql.analysis does, once for every verdict), do I/O, keep
per-session state, or decide policy (where to send the text). When unsure it answers "not a plain
read", which sends the text to the primary; that is always safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from router.sql.shapes import FIRST_WORD
from router.sql.tree import Node, node_strings, tree_fields

__all__ = ["NOT_READ", "Reads", "begins_read_only_of", "may_read", "reads_of"]

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


@dataclass(frozen=True, slots=True)
class Reads:
    """A text's read verdict by the built-in rules. `calls` are the functions its reads call, as
    (schema or "" when unqualified, name), and `attributes` the names used in attribute notation
    (`rel.f`, `(row).f`), all lower-cased: a configured volatile function among them makes it no
    read. `names`: the function names of both, for a quick look that none is configured.
    `per_text`: the verdict read a literal's value, so it holds for this exact text only."""

    reads: bool
    calls: frozenset[tuple[str, str]] = frozenset()
    attributes: frozenset[str] = frozenset()
    per_text: bool = False
    names: frozenset[str] = frozenset()


NOT_READ: Final = Reads(False)


def may_read(sql: str) -> bool:
    """False when the first word of `sql` starts no plain read (INSERT, UPDATE, BEGIN, ...): the
    text is no read, or not valid SQL. Asked before any analysis, so a regular expression alone."""
    first = FIRST_WORD.match(sql)
    return first is None or first.group(1).lower() in _READ_WORDS


def reads_of(statements: list[Node] | None) -> Reads:
    """What the built-in rules say of a parse tree (None, or no statement: not a read)."""
    if not statements:
        return NOT_READ
    calls: set[tuple[str, str]] = set()
    attributes: set[str] = set()
    per_text = False
    for raw in statements:
        stmt = raw.get("stmt", {})
        if len(stmt) != 1:
            return NOT_READ
        ((kind, fields),) = stmt.items()
        if kind == "SelectStmt":
            if not _tree_is_read(fields, calls, attributes):
                return NOT_READ
        elif kind == "ExplainStmt":
            options = [option.get("DefElem", {}) for option in fields.get("options", [])]
            # (ANALYZE 0) and (ANALYZE 1) are texts of one shape: the verdict is this text's alone.
            per_text = per_text or any(o.get("defname") == "analyze" and "arg" in o for o in options)
            if any(_explain_analyzes(option) for option in options):
                return Reads(False, frozenset(), frozenset(), per_text)
            query = fields.get("query", {})
            if set(query) != {"SelectStmt"} or not _tree_is_read(query["SelectStmt"], calls, attributes):
                return Reads(False, frozenset(), frozenset(), per_text)
        elif kind != "VariableShowStmt":
            return NOT_READ
    names = frozenset(name for _, name in calls) | attributes
    return Reads(True, frozenset(calls), frozenset(attributes), per_text, names)


def begins_read_only_of(statements: list[Node] | None) -> bool:
    """True if the tree is exactly one BEGIN / START TRANSACTION whose modes make it READ ONLY (the
    last READ ONLY / READ WRITE wins, as in PostgreSQL)."""
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


def _tree_is_read(root: Node, calls: set[tuple[str, str]], attributes: set[str]) -> bool:
    """No INTO, locking clause, statement other than SELECT, or primary-only built-in call anywhere
    under `root` (a SELECT); the functions it calls and the attribute notations it uses go into
    `calls` and `attributes`. Iterative, as trees can be deep."""
    for key, value in tree_fields(root):
        if key in ("intoClause", "lockingClause"):
            return False
        if key == "FuncCall":
            names = node_strings(value.get("funcname", []))
            if not names:
                return False  # unknown shape: be safe
            name = names[-1].lower()
            if name in _PRIMARY_FUNCTIONS or name.startswith(_PRIMARY_PREFIXES):
                return False
            calls.add((names[-2].lower() if len(names) > 1 else "", name))
        elif key.endswith("Stmt") and key != "SelectStmt" and key[:1].isupper():
            return False  # INSERT, UPDATE, DELETE or MERGE in a CTE
        elif key == "ColumnRef":
            _note_attribute(value.get("fields", []), 2, attributes)
        elif key == "A_Indirection":
            _note_attribute(value.get("indirection", []), 1, attributes)
    return True


def _note_attribute(fields: list[Node], least: int, attributes: set[str]) -> None:
    """`rel.f` (a ColumnRef, `least` 2) or `(row).f` (an A_Indirection, `least` 1): attribute
    notation, which calls f(rel) when rel has no column f."""
    if len(fields) < least:
        return
    last = fields[-1].get("String")
    if last is not None:  # not rel.*, (row)[1]
        attributes.add(str(last.get("sval", "")).lower())


# The words PostgreSQL's defGetBoolean takes for false in an option (any letter case).
_FALSE_WORDS: Final = frozenset({"false", "off"})


def _explain_analyzes(option: Node) -> bool:
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
