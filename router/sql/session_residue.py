"""What a statement may leave behind in the server session, read from its parse tree, for the exact
hand-over.

Owns the three levels and the rules behind them. LEAVES_NOTHING (the text is inert) when every
statement is one whose effects end with its transaction or live in the database, never in the
session: a SELECT (VALUES, TABLE, set operations) without INTO; an UPDATE or DELETE; COPY ... TO
STDOUT; BEGIN, COMMIT, ROLLBACK and savepoints (not the two-phase commands); SHOW; EXPLAIN of one of
these; in which every function called by name is a built-in of `INERT_FUNCTIONS`, and every
schema-qualified name (a table, view, type or operator) is in one of `TRUSTED_SCHEMAS`.
LEAVES_SEQUENCES when, under the same rules, it also writes rows (INSERT, MERGE, COPY ... FROM
STDIN), writes a DEFAULT, or calls a sequence function: a serial or identity column's default calls
nextval(), which leaves the session's currval()/lastval() behind, and a client could read another
tenant's last key with them; DISCARD SEQUENCES clears exactly that. LEAVES_ANYTHING otherwise.
`residue_of(statements)` judges a tree, `may_leave_little(first word)` answers LEAVES_ANYTHING
without one, and `trusted_search_path(settings)` says whether a client's settings let unqualified
names resolve only to trusted schemas too. Pure.

Must not: parse or cache (router.sql.analysis does, once for every verdict), do I/O, keep
per-session state, or decide when to wipe: the caller does (router.sql.inert_statements has the
caller's words). When unsure it answers LEAVES_ANYTHING, which only costs a wipe.

What it trusts: code that runs without appearing in the text (triggers, views, rules, row-level
security policies, column defaults, operators, casts, foreign-key actions) is the operator's as long
as it lives in `TRUSTED_SCHEMAS`, where only the database's owner creates objects: with
`tenant.context_secret` set, `tenant-router check` makes sure that the router's role can create
nothing and owns nothing in the shared database (router/admin/role_audit.py). A schema tenant's own
schema is not trusted: its owner, a tenant, can open it to others (GRANT USAGE ... TO PUBLIC), and a
view there whose function makes a temporary table, selected by a shared tenant, would shadow the
shared table for the next client of that server session. (A schema or database tenant's own sessions
run under its own role, in a pool of their own: what its code leaves reaches only its own clients.)
The operator's code must leave nothing in the session: a setting it changes for the session
(set_config(..., false)), or the currval() of an UPDATE or DELETE trigger that calls nextval(),
reaches the next client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from router.sql.tree import Node, node_strings, tree_fields

__all__ = [
    "INERT_FUNCTIONS",
    "LEAVES_ANYTHING",
    "LEAVES_NOTHING",
    "LEAVES_SEQUENCES",
    "SEQUENCE_FUNCTIONS",
    "TRUSTED_SCHEMAS",
    "may_leave_little",
    "residue_of",
    "trusted_search_path",
]


# Built-in functions that change nothing in the session: aggregates, window functions, and the
# string, number, date/time, JSON, array and set-returning functions applications use in their
# queries. Names as PostgreSQL stores them (a quoted "LOWER" is another function). Never here: what
# changes settings (set_config), the random seed (setseed), sequences (nextval, setval; currval and
# lastval read what nextval left), notifications (pg_notify), advisory locks (pg_advisory_*), large
# objects (lo_*), remote sessions (dblink*): a call to anything not listed makes the text not inert.
INERT_FUNCTIONS: Final = frozenset(
    {
        # aggregates
        *("count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or", "every"),
        *("bit_and", "bit_or", "bit_xor", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg"),
        *("stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "any_value"),
        *("percentile_cont", "percentile_disc", "mode", "corr", "covar_pop", "covar_samp"),
        # window functions
        *("row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile"),
        *("lag", "lead", "first_value", "last_value", "nth_value"),
        # strings
        *("lower", "upper", "initcap", "length", "char_length", "character_length", "octet_length"),
        *("substr", "substring", "btrim", "ltrim", "rtrim", "replace", "translate", "overlay"),
        *("concat", "concat_ws", "left", "right", "lpad", "rpad", "repeat", "reverse", "position", "strpos"),
        *("split_part", "starts_with", "format", "md5", "sha224", "sha256", "sha384", "sha512"),
        *("encode", "decode", "to_hex", "ascii", "chr", "quote_ident", "quote_literal", "quote_nullable"),
        *("regexp_replace", "regexp_match", "regexp_matches", "regexp_split_to_array"),
        *("regexp_split_to_table", "regexp_like", "regexp_count", "regexp_instr", "regexp_substr"),
        *("string_to_array", "array_to_string", "normalize", "is_normalized", "similar_to_escape"),
        # numbers (random advances the session's generator, which no client can tell apart)
        *("abs", "round", "trunc", "floor", "ceil", "ceiling", "mod", "div", "power", "pow", "sqrt"),
        *("cbrt", "exp", "ln", "log", "log10", "sign", "pi", "gcd", "lcm", "width_bucket", "random"),
        # dates and times
        *("now", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "timezone"),
        *("date_trunc", "date_part", "extract", "date_bin", "age", "to_char", "to_date", "to_timestamp"),
        *("to_number", "make_date", "make_time", "make_timestamp", "make_timestamptz", "make_interval"),
        *("justify_days", "justify_hours", "justify_interval", "isfinite", "overlaps"),
        # JSON
        *("to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object", "jsonb_build_object"),
        *("json_build_array", "jsonb_build_array", "json_object", "jsonb_object", "jsonb_set"),
        *("jsonb_set_lax", "jsonb_insert", "jsonb_pretty", "jsonb_strip_nulls", "json_strip_nulls"),
        *("json_extract_path", "json_extract_path_text", "jsonb_extract_path", "jsonb_extract_path_text"),
        *("json_array_length", "jsonb_array_length", "json_typeof", "jsonb_typeof"),
        *("json_each", "jsonb_each", "json_each_text", "jsonb_each_text", "json_object_keys"),
        *("jsonb_object_keys", "json_array_elements", "jsonb_array_elements", "json_array_elements_text"),
        *("jsonb_array_elements_text", "jsonb_path_query", "jsonb_path_query_array"),
        *("jsonb_path_query_first", "jsonb_path_exists", "jsonb_path_match"),
        # arrays and sets
        *("unnest", "array_length", "cardinality", "array_position", "array_positions", "array_append"),
        *("array_prepend", "array_cat", "array_remove", "array_replace", "array_lower", "array_upper"),
        *("array_dims", "array_ndims", "generate_series", "generate_subscripts"),
        # identifiers and the session, read only
        *("gen_random_uuid", "uuid_generate_v4", "current_setting", "current_database", "current_schema"),
        *("current_schemas", "pg_backend_pid", "version", "pg_typeof", "pg_collation_for", "system_user"),
        *("num_nulls", "num_nonnulls"),
        # the session's own sequence state, read: whoever had the session before and may have left
        # some (LEAVES_SEQUENCES) was followed by DISCARD SEQUENCES
        *("currval", "lastval"),
    }
)

# What a text may leave in the server session, from least to most. A server connection's level is
# the highest of the texts that ran on it since it was last wiped (router/protocol/pg/handover.py).
LEAVES_NOTHING: Final = 0  # inert: nothing to wipe
LEAVES_SEQUENCES: Final = 1  # the currval()/lastval() of the sequences it advanced: DISCARD SEQUENCES
LEAVES_ANYTHING: Final = 2  # unknown: the full wipe

# The only schema a function name may be qualified with (the parser writes pg_catalog.substring,
# pg_catalog.extract... for SQL's special syntax).
_CATALOG: Final = "pg_catalog"
# Schemas whose objects (tables, views, types, operators and the code they run) are the operator's.
# Also what a search_path may name besides the session's own ("$user", which no tenant can create,
# and pg_temp, which holds only what the session made itself and is never searched for functions).
TRUSTED_SCHEMAS: Final = frozenset({_CATALOG, "public", "information_schema"})
_TRUSTED_PATH: Final = TRUSTED_SCHEMAS | {"$user", "pg_temp"}
# Keys of qualified names (lists of String nodes) other than a function's: TypeName.names,
# A_Expr.name (an operator), SubLink.operName, SortBy.useOp.
_NAME_KEYS: Final = frozenset({"names", "name", "operName", "useOp"})

# Catalogs that reading leaves nothing, but that the router refuses to shared tenants
# (router.sql.statements, large objects): a text naming one must not skip that judgement as inert.
_JUDGED_RELATIONS: Final = frozenset({"pg_largeobject", "pg_largeobject_metadata"})
# Statements with no session-level effect, and statements that may appear inside them (in a CTE).
_INERT_NESTED: Final = frozenset({"SelectStmt", "UpdateStmt", "DeleteStmt"})
_INERT_TRANSACTION_KINDS: Final = frozenset(
    {
        "TRANS_STMT_BEGIN",
        "TRANS_STMT_START",
        "TRANS_STMT_COMMIT",
        "TRANS_STMT_ROLLBACK",
        "TRANS_STMT_SAVEPOINT",
        "TRANS_STMT_RELEASE",
        "TRANS_STMT_ROLLBACK_TO",
    }
)
# Keys that make a tree not inert wherever they appear: INTO creates a table; DEFAULT may call nextval.
# Statements that write rows: besides what an inert statement may do, a serial or identity column's
# default (or an explicit nextval()) leaves the session's currval()/lastval() behind.
_WRITING: Final = frozenset({"InsertStmt", "MergeStmt"})
# The functions whose only session effect is that state (DISCARD SEQUENCES clears it).
SEQUENCE_FUNCTIONS: Final = frozenset({"nextval", "setval"})

# The first words a statement that leaves at most sequence state can start with; any other first
# word answers LEAVES_ANYTHING unparsed.
_KNOWN_WORDS: Final = frozenset(
    {"select", "values", "with", "table", "update", "delete", "insert", "merge", "copy", "show", "explain"}
    | {"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"}
)


def may_leave_little(first: str | None) -> bool:
    """False when a text's first word (router.sql.shapes.first_word) starts no statement of the
    first two levels (SET, CREATE...): the text leaves anything, or is not valid SQL."""
    return first is None or first in _KNOWN_WORDS


def residue_of(statements: list[Node] | None) -> int:
    """The level of a parse tree (None, or no statement: LEAVES_ANYTHING)."""
    if not statements:
        return LEAVES_ANYTHING
    level = LEAVES_NOTHING
    for raw in statements:
        level = max(level, _statement_residue(raw.get("stmt", {})))
        if level == LEAVES_ANYTHING:
            break
    return level


def trusted_search_path(settings: Mapping[str, str]) -> bool:
    """True unless `settings` (a client's, named in any letter case) have a search_path naming a
    schema outside `TRUSTED_SCHEMAS`: then an unqualified name in an inert text may resolve to a
    tenant's view, function or operator, whose code may leave state in the session."""
    for name, value in settings.items():
        if name.lower() == "search_path" and not all(_path_entry(entry) in _TRUSTED_PATH for entry in value.split(",")):
            return False
    return True


def _path_entry(entry: str) -> str:
    """One schema of a search_path as PostgreSQL reads it (a comma inside quotes makes pieces that
    match nothing: not trusted, which is safe)."""
    entry = entry.strip(" \t\n\r\f\v")
    if len(entry) >= 2 and entry[0] == entry[-1] == '"':
        return entry[1:-1].replace('""', '"')
    return entry.lower()


def _statement_residue(stmt: Node) -> int:
    if len(stmt) != 1:
        return LEAVES_ANYTHING
    ((kind, fields),) = stmt.items()
    if kind in _INERT_NESTED:
        return _tree_residue(fields)
    if kind in _WRITING:
        return max(LEAVES_SEQUENCES, _tree_residue(fields))
    if kind == "TransactionStmt":
        return LEAVES_NOTHING if fields.get("kind") in _INERT_TRANSACTION_KINDS else LEAVES_ANYTHING
    if kind == "VariableShowStmt":
        return LEAVES_NOTHING
    if kind == "ExplainStmt":  # EXPLAIN ANALYZE runs its statement: judge that one
        return _statement_residue(fields.get("query", {}))
    if kind == "CopyStmt":
        return _copy_residue(fields)
    return LEAVES_ANYTHING


def _copy_residue(fields: Node) -> int:
    """COPY to the client is a read; COPY from the client writes rows (column defaults may call
    nextval). A server-side file or program is another matter: not judged."""
    if "filename" in fields or fields.get("is_program"):
        return LEAVES_ANYTHING
    level = _tree_residue(fields)
    return max(level, LEAVES_SEQUENCES) if fields.get("is_from") else level


def _tree_residue(root: Node) -> int:
    """LEAVES_ANYTHING for an INTO, a statement of another kind, a call of a function neither
    allowlisted nor a sequence function, or a name qualified with an untrusted schema anywhere under
    `root`; else LEAVES_SEQUENCES if a row is written (INSERT or MERGE in a CTE), a DEFAULT or a
    sequence function may advance a sequence; else LEAVES_NOTHING. Iterative, as trees can be deep.

    Attribute notation (`rel.f`, `(row).f`) calls f(rel) when rel has no column f: a function
    taking that row type. No built-in with session effects takes a row, and a user function is found
    on the search_path, which `trusted_search_path` keeps to the operator's schemas."""
    level = LEAVES_NOTHING
    for key, value in tree_fields(root):
        if key == "intoClause":
            return LEAVES_ANYTHING
        if key == "SetToDefault":
            level = LEAVES_SEQUENCES
        elif key == "FuncCall":
            names = node_strings(value.get("funcname", []))
            if _sequence_function(names):
                level = LEAVES_SEQUENCES
            elif not _inert_function(names):
                return LEAVES_ANYTHING
        elif key == "schemaname":  # of a RangeVar, written unwrapped as an UPDATE's target
            if value not in TRUSTED_SCHEMAS:
                return LEAVES_ANYTHING
        elif key == "relname" and value in _JUDGED_RELATIONS:
            return LEAVES_ANYTHING
        elif key in _NAME_KEYS:
            if isinstance(value, list) and len(value) > 1 and not _trusted_name(node_strings(value)):
                return LEAVES_ANYTHING
        elif key.endswith("Stmt") and key[:1].isupper() and key not in _INERT_NESTED:
            if key not in _WRITING:
                return LEAVES_ANYTHING
            level = LEAVES_SEQUENCES  # INSERT or MERGE in a CTE
    return level


def _trusted_name(names: list[str]) -> bool:
    return len(names) == 2 and names[0] in TRUSTED_SCHEMAS


def _inert_function(names: list[str]) -> bool:
    return _builtin_in(names, INERT_FUNCTIONS)


def _sequence_function(names: list[str]) -> bool:
    return _builtin_in(names, SEQUENCE_FUNCTIONS)


def _builtin_in(names: list[str], functions: frozenset[str]) -> bool:
    if len(names) == 1:
        return names[0] in functions
    return len(names) == 2 and names[0] == _CATALOG and names[1] in functions
