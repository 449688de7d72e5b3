"""PostgreSQL's own parse tree of a SQL text, and the walks every verdict makes over it.

Owns the one call into PostgreSQL's parser (pglast): the tree is read as libpg_query's JSON, whose
shape is fixed by the PostgreSQL major version pglast wraps, several times faster than building
pglast's node objects. JSON is untyped, so `Any` lives in these helpers and the rules that use them,
and never crosses router.sql.analysis.

Must not: cache (router.sql.analysis does, once for every verdict), decide anything, do I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pglast import parser as _pg

__all__ = ["Node", "node_strings", "parse_statements", "tree_fields"]

Node = dict[str, Any]


def parse_statements(sql: str) -> list[Node] | None:
    """PostgreSQL's parse tree of `sql` (one node a statement), or None when the parser rejects it."""
    try:
        tree: Node = json.loads(_pg.parse_sql_json(sql))
    except (_pg.ParseError, ValueError, RecursionError):  # ValueError: lone surrogates, bad JSON
        return None
    statements: list[Node] = tree.get("stmts", [])
    return statements


def tree_fields(root: Any) -> Iterator[tuple[str, Any]]:
    """Every (field name, value) of every node under `root`, parents before their children.
    Iterative, as trees can be deep; a caller that has its answer just stops iterating."""
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            yield key, value
            if isinstance(value, dict | list):
                stack.append(value)


def node_strings(items: list[Node]) -> list[str]:
    """The values of a list of String nodes (a qualified name's parts)."""
    return [str(item.get("String", {}).get("sval", "")) for item in items]
