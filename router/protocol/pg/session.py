"""One client's PostgreSQL session, sans-IO: client messages in, bytes for the server and the client out.

Owns the session as the client believes it to be (tenant, settings, named prepared statements, the
session state that pins a server connection) and the server-session model of the connection it is
attached to (router.protocol.pg.server_session): it alone changes what that model says is
prepared, applied, entered, pinned or left. It handles each client message (Query, Parse, Bind,
Describe, Execute, Close, Sync, Flush, Copy*, FunctionCall): renames prepared statements to their
server names, judges statements (session effects, refusals, what they may leave for the exact
hand-over), switches tenants (SET/RESET/SHOW router.tenant), skips to the Sync after a refusal,
reads the intent of a transaction's first request (may it run on a replica?), and decides what to
read back when a transaction ends.

The adapter (router.net.client) drives it: `receive` the client's bytes, `run` until it stops for
a server connection (`Need.SERVER`; then `attach` one), the client's goodbye or a protocol error;
send `out` to the server and `to_client` to the client. Messages are framed by length and passed on
as the client's own buffers; only control messages are decoded.

Must not: do I/O, import asyncio or the network layer, or take connections (router.core.lease does).
"""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING, Final

from router.core.handover import Handover
from router.errors import (
    ClientProtocolError,
    InvalidAuthorization,
    RouterError,
    TenantSwitchRefused,
)
from router.isolation import quote_literal
from router.protocol.pg import backend as be
from router.protocol.pg import framing as f
from router.protocol.pg import frontend as fe
from router.protocol.pg.extended import ExtendedProtocol
from router.protocol.pg.handover import handover_reset
from router.protocol.pg.read_back import ReadBack, Rows, commit_position, settings_in_force, statements_found
from router.protocol.pg.read_intent import message_reads, request_reads
from router.protocol.pg.session_core import Phase, ServerAddress, SessionRouter
from router.protocol.pg.wal import COMMIT_POSITION_SQL
from router.sql.analysis import analyse_text
from router.sql.inert_statements import LEAVES_ANYTHING
from router.sql.session_sql import PREPARED_NAMES_SQL, raise_sql, settings_in_force_sql
from router.sql.statements import classify
from router.sql.tenant_statements import MARKER as TENANT_MARKER
from router.sql.tenant_statements import TenantStatement, parse_tenant_statement

if TYPE_CHECKING:
    from router.core.target import Target
    from router.protocol.pg.server_session import ServerSession

_SERIALS = itertools.count(1)


class Need(enum.Enum):
    """Why `run` stopped."""

    NOTHING = "nothing"  # every complete message is handled, or a wait holds them
    SERVER = "server"  # the next message needs a server connection (`read_next`: may use a replica)
    CLOSE = "close"  # the client said goodbye (Terminate): send what is due, then close
    FAIL = "fail"  # a protocol error (`failure`): the session ends with it, FATAL


class Ending(enum.Enum):
    """What to do with the server connection when a transaction has ended."""

    KEEP = "keep"  # session state pins it, or session pooling: the session keeps it
    RELEASE = "release"  # let it go (the session has forgotten it)
    READ_BACK = "read back"  # run the `read_backs` on it first, then ask `read_back_done`


# Enum members as C statics: compiled, `Phase.ROUTING` is a lookup through the enum's metaclass.
_ENDING_KEEP: Final = Ending.KEEP
_ENDING_READ_BACK: Final = Ending.READ_BACK
_ENDING_RELEASE: Final = Ending.RELEASE
_HANDOVER_AS_IS: Final = Handover.AS_IS
_HANDOVER_KEPT: Final = Handover.KEPT
_NEED_CLOSE: Final = Need.CLOSE
_NEED_FAIL: Final = Need.FAIL
_NEED_NOTHING: Final = Need.NOTHING
_NEED_SERVER: Final = Need.SERVER
_PHASE_CLOSED: Final = Phase.CLOSED
_PHASE_READING_BACK: Final = Phase.READING_BACK
_PHASE_ROUTING: Final = Phase.ROUTING
_PHASE_WAITING: Final = Phase.WAITING
_READ_BACK_COMMIT_POSITION: Final = ReadBack.COMMIT_POSITION
_READ_BACK_PREPARED: Final = ReadBack.PREPARED
_READ_BACK_SETTINGS: Final = ReadBack.SETTINGS


