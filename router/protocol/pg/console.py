"""The admin console's wire protocol, sans-IO: what an admin connected to the virtual database
`tenant_router` sends, and the bytes it gets back (as PgBouncer's `pgbouncer` database).

Owns: the console's commands (`COMMANDS`, a table from words to a `Kind`, and `parse_command`:
case-insensitive, one command per query, a trailing semicolon allowed), rendering a `Table` of
values as a real result set (RowDescription, DataRows, CommandComplete, ReadyForQuery) that psql
prints as a table, and `ConsoleProtocol`, the state machine a console connection goes through:
fed bytes, it yields `Run` (a command to carry out), `Reply` (bytes to send) or `Close`. The
extended query protocol is refused (0A000) the way PostgreSQL refuses after an error: everything
up to the next Sync is skipped, and the Sync gets its ReadyForQuery, so no client hangs.

Must not: carry out a command (router.console does, on the running router), import asyncio or
sockets, or forward anything to a server.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from router.errors import ClientProtocolError, ConsoleSyntaxError, ConsoleUnsupported, RouterError
from router.protocol.pg import backend as be
from router.protocol.pg import framing as f

__all__ = [
    "COMMANDS",
    "CONSOLE_DATABASE",
    "MAX_COMMAND_LENGTH",
    "Close",
    "Column",
    "Command",
    "ConsoleProtocol",
    "Kind",
    "Reply",
    "Run",
    "Table",
    "greeting",
    "parse_command",
    "render_failure",
    "render_table",
]

# The virtual database an admin connects to for the console.
CONSOLE_DATABASE: Final = "tenant_router"
# What the console reports as its server_version (clients parse the leading number).
CONSOLE_SERVER_VERSION: Final = "15.0 (tenant-router console)"
# The longest Query message the console reads (its commands are a few words).
MAX_COMMAND_LENGTH: Final = 64 * 1024


class Kind(enum.Enum):
    SHOW_POOLS = "SHOW POOLS"
    SHOW_CLIENTS = "SHOW CLIENTS"
    SHOW_SERVERS = "SHOW SERVERS"
    SHOW_TENANTS = "SHOW TENANTS"
    SHOW_STATS = "SHOW STATS"
    SHOW_HOLDS = "SHOW HOLDS"
    RELOAD = "RELOAD"
    PAUSE = "PAUSE"
    RESUME = "RESUME"
    SUSPEND = "SUSPEND"


# The console's commands: their words (upper case) -> what they are, and whether a tenant follows.
COMMANDS: Final[dict[tuple[str, ...], tuple[Kind, bool]]] = {
    ("SHOW", "POOLS"): (Kind.SHOW_POOLS, False),
    ("SHOW", "CLIENTS"): (Kind.SHOW_CLIENTS, False),
    ("SHOW", "SERVERS"): (Kind.SHOW_SERVERS, False),
    ("SHOW", "TENANTS"): (Kind.SHOW_TENANTS, False),
    ("SHOW", "STATS"): (Kind.SHOW_STATS, False),
    ("SHOW", "HOLDS"): (Kind.SHOW_HOLDS, False),
    ("RELOAD",): (Kind.RELOAD, False),
    ("PAUSE",): (Kind.PAUSE, True),
    ("RESUME",): (Kind.RESUME, True),
    ("SUSPEND",): (Kind.SUSPEND, True),
}
_TRANSACTION_WORDS: Final = frozenset({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"})
_KNOWN: Final = ", ".join(kind.value + (" <tenant>" if takes else "") for kind, takes in COMMANDS.values())


@dataclass(frozen=True, slots=True)
class Command:
    kind: Kind
    tenant: str | None = None  # for PAUSE, RESUME and SUSPEND


def parse_command(text: str) -> Command | None:
    """The command in a Query's text; None for an empty query. Raises ConsoleSyntaxError naming
    what was not understood and listing the known commands."""
    stripped = text.strip()
    while stripped.endswith(";"):
        stripped = stripped[:-1].rstrip()
    if not stripped:
        return None
    if ";" in stripped:
        raise ConsoleSyntaxError(
            "the console runs one command per query", hint=f"send them one at a time; known commands: {_KNOWN}"
        )
    words = stripped.split()
    shown = " ".join(words)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    upper = tuple(word.upper() for word in words)
    for size in (2, 1):
        entry = COMMANDS.get(upper[:size])
        if entry is None:
            continue
        kind, takes_tenant = entry
        rest = words[size:]
        if not takes_tenant:
            if rest:
                raise ConsoleSyntaxError(f'{kind.value} takes no argument, got "{shown}"', hint=f"known: {_KNOWN}")
            return Command(kind)
        if len(rest) != 1:
            raise ConsoleSyntaxError(
                f'{kind.value} needs exactly one tenant, got "{shown}"', hint=f"for example: {kind.value} acme"
            )
        return Command(kind, _unquote(rest[0]))
    if upper[0] in _TRANSACTION_WORDS:
        raise ConsoleSyntaxError(
            f'unknown console command "{shown}": the console has no transactions',
            hint=f"connect in autocommit mode (psycopg: autocommit=True); known commands: {_KNOWN}",
        )
    raise ConsoleSyntaxError(f'unknown console command "{shown}"', hint=f"known commands: {_KNOWN}")


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'":
        return word[1:-1]
    return word


# --- result sets ---------------------------------------------------------------------------------

Value = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    oid: int = be.TEXT_OID


TEXT: Final = be.TEXT_OID
INT8: Final = be.INT8_OID
BOOL: Final = be.BOOL_OID
FLOAT8: Final = be.FLOAT8_OID


@dataclass(frozen=True)
class Table:
    """One result set: `tag` is its CommandComplete tag ("SHOW" gets the row count appended)."""

    tag: str
    columns: tuple[Column, ...]
    rows: list[tuple[Value, ...]] = field(default_factory=list)


def _text(value: Value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


def render_table(table: Table) -> bytes:
    """The whole answer to a command: its result set (if it has columns), its tag, ReadyForQuery."""
    out = bytearray()
    width = len(table.columns)
    if width:
        out += be.row_description([(c.name, c.oid) for c in table.columns])
        for row in table.rows:
            if len(row) != width:
                raise ValueError(f"a row of {len(row)} values for {width} columns ({table.tag})")
            out += be.data_row([_text(v) for v in row])
    tag = f"{table.tag} {len(table.rows)}" if table.tag == "SHOW" else table.tag
    out += be.command_complete(tag) + be.READY_IDLE
    return bytes(out)


def render_failure(exc: RouterError) -> bytes:
    """A command that failed: its ErrorResponse (severity ERROR: the console stays open), then ready."""
    return be.error_response(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint) + be.READY_IDLE


# --- the connection's state machine --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """Carry out `command`, then send `render_table` of its result (or `render_failure`)."""

    command: Command


@dataclass(frozen=True, slots=True)
class Reply:
    """Send these bytes to the admin."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The admin said Terminate: close the connection."""


