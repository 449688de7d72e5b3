"""Prepared statements under transaction pooling: client names -> server names.

Clients pick statement names freely (`P_0`, `__asyncpg_stmt_1__`, `_pg3_0`) and expect them to live
for the whole session; in transaction pooling their transactions run on whichever server connection
is free. So each distinct statement gets one server-side name derived from its content, every
server connection remembers which of those it has, and the router prepares lazily where one is
missing. Identical statements of different clients share one server statement.

"Content" includes the search_path the statement is parsed under, not just its text: PostgreSQL
resolves table names when it parses, so `SELECT * FROM items` prepared for one schema tenant must
never be executed for another. Pure: no I/O.
"""

from __future__ import annotations

import hashlib

from router.protocol.pg.frontend import Parse, build_parse


class ServerStatement:
    """A statement as the server knows it: content-derived name and the Parse that creates it."""

    __slots__ = ("name", "parse_message")

    def __init__(self, name: str, parse_message: bytes) -> None:
        self.name = name
        self.parse_message = parse_message


def server_statement_for(parse: Parse, namespace: str) -> ServerStatement:
    """The server statement for `parse` under `namespace` (the search_path it is parsed with)."""
    content = b"\x00".join((parse.query.encode("utf-8", "surrogateescape"), parse.param_types, namespace.encode()))
    name = "trs_" + hashlib.blake2b(content, digest_size=10).hexdigest()
    return ServerStatement(name, build_parse(name, parse.query, parse.param_types))


class ClientStatements:
    """One client's named statements, and their server statements per namespace (memoised, so a
    Bind costs one dict lookup)."""

    __slots__ = ("_by_name", "_resolved", "last_unnamed")

    def __init__(self) -> None:
        self._by_name: dict[str, Parse] = {}
        self._resolved: dict[tuple[str, str], ServerStatement] = {}
        # The client's latest unnamed Parse, re-sent when an unnamed Bind lands on another server.
        self.last_unnamed: bytes | None = None

    def define(self, client_name: str, parse: Parse) -> None:
        if self._by_name.get(client_name) != parse:
            self._by_name[client_name] = parse
            self._resolved = {k: v for k, v in self._resolved.items() if k[0] != client_name}

    def resolve(self, client_name: str, namespace: str) -> ServerStatement | None:
        """The server statement for a client's statement under `namespace`; None if unknown."""
        key = (client_name, namespace)
        statement = self._resolved.get(key)
        if statement is None:
            parse = self._by_name.get(client_name)
            if parse is None:
                return None
            statement = self._resolved[key] = server_statement_for(parse, namespace)
        return statement

    def query_of(self, client_name: str) -> str | None:
        """The SQL text of a client's named statement, or None if it is unknown."""
        parse = self._by_name.get(client_name)
        return parse.query if parse is not None else None

    def forget(self, client_name: str) -> None:
        if self._by_name.pop(client_name, None) is not None:
            self._resolved = {k: v for k, v in self._resolved.items() if k[0] != client_name}

    def __len__(self) -> int:
        return len(self._by_name)
