"""Prepared statements under transaction pooling: client names -> server names, and when to parse.

Clients pick statement names freely (`P_0`, `__asyncpg_stmt_1__`, `_pg3_0`) and expect them to live
for the whole session; in transaction pooling their transactions run on whichever server connection
is free. So each distinct statement gets one server-side name derived from its content, every
server connection remembers which of those it has, and the router prepares lazily where one is
missing. Identical statements of different clients share one server statement.

"Content" includes the search_path the statement is parsed under, not just its text: PostgreSQL
resolves table names when it parses, so `SELECT * FROM items` prepared for one schema tenant must
never be executed for another.

Sharing must not make a statement older than the client believes it is: PostgreSQL resolves names
and types when it parses, and DDL (through the router or run on the shard directly) may change
what the same text means. So every client Parse is really parsed, and stamped with a parse epoch
(a counter of parses, increasing); a server connection remembers the epoch of each copy it holds
(`ServerStatements`), and a client whose statement is newer than the copy where its transaction
runs has it parsed again there first (`needs_parse`). A copy as new as the client's own parse is
used as it is: pgbench -M prepared parses once per client, then every Bind finds a fresh enough
copy. Between two clients of one text, the newer parse wins (see README: the older client then
runs the newer parse). Pure: no I/O.
"""

from __future__ import annotations

import hashlib

from router.protocol.pg.frontend import Parse, build_parse

# A server statement's epoch before any parse this process knows of (e.g. one found on the server
# by a read-back): older than every client parse, so the first Bind that needs it parses it again.
UNKNOWN_EPOCH = 0


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


# What one server connection holds under the router's names: server name -> epoch of the parse it
# holds. One dict per connection, changed in place only (the connection's response plan holds it
# too, to undo what a failed or skipped Parse did not do).
ServerStatements = dict[str, int]


def needs_parse(held: ServerStatements, name: str, epoch: int) -> bool:
    """Whether a client statement parsed at `epoch` must be parsed again on a connection holding
    `held`: the connection has no copy, or only one parsed before the client's own Parse."""
    copy = held.get(name)
    return copy is None or copy < epoch


class ClientStatement:
    """One named statement of one client: its Parse, the epoch of that Parse, and its server
    statement under the namespace last asked for (memoised: a Bind costs no hashing)."""

    __slots__ = ("_namespace", "_server", "epoch", "parse")

    def __init__(self, parse: Parse, epoch: int) -> None:
        self.parse = parse
        self.epoch = epoch
        self._namespace: str | None = None
        self._server: ServerStatement | None = None

    def on(self, namespace: str) -> ServerStatement:
        """The server statement for this statement under `namespace`."""
        server = self._server
        if server is None or self._namespace != namespace:
            server = self._server = server_statement_for(self.parse, namespace)
            self._namespace = namespace
        return server


class ClientStatements:
    """One client's named statements (PostgreSQL's rules: a name is defined once until closed)."""

    __slots__ = ("_by_name", "last_unnamed")

    def __init__(self) -> None:
        self._by_name: dict[str, ClientStatement] = {}
        # The client's latest unnamed Parse, re-sent when an unnamed Bind lands on another server.
        self.last_unnamed: bytes | None = None

    def define(self, client_name: str, parse: Parse, epoch: int) -> ClientStatement:
        """Record a Parse of a new name (the caller refuses a name already defined, 42P05)."""
        return self.add(client_name, ClientStatement(parse, epoch))

    def add(self, client_name: str, statement: ClientStatement) -> ClientStatement:
        """Record a statement made beforehand (with its server statement already worked out)."""
        self._by_name[client_name] = statement
        return statement

    def get(self, client_name: str) -> ClientStatement | None:
        return self._by_name.get(client_name)

    def __contains__(self, client_name: str) -> bool:
        return client_name in self._by_name

    def query_of(self, client_name: str) -> str | None:
        """The SQL text of a client's named statement, or None if it is unknown."""
        statement = self._by_name.get(client_name)
        return statement.parse.query if statement is not None else None

    def forget(self, client_name: str) -> None:
        self._by_name.pop(client_name, None)

    def forget_all(self) -> None:
        """DEALLOCATE ALL or DISCARD ALL: every named statement goes (the unnamed one stays)."""
        self._by_name.clear()

    def __len__(self) -> int:
        return len(self._by_name)