Event = Run | Reply | Close


class State(enum.Enum):
    READY = "ready"  # between commands: the next message is read
    SKIPPING = "skipping"  # an extended-protocol message was refused: discarding up to Sync
    CLOSED = "closed"  # Terminate read: nothing more is read


# Messages of the extended query protocol (refused); Sync ends them.
_EXTENDED: Final = frozenset({f.PARSE, f.BIND, f.DESCRIBE, f.EXECUTE, f.CLOSE, f.FLUSH})
_COPY: Final = frozenset({f.COPY_DATA, f.COPY_DONE, f.COPY_FAIL})


class ConsoleProtocol:
    """One console connection after login. `receive` bytes, then take `next_event()` until None."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.state = State.READY

    def _move(self, state: State) -> None:
        if self.state is State.CLOSED:
            raise RuntimeError(f"console connection closed: no transition to {state.name}")
        self.state = state

    def receive(self, data: bytes | bytearray) -> None:
        if self.state is not State.CLOSED:
            self._buf += data

    def next_event(self) -> Event | None:
        """The next thing to do, or None until more bytes arrive. Raises ClientProtocolError for
        bytes no client sends (the caller ends the connection with it)."""
        buf = self._buf
        while self.state is not State.CLOSED:
            try:
                header = f.read_header(buf, 0)
            except f.FramingError as exc:
                raise ClientProtocolError(f"invalid message on the admin console: {exc}") from None
            if header is None:
                return None
            mtype, size = header
            if mtype == f.QUERY and size > MAX_COMMAND_LENGTH:
                raise ClientProtocolError(
                    f"console command of {size} bytes: the console reads at most {MAX_COMMAND_LENGTH}"
                )
            if len(buf) < size:
                return None
            body = bytes(buf[5:size])
            del buf[:size]
            event = self._handle(mtype, body)
            if event is not None:
                return event
        return None

    def _handle(self, mtype: int, body: bytes) -> Event | None:
        if mtype == f.TERMINATE:
            self._move(State.CLOSED)
            self._buf.clear()
            return Close()
        if self.state is State.SKIPPING:
            if mtype == f.SYNC:
                self._move(State.READY)
                return Reply(be.READY_IDLE)
            return None  # skipped, as PostgreSQL skips after an error
        if mtype == f.QUERY:
            if not body.endswith(b"\x00"):
                raise ClientProtocolError("console query text is not NUL-terminated")
            try:
                text = body[:-1].decode()
            except UnicodeDecodeError:
                return Reply(render_failure(ConsoleSyntaxError("console command is not valid UTF-8")))
            try:
                command = parse_command(text)
            except ConsoleSyntaxError as exc:
                return Reply(render_failure(exc))
            if command is None:
                return Reply(f.frame(b"I", b"") + be.READY_IDLE)  # EmptyQueryResponse
            return Run(command)
        if mtype in _EXTENDED:
            self._move(State.SKIPPING)
            refused = ConsoleUnsupported(
                "the admin console does not support the extended query protocol",
                hint="send console commands as simple queries (psql does; psycopg: prepare=False, or cursor.execute"
                " without parameters on a ClientCursor)",
            )
            return Reply(be.error_response(refused.sqlstate, refused.message, hint=refused.hint))
        if mtype == f.SYNC:
            return Reply(be.READY_IDLE)
        if mtype == f.FUNCTION_CALL:
            return Reply(render_failure(ConsoleUnsupported("the admin console does not run function calls")))
        if mtype in _COPY:
            return None  # not in COPY mode: PostgreSQL ignores these too
        raise ClientProtocolError(f"unexpected message {chr(mtype)!r} on the admin console")


def table_of(tag: str, columns: Sequence[tuple[str, int]], rows: Sequence[tuple[Value, ...]]) -> Table:
    """A Table from (name, oid) column pairs: how router.console builds its answers."""
    return Table(tag, tuple(Column(name, oid) for name, oid in columns), list(rows))


def greeting(user: str, application_name: str, key: tuple[int, bytes]) -> bytes:
    """What a console connection gets once authenticated: AuthenticationOk, the parameters clients
    expect of a server (psql and libpq read server_version, the encodings and the date style),
    BackendKeyData and ReadyForQuery."""
    out = bytearray(be.authentication_ok())
    parameters = {
        "server_version": CONSOLE_SERVER_VERSION,
        "server_encoding": "UTF8",
        "client_encoding": "UTF8",
        "DateStyle": "ISO, MDY",
        "IntervalStyle": "postgres",
        "TimeZone": "UTC",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
        "is_superuser": "off",
        "session_authorization": user,
        "application_name": application_name,
    }
    for name, value in parameters.items():
        out += be.parameter_status(name, value)
    out += be.backend_key_data(*key) + be.READY_IDLE
    return bytes(out)
