"""Which prepared statements a SQL text names in EXECUTE or DEALLOCATE. Pure: strings in, names out.

PostgreSQL has one namespace for statements prepared with SQL PREPARE and with the protocol's
Parse, so a client may EXECUTE from SQL a statement its driver parsed. Through the router the
server knows a protocol-level statement by the router's name, not the client's, so the client
session refuses such a text with a clear error instead of letting the server say that the
statement does not exist. Must not decide anything itself: the session does.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

from pglast import ast, parse_sql
from pglast.parser import ParseError

# Both words are keywords: no other spelling reaches an ExecuteStmt or a DeallocateStmt.
_WORDS: Final = re.compile(r"(?<![a-z_])(?:execute|deallocate)(?![a-z_0-9])")


def statement_names_used(sql: str) -> frozenset[str]:
    """The names in EXECUTE and DEALLOCATE statements of `sql` (also under EXPLAIN and CREATE TABLE
    AS); empty for a text that names none or does not parse (the server reports that)."""
    if _WORDS.search(sql.lower()) is None:
        return frozenset()
    return _names_cached(sql) if len(sql) <= 8192 else _names(sql)


@lru_cache(maxsize=1024)
def _names_cached(sql: str) -> frozenset[str]:
    return _names(sql)


def _names(sql: str) -> frozenset[str]:
    try:
        statements = parse_sql(sql)
    except ParseError:
        return frozenset()
    names: set[str] = set()
    for raw in statements:
        node = raw.stmt
        if isinstance(node, ast.ExplainStmt | ast.CreateTableAsStmt):
            node = node.query
        if isinstance(node, ast.ExecuteStmt | ast.DeallocateStmt) and node.name is not None:
            names.add(str(node.name))
    return frozenset(names)
