"""Prepared statements under transaction pooling: client names -> server names.

Clients pick statement names freely (`P_0`, `__asyncpg_stmt_1__`, `_pg3_0`) and expect them to live
for the whole session; in transaction pooling their transactions run on whichever server connection
is free. So each distinct (query text, parameter types) gets one server-side name derived from its
content, every server connection remembers which of those it has, and the router prepares lazily
where a statement is missing. Identical statements of different clients share one server statement.
Pure: no I/O.
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


def server_statement_for(parse: Parse) -> ServerStatement:
    digest = hashlib.blake2b(parse.query.encode() + b"\x00" + parse.param_types, digest_size=10).hexdigest()
    name = f"trs_{digest}"
    return ServerStatement(name, build_parse(name, parse.query, parse.param_types))


class ClientStatements:
    """One client's named statements."""

    __slots__ = ("_by_name", "last_unnamed")

    def __init__(self) -> None:
        self._by_name: dict[str, ServerStatement] = {}
        # The client's latest unnamed Parse, re-sent when an unnamed Bind lands on another server.
        self.last_unnamed: bytes | None = None

    def define(self, client_name: str, parse: Parse) -> ServerStatement:
        statement = server_statement_for(parse)
        self._by_name[client_name] = statement
        return statement

    def get(self, client_name: str) -> ServerStatement | None:
        return self._by_name.get(client_name)

    def forget(self, client_name: str) -> None:
        self._by_name.pop(client_name, None)

    def __len__(self) -> int:
        return len(self._by_name)