class PgSession(ExtendedProtocol):
    """One client's PostgreSQL session. See the module docstring."""

    __slots__ = (
        "_judged",
        "_pending",
        "failure",
        "login_tenant",
        "read_backs",
        "reported",
        "tenant_switch_allowed",
        "user",
    )

    def __init__(self, router: SessionRouter) -> None:
        super().__init__(router, next(_SERIALS))
        self.user = ""
        self.login_tenant: str | None = None
        self.tenant_switch_allowed = False
        self.reported: dict[str, str] = {}  # ParameterStatus values the client has been told
        self.failure: RouterError | None = None  # why the session fails (_NEED_FAIL)
        self.read_backs: list[ReadBack] = []  # what to read back before the server goes (_ENDING_READ_BACK)
        self._pending = b""  # what the client sent that is not handled yet, from its first byte
        self._judged = False  # the read intent of the message at the head of `_pending` is known

    # --- driven by the adapter ------------------------------------------------------------------

    def start(self) -> None:
        """Login is done: route the client's messages."""
        self._enter(_PHASE_ROUTING)

    def receive(self, data: bytes) -> None:
        """Bytes from the client, handled by the next `run`."""
        self._pending = self._pending + data if self._pending else data

    def run(self) -> Need:
        """Handle the complete messages received, until one needs what the adapter must provide."""
        data = self._pending
        pos = 0
        end = len(data)
        need = _NEED_NOTHING
        try:
            while self.phase is _PHASE_ROUTING:
                header = f.read_header(data, pos)
                if header is None:
                    break
                mtype, size = header
                if pos + size > end:
                    break
                msg = data if size == end else data[pos : pos + size]
                if self._discarding:
                    self._discard(mtype, msg)
                    pos += size
                    continue
                if mtype == f.TERMINATE:
                    need = _NEED_CLOSE
                    pos += size
                    break
                policy = self.read_policy
                if policy is not None:
                    if self.server is None:
                        reads = request_reads(policy, data, pos, self.statements)
                        self.read_next = reads
                        # A transaction that only reads commits nothing to wait for (read-your-writes);
                        # followed message by message, as a batch may not have arrived whole.
                        self._plain_next = reads or message_reads(policy.plain, msg, self.statements)
                        self._judged = True
                    elif self._judged:
                        self._judged = False  # judged above, before the server came for it
                    elif self._plain_next and not message_reads(policy.plain, msg, self.statements):
                        self._plain_next = False  # this transaction may write after all
                if not self._handle(mtype, msg):
                    if self._discarding:
                        continue  # refused: the message is discarded on the next pass
                    need = _NEED_SERVER
                    break
                pos += size
        except f.FramingError as framing_error:
            self.failure = ClientProtocolError(f"invalid message from the client: {framing_error}")
            need = _NEED_FAIL
        except ClientProtocolError as exc:
            self.failure = exc
            need = _NEED_FAIL
        # What is left stays as it came, without a copy when nothing was handled.
        self._pending = (data[pos:] if pos else data) if pos < end else b""
        return need

    def _discard(self, mtype: int, msg: bytes) -> None:
        """After a refused request: drop messages up to the next Sync (or this Query)."""
        if self.server is not None:
            # The server raised the error (_raise_in_pipeline) and skips to the Sync: that Sync is its
            # to answer.
            if mtype == f.SYNC:
                self._discarding = False
                self._on_sync(msg)
        elif mtype == f.SYNC or mtype == f.QUERY:
            self._discarding = False
            self.to_client.append(be.ready_for_query(self._tx_status()))

    def attach(self, server: ServerSession, target: Target, address: ServerAddress) -> Handover:
        """A server connection for the request that needed one: make its session this client's
        (the exact hand-over's reset first, when another client had it). Returns what that took."""
        self.server = server
        self._address = address
        self._enter(_PHASE_ROUTING)
        reset: str | None = None
        handover = _HANDOVER_KEPT
        if server.owner != self.serial:
            if server.owner is not None:
                handover = _HANDOVER_AS_IS
                if self._exact_handover:
                    reset, handover = handover_reset(server, self.tenant)
            server.owner = self.serial
            server.owner_tenant = self.tenant
        self._sync(server, target, reset)
        return handover

    def resume(self) -> None:
        """The wait for a server connection ended without one (a hold released, a pool gone): ask again."""
        if self.phase is _PHASE_WAITING:
            self._enter(_PHASE_ROUTING)

    def transaction_ended(self, track_writes: bool) -> Ending:
        """The attached server finished everything sent and is idle. `track_writes`: its commits are
        followed for read-your-writes (router.core.lease)."""
        server = self.server
        assert server is not None
        commit = track_writes and not self._plain_next
        if self._watched is not None or commit or server.prepared_unsure:
            backs = self.read_backs
            backs.clear()
            if self._watched is not None:
                backs.append(_READ_BACK_SETTINGS)
            if server.prepared_unsure:
                backs.append(_READ_BACK_PREPARED)
            if commit:
                backs.append(_READ_BACK_COMMIT_POSITION)
            self._enter(_PHASE_READING_BACK)
            return _ENDING_READ_BACK
        return self._release_or_keep()

    def _release_or_keep(self) -> Ending:
        if self._transaction_pooling and not self.pins:
            self.server = None
            return _ENDING_RELEASE
        return _ENDING_KEEP

    def read_back_sql(self, kind: ReadBack) -> str:
        if kind is _READ_BACK_SETTINGS:
            watched, self._watched = self._watched or set(), None
            return settings_in_force_sql(watched | set(self.settings))
        if kind is _READ_BACK_PREPARED:
            return PREPARED_NAMES_SQL
        return COMMIT_POSITION_SQL

    def read_back(self, kind: ReadBack, rows: Rows) -> int:
        """Take one read-back's rows; returns the commit's WAL position (COMMIT_POSITION), else 0.
        Raises BackendUnavailable when the rows do not answer."""
        server = self.server
        assert server is not None
        if kind is _READ_BACK_SETTINGS:
            in_force = settings_in_force(rows)
            server.applied = in_force
            server.entered = None  # a RESET ALL or DISCARD ALL may have left the tenant: enter again
            context = self._context_keys()
            # What is not set in this session falls back to the startup value, as RESET does on a server.
            self.settings = {**self.startup_settings, **{k: v for k, v in in_force.items() if k not in context}}
            self._desired = None
            self._follow_read_only()
        elif kind is _READ_BACK_PREPARED:
            statements_found(rows, server.prepared)
            server.prepared_unsure = False
        else:
            return commit_position(rows)
        return 0

    def read_back_done(self) -> Ending:
        """Every read-back is in: the connection may go."""
        if self.phase is not _PHASE_READING_BACK:
            return _ENDING_KEEP
        self._enter(_PHASE_ROUTING)
        return self._release_or_keep() if self.server is not None else _ENDING_KEEP

    def server_lost(self) -> None:
        self.server = None

    def close(self) -> None:
        self._enter(_PHASE_CLOSED)

    def report_parameters(self, params: dict[str, str]) -> bytes:
        """ParameterStatus messages for what the client has not been told yet (b"" if nothing)."""
        out = bytearray()
        reported = self.reported
        for name, value in params.items():
            if reported.get(name) != value:
                reported[name] = value
                out += be.parameter_status(name, value)
        return bytes(out)

    def _context_keys(self) -> frozenset[str]:
        try:
            return frozenset(self.target().context) | {self.router.tenant_setting}
        except RouterError:
            return frozenset({self.router.tenant_setting})

    def _handle(self, mtype: int, msg: bytes) -> bool:
        """Dispatch one client message. A chain of tests rather than a table of methods: compiled,
        each branch is a direct call (router/native.py); the most frequent types come first."""
        if mtype == f.QUERY:
            return self._on_query(msg)
        if mtype == f.BIND:
            return self._on_bind(msg)
        if mtype == f.EXECUTE:
            return self._on_execute(msg)
        if mtype == f.SYNC:
            return self._on_sync(msg)
        if mtype == f.PARSE:
            return self._on_parse(msg)
        if mtype == f.DESCRIBE:
            return self._on_describe(msg)
        if mtype == f.CLOSE:
            return self._on_close(msg)
        if mtype == f.FLUSH:
            return self._on_flush(msg)
        if mtype == f.COPY_DATA or mtype == f.COPY_DONE or mtype == f.COPY_FAIL:
            return self._on_copy(msg)
        if mtype == f.FUNCTION_CALL:
            return self._on_function_call(msg)
        raise ClientProtocolError(f"unexpected message type {chr(mtype)!r} from the client")

    # --- simple query and tenant switching ------------------------------------------------------

    def _on_query(self, msg: bytes) -> bool:
        if msg.find(TENANT_MARKER) >= 0:  # not `in`: for bytes it first tries, and fails, an int
            statement = parse_tenant_statement(fe.parse_query(msg))
            if statement is not None:
                return self._tenant_statement(statement)
        if len(self.statements) and self._names_protocol_statement(fe.parse_query(msg)):
            return False
        server = self._server()
        if server is None:
            return False
        if self._exact_handover and server.residue != LEAVES_ANYTHING:
            # One analysis gives both verdicts (router.sql.analysis), from the text as it came.
            analysis = analyse_text(fe.query_bytes(msg))
            left = analysis.residue
            if left != LEAVES_ANYTHING:
                if left > server.residue:
                    server.residue = left  # what the next hand-over clears
                return self._send_query(server, msg)  # such a text has no session effects either
            server.residue = LEAVES_ANYTHING  # so the next hand-over wipes the session
            effects = analysis.effects
        else:
            effects = classify(fe.parse_query(msg))
        if not effects.empty:
            refusal = self._session_effects(effects, server)
            if refusal is not None:
                msg = fe.query(refusal)
        return self._send_query(server, msg)

    def _tenant_statement(self, statement: TenantStatement) -> bool:
        server = self.server
        busy = server is not None and (server.tx_status != be.TX_IDLE or bool(server.plan))
        if statement.kind == "show":
            if busy:
                assert server is not None
                return self._forward_query(server, f'SELECT {quote_literal(self.tenant or "")} AS "router.tenant"')
            self.to_client.append(be.show_result("router.tenant", self.tenant or ""))
            return True
        new = statement.tenant if statement.kind == "set" else self.login_tenant
        if busy:
            assert server is not None
            # Inside a transaction: let the server raise the error so the transaction is aborted
            # exactly as PostgreSQL would abort it.
            message = "cannot switch tenant inside a transaction; COMMIT or ROLLBACK first"
            return self._forward_query(server, raise_sql("25001", message))
        try:
            if not self.tenant_switch_allowed:
                raise InvalidAuthorization(
                    f'user "{self.role}" is not allowed to switch tenant',
                    hint="mark the user with tenant_switch: true in the router config",
                )
            if new is None:
                raise TenantSwitchRefused("this session has no tenant to return to")
            target = self.router.resolve_target(new)
            self.router.move_client(self.tenant, new)
        except RouterError as exc:
            self.router.count_error(exc.sqlstate)
            self.to_client.append(
                be.error_response(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)
                + be.ready_for_query(self._tx_status())
            )
            return True
        self.tenant = new
        self._desired = None
        if server is not None:  # a kept server (session mode, pins): bring it to the new tenant now
            self._sync(server, target)
        self.to_client.append(be.command_complete("RESET" if statement.kind == "reset" else "SET") + be.READY_IDLE)
        return True

    def _forward_query(self, server: ServerSession, sql: str) -> bool:
        return self._send_query(server, fe.query(sql))
