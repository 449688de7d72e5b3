"""Which prepared statements a SQL text names in EXECUTE or DEALLOCATE: a view of the one statement
analysis (router.sql.analysis). Pure: strings in, names out.

PostgreSQL has one namespace for statements prepared with SQL PREPARE and with the protocol's
Parse, so a client may EXECUTE from SQL a statement its driver parsed. Through the router the
server knows a protocol-level statement by the router's name, not the client's, so the client
session refuses such a text with a clear error instead of letting the server say that the
statement does not exist. Must not decide anything itself: the session does.
"""

from __future__ import annotations

from typing import Final

from router.sql.analysis import analyse, may_name_statements

__all__ = ["statement_names_used"]

_NONE: Final[frozenset[str]] = frozenset()


def statement_names_used(sql: str) -> frozenset[str]:
    """The names in EXECUTE and DEALLOCATE statements of `sql` (also under EXPLAIN and CREATE TABLE
    AS); empty for a text that names none or does not parse (the server reports that). Asked on
    every Query of a client with protocol-level statements: a text without either word is answered
    by a regular expression alone."""
    if not may_name_statements(sql.lower()):
        return _NONE
    return analyse(sql).statement_names
