"""What a statement does to the server session, read from its parse tree, for a router that shares
server connections.

Owns `Effects`, the session-level effects of a simple Query or Parse text that a
transaction-pooling router must know about: settings changed (SET, RESET, set_config), session state
that ties a client to its server connection (LISTEN, temporary tables, advisory locks, PREPARE,
cursors WITH HOLD) or ends it (UNLISTEN *, DISCARD, DEALLOCATE ALL, CLOSE ALL), statements the router
refuses (SET ROLE, SET SESSION AUTHORIZATION; statements on roles, such as ALTER ROLE CURRENT_USER
PASSWORD; the use of large objects) or answers itself (SET/RESET/SHOW router.tenant), and databases
that DDL needs free of connections; `effects_of(statements, sql)` builds them from the tree, and
`may_have_effects` / `mentions_effects` are the prefilters that answer EMPTY without a tree.

Must not: parse or cache (router.sql.analysis does both, once for every verdict), do I/O, keep
per-session state, or decide policy (refuse, pin, reset, re-apply): the caller does. It describes
what the text does if it succeeds; a failed or rolled-back transaction undoes settings and most
state, which only the caller can see. Statements inside DO blocks and function bodies, and whatever
EXECUTE of a prepared statement runs, are invisible here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from router.sql.setting_values import (
    Dynamic,
    SettingChange,
    bool_constant,
    literal,
    render_config_value,
    render_set_arg,
    text_constant,
)
from router.sql.tree import Node, node_strings, tree_fields

__all__ = [
    "ADVISORY_LOCK",
    "EMPTY",
    "HOLD_CURSOR",
    "LISTEN",
    "PIN_KINDS",
    "PREPARE",
    "TEMP_TABLE",
    "UNPARSED",
    "Effects",
    "SettingChange",
    "effects_of",
    "may_have_effects",
    "mentions_effects",
]

# Kinds of session state (the values of Effects.pins / Effects.unpins).
LISTEN: Final = "listen"
TEMP_TABLE: Final = "temp_table"  # any temporary object: table, view, sequence, function in pg_temp
ADVISORY_LOCK: Final = "advisory_lock"
PREPARE: Final = "prepare"
HOLD_CURSOR: Final = "hold_cursor"
PIN_KINDS: Final = frozenset({LISTEN, TEMP_TABLE, ADVISORY_LOCK, PREPARE, HOLD_CURSOR})


@dataclass(frozen=True, slots=True)
class Effects:
    """The session-level effects of one text, statements combined in order.

    Apply `reset_all` (which `discard_all` implies) before `settings`: a RESET ALL or DISCARD ALL
    drops the changes made before it, so `settings` holds only those made after the last one.
    `pins` and `unpins` are the net result and never share a kind: a kind whose state was ended and
    then created again is only in `pins`. `unparsed` means the text, or a part of it that matters,
    could not be understood (syntax PostgreSQL's parser rejects, SET ... FROM CURRENT, set_config with
    arguments that are not constants or that may run any number of times): treat the session as
    changed in unknown ways."""

    settings: tuple[SettingChange, ...] = ()
    reset_all: bool = False
    discard_all: bool = False
    pins: frozenset[str] = frozenset()
    unpins: frozenset[str] = frozenset()
    session_authorization: bool = False
    # CREATE/ALTER/DROP ROLE (USER, GROUP) in any form, GRANT/REVOKE of role membership: a role's
    # password and defaults decide every later login as it, the router's own included.
    role_change: bool = False
    # A large-object function (lo_*, loread, lowrite), catalog (pg_largeobject, its _metadata) or
    # statement (ALTER/GRANT/COMMENT ON LARGE OBJECT): large objects belong to a role and have no
    # row-level security, so sessions acting as one shared role would share them.
    large_objects: bool = False
    database_ddl: tuple[str, ...] = ()
    tenant_statement: bool = False
    unparsed: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.settings
            or self.reset_all
            or self.discard_all
            or self.pins
            or self.unpins
            or self.session_authorization
            or self.role_change
            or self.large_objects
            or self.database_ddl
            or self.tenant_statement
            or self.unparsed
        )

    @property
    def per_text(self) -> bool:
        """Whether these effects read the value of a literal (a SET's value, set_config's
        arguments, a database named in a string): then they hold for this exact text only, not for
        every text of its shape. Pins, unpins, resets and refusals come from keywords and names."""
        return bool(
            self.settings or self.unparsed or self.session_authorization or self.tenant_statement or self.database_ddl
        )


EMPTY: Final = Effects()
UNPARSED: Final = Effects(unparsed=True)

# --- prefilter -------------------------------------------------------------------------------------

# Every effect above needs one of these words in the text, in any letter case: SET, RESET,
# set_config (and SET ROLE / SESSION ...); SHOW router.tenant; LISTEN, UNLISTEN; TEMP, TEMPORARY,
# pg_temp; pg_*advisory*; PREPARE; DEALLOCATE; DECLARE; CLOSE; DISCARD; DATABASE; ROLE, USER, GROUP,
# GRANT, REVOKE (statements on roles); lo_*, loread, lowrite, pg_largeobject*, LARGE. Keywords cannot be
# spelt any other way, but an identifier (a function or setting name) can be written with Unicode
# escapes, U&"pg_\0061dvisory_lock", hence "u&". A false positive only costs a parse.
_TRIGGERS: Final = (
    "set",
    "show",
    "listen",
    "temp",
    "advisory",
    "prepare",
    "deallocate",
    "declare",
    "close",
    "discard",
    "database",
    "role",
    "user",
    "group",
    "grant",
    "revoke",
    "lo_",
    "loread",
    "lowrite",
    "large",
    "u&",
)
# A second look on a cache miss, before parsing: the same words as whole tokens where a token is
# what they must be. A keyword or function name touching an ASCII letter would be part of a longer
# identifier, so "offset", "dataset", "attempt" or "closed_at" are no reason to parse. ("temp" may
# run on: TEMPORARY.) The words of role and large-object statements are common in applications'
# names (user_id, users, GROUP BY, role_name): for them a digit, _ or $ also makes a longer name,
# and GROUP followed by BY is a clause, never a role.
_TRIGGER_TOKENS: Final = re.compile(
    r"(?<![a-z])(?:(?:re)?set|show|(?:un)?listen|prepare|deallocate|declare|close|discard|database)(?![a-z])"
    r"|(?<![a-z])temp|advisory|u&|largeobject"
    r"|(?<![a-z0-9_$])(?:role|user|grant|revoke|large|loread|lowrite)(?![a-z0-9_$])"
    r"|(?<![a-z0-9_$])group(?![a-z0-9_$])(?!\s+by(?![a-z0-9_$]))|(?<![a-z0-9_$])lo_"
)
# Texts longer than this are parsed every time rather than cached, so that the cache stays small
# (at most 4096 x 8 KiB) whatever clients send.


def may_have_effects(lowered: str) -> bool:
    """The first look, on every text (lower-cased): False when no trigger word is in it at all,
    and its effects are surely EMPTY."""
    for word in _TRIGGERS:  # noqa: SIM110 (a loop: several times faster than any() over a generator)
        if word in lowered:
            return True
    return False


def mentions_effects(lowered: str) -> bool:
    """The second look, before any tree is read: the trigger words as whole tokens."""
    return _TRIGGER_TOKENS.search(lowered) is not None


def effects_of(statements: list[Node] | None, sql: str) -> Effects:
    """The effects of `sql` from its parse tree (None: the parser rejected it), with no prefilter."""
    if statements is None:
        return UNPARSED
    builder = _Builder(sql)
    for raw in statements:
        ((kind, fields),) = raw["stmt"].items()
        handler = _STATEMENT_HANDLERS.get(kind)
        if handler is not None:
            handler(builder, fields)
        if builder.scan_calls:
            _scan_calls(builder, kind, fields)
        if builder.scan_large_objects and not builder.large_objects:
            builder.large_objects = _uses_large_objects(fields)
    return builder.build()


class _Builder:
    """Effects accumulated statement by statement, in order."""

    __slots__ = (
        "database_ddl",
        "discard_all",
        "large_objects",
        "pins",
        "reset_all",
        "role_change",
        "scan_calls",
        "scan_large_objects",
        "session_authorization",
        "settings",
        "source",
        "tenant_statement",
        "unparsed",
        "unpins",
    )

    def __init__(self, sql: str) -> None:
        lowered = sql.lower()
        self.source = sql.encode("utf-8")  # parse-tree locations are byte offsets
        self.scan_calls = "set_config" in lowered or "advisory" in lowered or "u&" in lowered
        self.scan_large_objects = any(word in lowered for word in _LARGE_OBJECT_WORDS)
        self.settings: list[SettingChange] = []
        self.reset_all = False
        self.discard_all = False
        self.pins: set[str] = set()
        self.unpins: set[str] = set()
        self.session_authorization = False
        self.role_change = False
        self.large_objects = False
        self.database_ddl: list[str] = []
        self.tenant_statement = False
        self.unparsed = False

    def pin(self, kind: str) -> None:
        self.pins.add(kind)
        self.unpins.discard(kind)

    def unpin(self, kind: str) -> None:
        self.unpins.add(kind)
        self.pins.discard(kind)

    def reset_settings(self) -> None:
        self.reset_all = True
        self.settings.clear()

    def build(self) -> Effects:
        effects = Effects(
            settings=tuple(self.settings),
            reset_all=self.reset_all,
            discard_all=self.discard_all,
            pins=frozenset(self.pins),
            unpins=frozenset(self.unpins),
            session_authorization=self.session_authorization,
            role_change=self.role_change,
            large_objects=self.large_objects,
            database_ddl=tuple(self.database_ddl),
            tenant_statement=self.tenant_statement,
            unparsed=self.unparsed,
        )
        return EMPTY if effects.empty else effects


# --- statements ------------------------------------------------------------------------------------

_TENANT_SETTING: Final = "router.tenant"
_AUTHORIZATION_SETTINGS: Final = frozenset({"session_authorization", "role"})
# SET SESSION CHARACTERISTICS AS TRANSACTION ... sets these session defaults.
_CHARACTERISTICS: Final = {
    "transaction_isolation": "default_transaction_isolation",
    "transaction_read_only": "default_transaction_read_only",
    "transaction_deferrable": "default_transaction_deferrable",
}
_CURSOR_OPT_HOLD: Final = 0x0020  # PostgreSQL's parsenodes.h


def _setting_name(node: Node) -> str:
    return str(node.get("name", "")).lower()


def _on_set(b: _Builder, node: Node) -> None:
    kind = node["kind"]
    if kind == "VAR_RESET_ALL":
        b.reset_settings()
        return
    if kind == "VAR_SET_MULTI":
        # "TRANSACTION" and "TRANSACTION SNAPSHOT" last only until the end of the transaction.
        if node.get("name") == "SESSION CHARACTERISTICS":
            _on_session_characteristics(b, node)
        return
    name = _setting_name(node)
    if name == _TENANT_SETTING:
        b.tenant_statement = True
        return
    if name in _AUTHORIZATION_SETTINGS:
        b.session_authorization = True
        return
    local = bool(node.get("is_local", False))
    if kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
        b.settings.append(SettingChange(name, None, local))
    elif kind == "VAR_SET_VALUE":
        try:
            value = ", ".join(render_set_arg(arg, b.source) for arg in node.get("args", []))
        except Dynamic:
            b.unparsed = True
        else:
            b.settings.append(SettingChange(name, value, local))
    else:  # VAR_SET_CURRENT: the value in force where the statement runs, which only the server knows
        b.unparsed = True


def _on_session_characteristics(b: _Builder, node: Node) -> None:
    local = bool(node.get("is_local", False))
    for item in node.get("args", []):
        option = item.get("DefElem", {})
        name = _CHARACTERISTICS.get(option.get("defname", ""))
        constant = option.get("arg", {}).get("A_Const", {})
        if name is None:
            b.unparsed = True
        elif "sval" in constant:  # the isolation level, e.g. "read committed"
            b.settings.append(SettingChange(name, literal(constant["sval"].get("sval", "")), local))
        elif "ival" in constant:  # READ ONLY / READ WRITE, [NOT] DEFERRABLE
            b.settings.append(SettingChange(name, "on" if constant["ival"].get("ival", 0) else "off", local))
        else:
            b.unparsed = True


def _on_show(b: _Builder, node: Node) -> None:
    if _setting_name(node) == _TENANT_SETTING:
        b.tenant_statement = True


def _on_listen(b: _Builder, node: Node) -> None:
    b.pin(LISTEN)


def _on_unlisten(b: _Builder, node: Node) -> None:
    if node.get("conditionname") is None:  # UNLISTEN *; one channel could still leave others
        b.unpin(LISTEN)


def _is_temp(relation: Node) -> bool:
    return relation.get("relpersistence") == "t" or str(relation.get("schemaname", "")).lower() == "pg_temp"


def _on_create_table(b: _Builder, node: Node) -> None:
    if _is_temp(node.get("relation", {})) and node.get("oncommit") != "ONCOMMIT_DROP":
        b.pin(TEMP_TABLE)


def _on_into(b: _Builder, into: Node) -> None:
    if _is_temp(into.get("rel", {})) and into.get("onCommit") != "ONCOMMIT_DROP":
        b.pin(TEMP_TABLE)


def _on_create_table_as(b: _Builder, node: Node) -> None:
    _on_into(b, node.get("into", {}))


def _on_select(b: _Builder, node: Node) -> None:
    # SELECT ... INTO TEMP t; in a UNION the INTO sits on the leftmost SELECT.
    while "larg" in node:
        node = node["larg"]
    if "intoClause" in node:
        _on_into(b, node["intoClause"])


def _on_create_view(b: _Builder, node: Node) -> None:
    if _is_temp(node.get("view", {})):
        b.pin(TEMP_TABLE)


def _on_create_sequence(b: _Builder, node: Node) -> None:
    if _is_temp(node.get("sequence", {})):
        b.pin(TEMP_TABLE)


def _on_create_function(b: _Builder, node: Node) -> None:
    names = node_strings(node.get("funcname", []))
    if len(names) > 1 and names[0].lower() == "pg_temp":
        b.pin(TEMP_TABLE)


def _on_prepare(b: _Builder, node: Node) -> None:
    b.pin(PREPARE)


def _on_deallocate(b: _Builder, node: Node) -> None:
    if node.get("isall", False):
        b.unpin(PREPARE)


def _on_declare(b: _Builder, node: Node) -> None:
    if int(node.get("options", 0)) & _CURSOR_OPT_HOLD:
        b.pin(HOLD_CURSOR)


def _on_close(b: _Builder, node: Node) -> None:
    if node.get("portalname") is None:  # CLOSE ALL
        b.unpin(HOLD_CURSOR)


def _on_discard(b: _Builder, node: Node) -> None:
    target = node.get("target")
    if target == "DISCARD_ALL":
        b.discard_all = True
        b.reset_settings()
        for kind in PIN_KINDS:
            b.unpin(kind)
    elif target == "DISCARD_TEMP":
        b.unpin(TEMP_TABLE)


# These need the database free of other connections, pooled ones included.
def _on_drop_database(b: _Builder, node: Node) -> None:
    b.database_ddl.append(str(node["dbname"]))


def _on_rename(b: _Builder, node: Node) -> None:
    if node.get("renameType") == "OBJECT_DATABASE":
        b.database_ddl.append(str(node["subname"]))
    elif node.get("renameType") == "OBJECT_ROLE":
        b.role_change = True


def _on_role_statement(b: _Builder, node: Node) -> None:
    b.role_change = True


def _on_create_database(b: _Builder, node: Node) -> None:
    b.database_ddl.extend(_option_names(node, "template"))


def _on_alter_database(b: _Builder, node: Node) -> None:
    if _option_names(node, "tablespace"):  # ALTER DATABASE x SET TABLESPACE moves the files
        b.database_ddl.append(str(node["dbname"]))


def _option_names(node: Node, option: str) -> list[str]:
    return [
        str(item["DefElem"]["arg"]["String"].get("sval", ""))
        for item in node.get("options", [])
        if item.get("DefElem", {}).get("defname") == option and "String" in item["DefElem"].get("arg", {})
    ]


_STATEMENT_HANDLERS: Final[dict[str, Callable[[_Builder, Node], None]]] = {
    "VariableSetStmt": _on_set,
    "VariableShowStmt": _on_show,
    "ListenStmt": _on_listen,
    "UnlistenStmt": _on_unlisten,
    "CreateStmt": _on_create_table,
    "CreateTableAsStmt": _on_create_table_as,
    "SelectStmt": _on_select,
    "ViewStmt": _on_create_view,
    "CreateSeqStmt": _on_create_sequence,
    "CreateFunctionStmt": _on_create_function,
    "PrepareStmt": _on_prepare,
    "DeallocateStmt": _on_deallocate,
    "DeclareCursorStmt": _on_declare,
    "ClosePortalStmt": _on_close,
    "DiscardStmt": _on_discard,
    "DropdbStmt": _on_drop_database,
    "RenameStmt": _on_rename,
    "CreatedbStmt": _on_create_database,
    "AlterDatabaseStmt": _on_alter_database,
    "CreateRoleStmt": _on_role_statement,
    "AlterRoleStmt": _on_role_statement,
    "AlterRoleSetStmt": _on_role_statement,
    "DropRoleStmt": _on_role_statement,
    "GrantRoleStmt": _on_role_statement,
}


# --- large objects ---------------------------------------------------------------------------------

# In the lower-cased text, one of these is needed before the tree is searched (U&"..." names too).
_LARGE_OBJECT_WORDS: Final = ("lo_", "loread", "lowrite", "largeobject", "large", "u&")
_LARGE_OBJECT_FUNCTIONS: Final = frozenset({"loread", "lowrite"})  # and every built-in named lo_*
_LARGE_OBJECT_CATALOGS: Final = frozenset({"pg_largeobject", "pg_largeobject_metadata"})


def _uses_large_objects(root: Node) -> bool:
    """Whether a statement calls a built-in large-object function, reads a large-object catalog
    or names a large object (ALTER/GRANT/COMMENT/SECURITY LABEL ON LARGE OBJECT), anywhere."""
    for key, value in tree_fields(root):
        if key == "FuncCall":
            name = _function_name(value)
            if name is not None and (name.startswith("lo_") or name in _LARGE_OBJECT_FUNCTIONS):
                return True
        elif (key == "relname" and value in _LARGE_OBJECT_CATALOGS) or (  # in any schema: no table should take it
            key in ("objtype", "objectType") and value == "OBJECT_LARGEOBJECT"
        ):
            return True
    return False


# --- function calls: set_config and advisory locks -------------------------------------------------

_SESSION_ADVISORY_LOCKS: Final = frozenset(
    {"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"}
)
# The clauses that make a SELECT's target list run other than exactly once.
_ROW_CLAUSES: Final = ("fromClause", "whereClause", "groupClause", "havingClause", "limitCount", "limitOffset")


def _scan_calls(b: _Builder, kind: str, fields: Node) -> None:
    """set_config and the session-level advisory lock functions, anywhere in the statement.

    A lock taken anywhere pins (over-pinning is safe). set_config and pg_advisory_unlock_all count
    only where they surely run exactly once: a call that is itself an output column of a top-level
    SELECT with no FROM, WHERE, GROUP BY, HAVING, LIMIT or OFFSET. A set_config elsewhere (in a
    CASE, a subquery, PREPARE, a per-row expression) marks the text unparsed."""
    certain = {id(call) for call in _certain_calls(kind, fields)}
    locks = unlock_all = False
    for call in _function_calls(fields):
        name = _function_name(call)
        if name in _SESSION_ADVISORY_LOCKS:
            locks = True
        elif name == "pg_advisory_unlock_all":
            unlock_all = unlock_all or id(call) in certain
        elif name == "set_config":
            if id(call) in certain:
                _on_set_config(b, call)
            else:
                b.unparsed = True
    if unlock_all:
        b.unpin(ADVISORY_LOCK)
    if locks:  # after the unlock, whatever the order in the statement: a lock may remain
        b.pin(ADVISORY_LOCK)


def _certain_calls(kind: str, fields: Node) -> Iterator[Node]:
    if kind != "SelectStmt" or fields.get("op", "SETOP_NONE") != "SETOP_NONE":
        return
    if any(clause in fields for clause in _ROW_CLAUSES):
        return
    for target in fields.get("targetList", []):
        call = target.get("ResTarget", {}).get("val", {}).get("FuncCall")
        if call is not None:
            yield call


def _function_calls(root: Any) -> Iterator[Node]:
    """Every FuncCall in a parse tree, in text order; iterative, as trees can be deep."""
    stack = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            call = item.get("FuncCall")
            if call is not None:
                yield call
            stack.extend(reversed(item.values()))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def _function_name(call: Node) -> str | None:
    """The name of a built-in function call: unqualified or in pg_catalog, else None."""
    names = node_strings(call.get("funcname", []))
    if len(names) == 1 or (len(names) == 2 and names[0] == "pg_catalog"):
        return names[-1]
    return None


def _on_set_config(b: _Builder, call: Node) -> None:
    args = call.get("args", [])
    try:
        if len(args) != 3:
            raise Dynamic
        name = text_constant(args[0])
        raw = text_constant(args[1])
        local = bool_constant(args[2])
        if name is None:
            raise Dynamic
        name = name.lower()
        if name == _TENANT_SETTING:  # the router keeps the tenant; the server would only store a string
            raise Dynamic
        value = None if raw is None else render_config_value(name, raw)
    except Dynamic:
        b.unparsed = True
        return
    if name in _AUTHORIZATION_SETTINGS:
        b.session_authorization = True
    else:
        b.settings.append(SettingChange(name, value, local))
