"""One client connection: the only place where a client and a server connection meet.

Owns the client's socket, its session as the client believes it to be (tenant, settings, named
prepared statements), and the server connection attached to it for the current transaction.
Login (startup and authentication) lives in `login.py`; decisions about tenants and pools come from
the `RouterContext`. Client messages are framed by length; only those that routing needs are
decoded, and server output is forwarded by the server connection, never parsed here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import logging
from typing import TYPE_CHECKING, Final, cast

from router.core.handover import Handover
from router.core.lease import Lease
from router.errors import (
    BackendUnavailable,
    ClientProtocolError,
    DuplicatePreparedStatement,
    InvalidAuthorization,
    NoTenant,
    ProtocolStatementFromSql,
    RouterError,
    TenantSwitchRefused,
)
from router.isolation import quote_literal
from router.net.flow import FlowSide
from router.net.server import ServerConnection, ServerState
from router.protocol.pg import backend as be
from router.protocol.pg import framing as f
from router.protocol.pg import frontend as fe
from router.protocol.pg import responses as r
from router.protocol.pg.prepared import (
    UNKNOWN_EPOCH,
    ClientStatement,
    ClientStatements,
    ServerStatement,
    needs_parse,
)
from router.protocol.pg.read_intent import ReadPolicy, message_reads, read_only_session, request_reads
from router.protocol.pg.wal import COMMIT_POSITION_SQL, parse_lsn, record_end
from router.sql.inert_statements import (
    LEAVES_ANYTHING,
    LEAVES_NOTHING,
    LEAVES_SEQUENCES,
    residue,
    residue_text,
    trusted_search_path,
)
from router.sql.prepared_sql import statement_names_used
from router.sql.session_sql import (
    HANDOVER_DEALLOCATE,
    HANDOVER_DISCARD_SEQUENCES,
    HANDOVER_RESET,
    PREPARED_NAMES_SQL,
    raise_sql,
    session_sync_sql,
    settings_in_force_sql,
)
from router.sql.statements import PREPARE, Effects, classify
from router.sql.tenant_entry import ENTER_TENANT_SQL, LEAVE_TENANT_SQL
from router.sql.tenant_statements import MARKER as TENANT_MARKER
from router.sql.tenant_statements import TenantStatement, parse_tenant_statement

if TYPE_CHECKING:
    from router.core.pool import Pool
    from router.core.target import Target
    from router.net.context import RouterContext

log = logging.getLogger(__name__)

_SERIALS = itertools.count(1)
# Leaving the entered tenant: a statement of its own, so that it holds whatever fails after it.
_LEAVE_TENANT: Final = fe.query(LEAVE_TENANT_SQL)
_ENTER_TENANT_PARSE: Final = fe.build_parse("", ENTER_TENANT_SQL, b"\x00\x00")
# Parse epochs (router.protocol.pg.prepared): one counter for the process, whose server connections
# are the only ones it compares epochs on.
_PARSES = itertools.count(1)
_REMEMBERED_PARSE_LIMIT: Final = 4096  # bytes of the last Parse message a session keeps decoded
_ROLE_STATEMENTS_REFUSED: Final = (
    "statements on roles (CREATE, ALTER, DROP ROLE or USER, GRANT or REVOKE of a role) are not allowed"
    " through tenant-router: the router logs in to the shards as these roles for every tenant that uses them"
)
_LARGE_OBJECTS_REFUSED: Final = (
    "large objects are not available to shared tenants: they belong to the server role that every shared"
    " tenant acts as, and row-level security does not cover them, so other tenants could read them;"
    " store the data in a bytea column of a protected table"
)
_FUNCTION_CALLS_REFUSED: Final = (
    "the fast-path function call protocol (used for large objects, e.g. psql's \\lo_import) is not available"
    " to shared tenants: large objects belong to the server role that every shared tenant acts as"
)


class SessionState(enum.Enum):
    LOGIN = "login"  # startup and authentication (login.py drives this)
    READY = "ready"  # logged in; messages are routed
    CLOSED = "closed"


class ClientSession:
    """A client connection. See the module docstring."""

    # Slots: ten thousand idle clients must stay cheap (no per-instance __dict__).
    __slots__ = (
        "_acquiring",
        "_buf",
        "_desired",
        "_desired_for",
        "_discarding",
        "_effects",
        "_exact_handover",
        "_last_parse",
        "_login_task",
        "_login_waiter",
        "_out",
        "_pending",
        "_plain_next",
        "_read_next",
        "_residues",
        "_targets",
        "_transaction_pooling",
        "_watched",
        "flow",
        "key",
        "lease",
        "login_tenant",
        "peer",
        "pins",
        "read_policy",
        "reported",
        "role",
        "router",
        "serial",
        "server",
        "settings",
        "startup_settings",
        "state",
        "statements",
        "tenant",
        "tenant_switch_allowed",
        "transport",
        "user",
    )

    def __init__(self, router: RouterContext) -> None:
        self.router = router
        # Fixed for the router's lifetime, and read on every transaction: kept here (compiled, a
        # field read) rather than looked up on the router each time.
        self._exact_handover = router.exact_handover
        self._transaction_pooling = router.transaction_pooling
        self._targets = router.targets
        # The server connection this session holds, and taking and giving it back (router.core.lease).
        self.lease = Lease(router, self._lease_granted, self._lease_resume, self._lease_refused)
        self.state = SessionState.LOGIN
        self.transport: asyncio.Transport | None = None
        self.flow = FlowSide()  # linked to the attached server's (router.net.flow)
        self.peer = "?"
        # Identity, filled in by login.
        self.user = ""
        self.role = ""
        self.tenant: str | None = None
        self.login_tenant: str | None = None
        self.tenant_switch_allowed = False
        self.serial = next(_SERIALS)
        self.settings: dict[str, str] = {}  # session settings in force for the client (startup, SET...)
        self.startup_settings: dict[str, str] = {}  # what RESET ALL returns to
        self.reported: dict[str, str] = {}  # ParameterStatus values the client has been told
        self.pins: set[str] = set()  # session state kinds that keep the server connection
        self._watched: set[str] | None = None  # settings changed in this transaction: re-read them
        self._effects: dict[str, Effects] | None = None  # session effects of prepared statements
        self._last_parse: tuple[bytes, fe.Parse, Effects | None, int] | None = None  # the last Parse, judged
        # What the prepared statements may leave in a session, by name, when less than anything
        # (router.sql.inert_statements): the level follows a statement to the Binds that run it.
        self._residues: dict[str, int] | None = None
        self._desired: dict[str, str] | None = None  # settings + tenant context, for the target below
        self._desired_for: Target | None = None
        self.key: tuple[int, bytes] = (0, b"")
        # Routing state.
        self.server: ServerConnection | None = None
        self.statements = ClientStatements()
        # Read/write splitting (None: every transaction goes to the primary).
        self.read_policy: ReadPolicy | None = None
        self._read_next = False  # the request about to take a server may run on a replica
        self._plain_next = False  # ... and it only reads, wherever it runs
        self._buf = bytearray()  # pieces of what the client sent, gathered until routed
        self._pending: bytes = b""  # or one whole chunk routing stopped at (waiting for a server, say)
        self._out: list[bytes] = []
        # Reading settings back after a transaction: holds the message loop (as a wait in the lease does).
        self._acquiring: asyncio.Task[None] | None = None
        self._discarding = False  # after a refused request: drop messages up to the next Sync
        self._login_task: asyncio.Task[None] | None = None
        self._login_waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol (implemented, not inherited: a compiled class has no Python base) -------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.flow.opened(self.transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        from router.net.login import login  # login.py imports this module's types

        self._login_task = asyncio.get_running_loop().create_task(login(self))

    def data_received(self, data: bytes) -> None:
        if self.state is SessionState.READY:
            if self._pending:  # held back whole: now it has company, gather both
                self._buf += self._pending
                self._pending = b""
            if self._buf:  # the rest of a message that arrived in pieces, or work held back
                self._buf += data
                self._process()
            else:
                self._route(data)
        else:
            self._buf += data
            waiter = self._login_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown()

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: the transport closes, connection_lost follows

    def pause_writing(self) -> None:
        # The client is slower than the server: reading from the server stops until it catches up.
        self.flow.writing_paused()

    def resume_writing(self) -> None:
        self.flow.writing_resumed()

    @property
    def pool(self) -> Pool | None:
        """The pool of the server connection held (for the router's cancel)."""
        return self.lease.pool

    # --- Attachment (called by the server connection) ---------------------------------------------

    def write_to_client(self, data: bytes | bytearray | memoryview) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def server_ready(self, server: ServerConnection) -> None:
        """The server finished everything we sent and is idle: learn the settings the transaction
        changed, then, in transaction mode and unless session state pins it, let it go."""
        if server is not self.server or server.tx_status != be.TX_IDLE:
            return
        tracking = self._commit_to_note
        if self._watched is not None or tracking or server.session.prepared_unsure:
            if tracking:
                self.lease.commit_pending(self.tenant)
            self._acquiring = asyncio.get_running_loop().create_task(self._after_transaction(server))
        elif self._transaction_pooling and not self.pins:
            self._release_server()

    def report_parameters(self, params: dict[str, str]) -> None:
        out = bytearray()
        reported = self.reported
        for name, value in params.items():
            if reported.get(name) != value:
                reported[name] = value
                out += be.parameter_status(name, value)
        if out:
            self.write_to_client(out)

    async def _after_transaction(self, server: ServerConnection) -> None:
        """Bookkeeping on the server before it is let go: settings the transaction changed, and
        the WAL position a write reached (for read-your-writes)."""
        try:
            await self._read_back(server)
        finally:
            self.lease.commit_settled()

    async def _read_back(self, server: ServerConnection) -> None:
        if self._watched is not None and not await self._read_back_settings(server):
            return
        if server.session.prepared_unsure and not await self._read_back_statements(server):
            return
        if self._commit_to_note and not await self._note_commit_position(server):
            return
        self._acquiring = None
        if self.state is not SessionState.READY:
            return
        if self.server is server and self._transaction_pooling and not self.pins:
            self._release_server()
        self._process()

    @property
    def _commit_to_note(self) -> bool:
        """The transaction ending may have written on a primary whose reads replicas serve."""
        return self.lease.track_writes and not self._plain_next

    async def _rows_before_release(
        self, server: ServerConnection, sql: str, what: str
    ) -> list[list[str | None]] | None:
        """Run one of the router's own queries on the server a transaction just ended on. If it
        fails, the session cannot go on as the client believes it is: it ends (FATAL), and None."""
        try:
            _reported, error, rows = await server.query_internal(sql)
        except RouterError as exc:
            self._acquiring = None
            self.fatal(exc)
            return None
        if error is not None:
            self._acquiring = None
            self.fatal(BackendUnavailable(f"could not {what}: {error.message}"))
            return None
        return rows

    async def _note_commit_position(self, server: ServerConnection) -> bool:
        """The end of the primary's WAL now, after the commit: any replica that has replayed
        up to it has the commit, so this session's (or tenant's) next reads go only to those."""
        rows = await self._rows_before_release(server, COMMIT_POSITION_SQL, "read the WAL position")
        if rows is None:
            return False
        if not rows:
            self._acquiring = None
            self.fatal(BackendUnavailable("could not read the WAL position: no row"))
            return False
        lsn = record_end(parse_lsn(str(rows[0][0])), int(str(rows[0][1])), int(str(rows[0][2])))
        self.lease.commit_noted(self.tenant, lsn)
        return True

    async def _read_back_statements(self, server: ServerConnection) -> bool:
        """After a client's statement that may have dropped the router's statements (DEALLOCATE,
        DISCARD ALL: it may also have failed): the names the server really has. One whose epoch
        the record lost is older than any client's parse, so it is parsed again where used."""
        rows = await self._rows_before_release(server, PREPARED_NAMES_SQL, "read prepared statements back")
        if rows is None:
            return False
        held = server.session.prepared
        found = {str(row[0]): held.get(str(row[0]), UNKNOWN_EPOCH) for row in rows}
        held.clear()
        held.update(found)
        server.session.prepared_unsure = False
        return True

    async def _read_back_settings(self, server: ServerConnection) -> bool:
        """After a transaction that changed settings: ask the server what is now in force (exact,
        whatever form the change took), so those settings follow the client to other servers."""
        watched, self._watched = self._watched or set(), None
        sql = settings_in_force_sql(watched | set(self.settings))
        rows = await self._rows_before_release(server, sql, "read session settings back")
        if rows is None:
            return False
        in_force = {str(row[0]): str(row[1]) for row in rows if row[1]}
        server.session.applied = in_force
        server.session.entered = None  # a RESET ALL or DISCARD ALL may have left the tenant: enter again
        context = self._context_keys()
        # What is not set in this session falls back to the startup value, as RESET does on a server.
        self.settings = {**self.startup_settings, **{k: v for k, v in in_force.items() if k not in context}}
        self._desired = None
        self._follow_read_only()
        return True

    def _follow_read_only(self) -> None:
        """The session's settings changed: a session that is read-only no more (SET
        default_transaction_read_only = off) sends its transactions to the primary again."""
        policy = self.read_policy
        if policy is not None:
            user = self.router.user(self.role)
            read_only = read_only_session(user is not None and user.read_only, self.settings)
            if read_only != policy.read_only:
                self.read_policy = dataclasses.replace(policy, read_only=read_only)

    def _context_keys(self) -> frozenset[str]:
        try:
            return frozenset(self._target().context) | {self.router.tenant_setting}
        except RouterError:
            return frozenset({self.router.tenant_setting})

    def server_lost(self, server: ServerConnection, reason: str) -> None:
        if server is not self.server:
            return
        self.server = None
        self.lease.lost(reason)
        if server.fatal_forwarded:
            self.close()  # the client has the server's own FATAL: a second error would replace it
        else:
            self.fatal(BackendUnavailable(f"lost the server connection to {server.label}: {reason}"))

    # --- login support ----------------------------------------------------------------------------

    async def wait_for_data(self) -> None:
        self._login_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._login_waiter
        finally:
            self._login_waiter = None

    def take_buffer(self) -> bytearray:
        return self._buf

    def start_routing(self) -> None:
        """Login is done: route whatever the client has already sent."""
        self.state = SessionState.READY
        if self._buf or self._pending:
            self._process()

    # --- message loop -----------------------------------------------------------------------------

    def _process(self) -> None:
        """Route what has been held back."""
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
        else:
            data = self._pending
            self._pending = b""
        self._route(data)

    def _route(self, data: bytes) -> None:
        """Route the complete messages in `data`; keep the rest for later. A message that fills
        `data` exactly is routed without being copied."""
        pos = 0
        end = len(data)
        try:
            lease = self.lease
            while self._acquiring is None and not lease.waiting and self.state is SessionState.READY:
                header = f.read_header(data, pos)
                if header is None:
                    break
                mtype, size = header
                if pos + size > end:
                    break
                msg = data if size == end else data[pos : pos + size]
                if self._discarding:
                    if self.server is not None:
                        # The server raised the error (_raise_in_pipeline) and skips to the Sync:
                        # that Sync is its to answer.
                        if mtype == f.SYNC:
                            self._discarding = False
                            self._on_sync(msg)
                    elif mtype in (f.SYNC, f.QUERY):
                        self._discarding = False
                        self.write_to_client(be.ready_for_query(self._tx_status()))
                    pos += size
                    continue
                if mtype == f.TERMINATE:
                    self._flush_out()
                    self.close()
                    return
                policy = self.read_policy
                if policy is not None:
                    if self.server is None:
                        reads = request_reads(policy, data, pos, self.statements)
                        self._read_next = reads
                        # A transaction that only reads commits nothing to wait for (read-your-writes);
                        # followed message by message, as a batch may not have arrived whole.
                        self._plain_next = reads or message_reads(policy.plain, msg, self.statements)
                    elif self._plain_next and not message_reads(policy.plain, msg, self.statements):
                        self._plain_next = False  # this transaction may write after all
                if not self._handle(mtype, msg):
                    if self._discarding:
                        continue  # refused: the message is discarded on the next pass
                    break  # in line for a server connection; resume when it comes
                pos += size
        except f.FramingError as framing_error:
            self.fatal(ClientProtocolError(f"invalid message from the client: {framing_error}"))
            return
        except ClientProtocolError as exc:
            self.fatal(exc)
            return
        if pos < end:
            # Nothing else is held here (`_process` took it all, or there was none): keep the rest
            # as it came, without a copy.
            self._pending = data[pos:] if pos else data
        self._flush_out()

    def _flush_out(self) -> None:
        out = self._out
        if out and self.server is not None:
            self.server.send(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        if self.server is not None:
            self.server.flush_ready()

    def _server(self) -> ServerConnection | None:
        """The attached server, or None: then either the client is in line for one (the caller
        stops until it comes) or the request was refused (the caller's message is discarded)."""
        server = self.server
        if server is not None:
            if self._desired is None and not server.plan and server.tx_status != be.TX_FAILED:
                # Settings changed under a server we keep (pinned, session mode): re-apply them.
                # Not in a failed transaction: the server would refuse them and the client get the
                # errors (on its ROLLBACK, say); the first message after the rollback applies them.
                self._sync_session(server, self._target())
            return server
        try:
            conn = self.lease.acquire(self._target(), self._read_next, self.read_policy is not None)
        except RouterError as exc:
            self._refuse(exc)
            return None
        if conn is not None:
            self._attach(conn)
        return conn

    def _lease_resume(self) -> None:
        """A wait in the lease ended without a connection: ask again."""
        if self.state is SessionState.READY:
            self._process()

    def _lease_granted(self) -> None:
        conn = self.lease.conn
        assert conn is not None
        self._attach(conn)
        self._process()

    def _lease_refused(self, exc: RouterError) -> None:
        if self.state is SessionState.READY:
            self._refuse(exc)
            self._process()

    def _shares_role(self) -> bool:
        """Whether this session's server role is the router's own, shared by tenants (hardened)."""
        try:
            return self._target().shares_role
        except RouterError:
            return False  # no tenant: a trusted user, whose statements the acquire path judges

    def _target(self) -> Target:
        tenant = self.tenant
        if tenant is None:
            raise NoTenant(
                "no tenant selected for this session",
                hint="run SET router.tenant = '<tenant id>' first",
            )
        target = self._targets.get(tenant)  # the router's own dict: no call while nothing changed
        return target if target is not None else self.router.resolve_target(tenant)

    def _attach(self, conn: ServerConnection) -> None:
        target = self.lease.target
        assert target is not None
        conn.attach(self)
        self.server = conn
        reset: str | None = None
        handover = Handover.KEPT
        if conn.session.owner != self.serial:
            if conn.session.owner is not None:
                handover = Handover.AS_IS
                if self._exact_handover:
                    reset, handover = _handover_reset(conn, self.tenant)
            conn.session.owner = self.serial
            conn.session.owner_tenant = self.tenant
        self.lease.count_handover(handover)
        self._sync_session(conn, target, reset)

    def _desired_settings(self, target: Target) -> dict[str, str]:
        desired = self._desired
        if desired is None or self._desired_for is not target:
            desired = self._desired = _shared_settings({**self.settings, **target.context})
            self._desired_for = target
        return desired

    def _sync_session(self, conn: ServerConnection, target: Target, reset: str | None = None) -> None:
        """Make the server session match this client, in the same write as its first message; the
        responses are swallowed. In order, each in a transaction of its own: leave the tenant the
        session had entered (unless it had none), the reset and settings as one statement list,
        then enter this client's tenant (router/admin/rls.py). A failing enter thus leaves no tenant,
        never the previous client's; and the settings, which the client chose, run after the leave
        and cannot make it fail. A failure marks the connection to be dropped on release."""
        desired = self._desired_settings(target)
        entry = target.entry
        settings_in_sync = reset is None and (conn.session.applied is desired or conn.session.applied == desired)
        if settings_in_sync and (entry is None or conn.session.entered == entry.tenant):
            return
        out, plan = self._out, conn.plan
        if entry is not None and conn.session.entered != entry.tenant and conn.session.entered != "":
            out.append(_LEAVE_TENANT)
            plan.expect(r.ENDS_SYNC, swallow=True, setup=True)
            conn.session.entered = ""
        sql = None if settings_in_sync else session_sync_sql(conn.session.applied, desired)
        if reset is not None:
            sql = f"{reset}; {sql}" if sql else reset
        if sql is not None:
            out.append(fe.query(sql))
            plan.expect(r.ENDS_SYNC, swallow=True, setup=True)
            conn.session.unnamed = None
        if entry is not None and entry.tenant and conn.session.entered != entry.tenant:
            out.append(
                _ENTER_TENANT_PARSE + fe.bind("", "", (entry.tenant, entry.signature)) + fe.execute("") + fe.SYNC
            )
            plan.expect(r.ENDS_SYNC, swallow=True, setup=True)
            conn.session.unnamed = None
            conn.session.entered = entry.tenant
        conn.session.applied = desired  # shared, never changed in place: replaced when the settings change
        if conn.session.residue != LEAVES_ANYTHING and not trusted_search_path(self.settings):
            # The client's search_path may resolve a name in an inert text to a tenant's object,
            # whose code may leave state: as long as it is applied, the session is not clean.
            conn.session.residue = LEAVES_ANYTHING

    def _release_server(self) -> None:
        self.server = None
        self.lease.release()

    def _tx_status(self) -> int:
        return self.server.tx_status if self.server is not None else be.TX_IDLE

    def _refuse(self, exc: RouterError) -> None:
        """Fail the request at the head of the buffer like PostgreSQL would: an ErrorResponse, then
        skip to the next Sync (or this Query) and answer it with ReadyForQuery."""
        self.router.count_error(exc.sqlstate)
        self.write_to_client(be.error_response(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint))
        self._discarding = True

    # --- handlers: each returns False when it needs a server connection first ---------------------

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
        if self._exact_handover and server.session.residue != LEAVES_ANYTHING:
            left = residue_text(fe.query_bytes(msg))
            if left != LEAVES_ANYTHING:
                if left > server.session.residue:
                    server.session.residue = left  # what the next hand-over clears
                return self._send_query(server, msg)  # such a text has no session effects either
            server.session.residue = LEAVES_ANYTHING  # so the next hand-over wipes the session
        effects = classify(fe.parse_query(msg))
        if not effects.empty:
            refusal = self._session_effects(effects, server)
            if refusal is not None:
                msg = fe.query(refusal)
        return self._send_query(server, msg)

    def _refusal(self, effects: Effects) -> str | None:
        """A statement to run instead of one the router refuses, or None."""
        if effects.session_authorization:
            return raise_sql("42501", "SET ROLE and SET SESSION AUTHORIZATION are not allowed through tenant-router")
        if effects.role_change:
            return raise_sql("42501", _ROLE_STATEMENTS_REFUSED)
        if effects.large_objects and self._shares_role():
            return raise_sql("0A000", _LARGE_OBJECTS_REFUSED)
        refused = effects.pins & self.router.refused_state
        if refused:
            kinds = ", ".join(sorted(refused))
            return raise_sql("0A000", f"session state ({kinds}) is refused by this router in transaction pooling")
        return None

    def _session_effects(self, effects: Effects, server: ServerConnection) -> str | None:
        """Account for what a statement does to the session; return a statement to run instead
        when the router refuses it."""
        refusal = self._refusal(effects)
        if refusal is not None:
            return refusal
        if effects.pins or effects.unpins:
            self.pins |= effects.pins
            self.pins -= effects.unpins
        if PREPARE in effects.unpins:
            # DEALLOCATE ALL or DISCARD ALL: the client's named statements go, and the router's on
            # this server connection, unless the statement fails: the names are read back at the
            # end of the transaction, and meanwhile a Parse replaces whatever may be there.
            self.statements.forget_all()
            if self._residues is not None:
                self._residues.clear()
            server.session.prepared.clear()
            server.session.prepared_unsure = True
        if effects.discard_all:
            server.session.unnamed = None
        if effects.reset_all:
            # Back to the connection-time settings; the context is re-applied before the next use.
            self.settings = dict(self.startup_settings)
            server.session.applied = {}
            self._desired = None
            self._follow_read_only()
            # It also emptied the entered tenant (router/admin/rls.py): the read-back at the end of the
            # transaction says to enter again, not before (the rest of this one has no tenant).
            if self._watched is None:
                self._watched = set()
        if effects.settings or effects.unparsed:
            watched = self._watched if self._watched is not None else set()
            watched.update(change.name for change in effects.settings)
            self._watched = watched
        pool = self.lease.pool
        if effects.database_ddl and pool is not None:
            self.router.close_idle_connections(pool.key.host, pool.key.port, effects.database_ddl)
        return None

    def _on_parse(self, msg: bytes) -> bool:
        remembered = self._last_parse
        if remembered is not None and remembered[0] == msg:
            # The same Parse as last time (a driver re-sending its unnamed statement for every
            # transaction, as pgbench -M extended does): decoded and judged already.
            _msg, parse, effects, left = remembered
        else:
            parse = fe.parse_parse(msg)
            classified = classify(parse.query)
            effects = None if classified.empty else classified  # None: nothing to account for
            left = residue(parse.query) if self._exact_handover else LEAVES_ANYTHING
            # Small ones only: an idle client should not hold on to a megabyte of SQL.
            small = len(msg) <= _REMEMBERED_PARSE_LIMIT
            self._last_parse = (msg, parse, effects, left) if small else None
        if self._exact_handover:
            self._note_residue(parse.name, left)
        as_sent = True
        if effects is not None:
            # Refused statements are never prepared; the others take effect when executed (Bind).
            refusal = self._refusal(effects)
            if refusal is not None:
                parse = fe.Parse(parse.name, refusal, b"\x00\x00")
                as_sent = False
            else:
                if self._effects is None:
                    self._effects = {}
                self._effects[parse.name] = effects
        elif self._effects is not None:
            self._effects.pop(parse.name, None)
        if not parse.name:
            server = self._server()
            if server is None:
                return False
            server.session.synced = False
            # An unnamed statement keeps its name: the client's own message goes, unless refused.
            message = msg if as_sent else fe.build_parse("", parse.query, parse.param_types)
            self.statements.last_unnamed = message
            server.session.unnamed = message
            self._out.append(message)
            server.plan.expect(r.ENDS_PARSE)
            return True
        if parse.name in self.statements:
            # As PostgreSQL: a name is defined once until closed (drivers rely on the error).
            duplicate = DuplicatePreparedStatement(f'prepared statement "{parse.name}" already exists')
            return self._raise_in_pipeline(duplicate)
        if self._names_protocol_statement(parse.query):
            return False
        if self.server is None:
            known = self._known_valid(parse)
            if known is not None:
                # Between transactions, a statement that parsed on this database before is answered
                # at once (pgbench -M prepared waits for its Parse, blocking its other clients, which
                # may hold connections); its epoch is now's, so it is parsed again where it is used.
                self.statements.add(parse.name, known)
                self.write_to_client(be.PARSE_COMPLETE)
                return True
        server = self._server()
        if server is None:
            return False
        server.session.synced = False
        # Parsed now, on this server, whatever copies exist: DDL may have changed what it means.
        statement = self.statements.define(parse.name, parse, next(_PARSES))
        namespace = server.session.applied.get("search_path", "")
        self._parse_on_server(server, statement.on(namespace), statement.epoch, False)
        return True

    def _known_valid(self, parse: fe.Parse) -> ClientStatement | None:
        """This statement, stamped now, if it parsed on the tenant's database under the same
        search_path; None otherwise. Its server statement is worked out once, here, and kept for
        the Bind that follows."""
        try:
            target = self._target()
        except RouterError:
            return None  # let the acquire path report it
        statement = ClientStatement(parse, next(_PARSES))
        namespace = self._desired_settings(target).get("search_path", "")
        return statement if statement.on(namespace).name in target.pool.valid_statements else None

    def _parse_on_server(self, server: ServerConnection, statement: ServerStatement, epoch: int, swallow: bool) -> None:
        """Parse a server statement on `server`, in place of any copy it has (Close first, in the
        same write: PostgreSQL refuses a Parse of a name it has), and record its epoch."""
        name = statement.name
        before = server.session.prepared.get(name)
        if before is not None or server.session.prepared_unsure:
            self._out.append(fe.close(b"S", name))
            server.plan.expect(r.ENDS_CLOSE, swallow=True)
        self._out.append(statement.parse_message)
        server.session.prepared[name] = epoch
        server.plan.expect(r.ENDS_PARSE, swallow=swallow, statement=name, before=before)

    def _names_protocol_statement(self, sql: str) -> bool:
        """Refuse (and return True) a text that EXECUTEs or DEALLOCATEs a statement this client
        parsed with the protocol: the server knows it by another name (see router.sql.prepared_sql)."""
        named = [name for name in statement_names_used(sql) if name in self.statements]
        if not named:
            return False
        self._raise_in_pipeline(
            ProtocolStatementFromSql(
                f'prepared statement "{named[0]}" was prepared with the extended protocol; tenant-router'
                " does not support using it from SQL (EXECUTE, DEALLOCATE) in transaction pooling",
                hint="use SQL PREPARE for statements run with EXECUTE, or run the statement through the protocol",
            )
        )
        return True

    def _raise_in_pipeline(self, exc: RouterError) -> bool:
        """Fail the message at hand as PostgreSQL would: with a server attached (a transaction or
        pipeline may be open), the server raises the error, so that it aborts what PostgreSQL
        would abort and skips to the Sync; otherwise the router answers. Returns False: the caller's
        message is then discarded, up to the Sync."""
        server = self.server
        if server is None:
            self._refuse(exc)
            return False
        server.session.synced = False
        # The unnamed statement raises when executed: its ParseComplete and BindComplete are
        # swallowed, and the client sees the error in place of its message's response.
        raising = fe.build_parse("", raise_sql(exc.sqlstate, exc.message), b"\x00\x00")
        self._out.append(raising + fe.bind("", "", ()) + fe.execute(""))
        server.plan.expect(r.ENDS_PARSE, swallow=True)
        server.plan.expect(r.ENDS_BIND, swallow=True)
        server.plan.expect(r.ENDS_EXECUTE)
        server.session.unnamed = None
        self._discarding = True
        return False

    def _note_residue(self, client_name: str, left: int) -> None:
        """What the statement a Parse defines may leave follows it to the Binds that run it, on
        whichever server connection (a refused statement is judged by what the client sent)."""
        residues = self._residues
        if left != LEAVES_ANYTHING:
            if residues is None:
                residues = self._residues = {}
            residues[client_name] = left
        elif residues is not None:
            residues.pop(client_name, None)

    def _prepare_on_server(self, server: ServerConnection, client_name: str) -> str | None:
        """Make sure the statement a client names exists on this server connection; return the
        server's name for it (None: unknown to us, let the server report the error)."""
        if not client_name:
            last = self.statements.last_unnamed
            if last is not None and server.session.unnamed is not last:
                self._out.append(last)
                server.session.unnamed = last
                server.plan.expect(r.ENDS_PARSE, swallow=True)
            return ""
        statement = self.statements.get(client_name)
        if statement is None:
            return None
        target = statement.on(server.session.applied.get("search_path", ""))
        if needs_parse(server.session.prepared, target.name, statement.epoch):
            # No copy here, or one older than the client's Parse: parse it now (a newer epoch).
            self._parse_on_server(server, target, next(_PARSES), True)
        return target.name

    def _on_bind(self, msg: bytes) -> bool:
        server = self._server()
        if server is None:
            return False
        server.session.synced = False
        portal, client_name, rest_at = fe.split_bind(msg)
        if server.session.residue != LEAVES_ANYTHING and self._exact_handover:
            # A statement not judged, or one this client never defined, may leave anything.
            residues = self._residues
            left = residues.get(client_name, LEAVES_ANYTHING) if residues is not None else LEAVES_ANYTHING
            if left > server.session.residue:
                server.session.residue = left
        server_name = self._prepare_on_server(server, client_name)
        if self._effects is not None:
            effects = self._effects.get(client_name)
            if effects is not None:
                self._session_effects(effects, server)
        if server_name is None or server_name == client_name:
            self._out.append(msg)
        else:
            self._out.append(fe.rename_bind(msg, portal, server_name, rest_at))
        server.plan.expect(r.ENDS_BIND)
        return True

    def _on_describe(self, msg: bytes) -> bool:
        server = self._server()
        if server is None:
            return False
        server.session.synced = False
        kind, name = fe.parse_target(msg)
        if kind == ord("S"):
            server_name = self._prepare_on_server(server, name)
            if server_name is not None and server_name != name:
                msg = fe.describe(b"S", server_name)  # the server knows the statement by another name
        self._out.append(msg)  # otherwise as the client sent it
        server.plan.expect(r.ENDS_DESCRIBE)
        return True

    def _on_execute(self, msg: bytes) -> bool:
        server = self._server()
        if server is None:
            return False
        server.session.synced = False
        self._out.append(msg)
        server.plan.expect(r.ENDS_EXECUTE)
        return True

    def _on_close(self, msg: bytes) -> bool:
        kind, name = fe.parse_target(msg)
        if kind == ord("S") and name:
            # The server keeps the statement for other clients; this client forgets it.
            self.statements.forget(name)
            if self._residues is not None:
                self._residues.pop(name, None)
            if self.server is None:
                self.write_to_client(be.CLOSE_COMPLETE)
            else:
                self.server.session.synced = False
                self.server.plan.synthesize(be.CLOSE_COMPLETE)
            return True
        server = self._server()
        if server is None:
            return False
        server.session.synced = False
        self._out.append(msg)
        server.plan.expect(r.ENDS_CLOSE)
        return True

    def _on_sync(self, msg: bytes) -> bool:
        server = self.server
        if server is None:
            # Nothing outstanding anywhere: answer ourselves rather than take a connection.
            self.write_to_client(be.READY_IDLE)
            return True
        self._out.append(fe.SYNC)
        server.plan.expect(r.ENDS_SYNC)
        server.session.synced = True
        return True

    def _on_flush(self, msg: bytes) -> bool:
        if self.server is not None:
            self._out.append(fe.FLUSH)
        return True

    def _on_copy(self, msg: bytes) -> bool:
        # COPY data only means something while a COPY runs, i.e. while a server is attached.
        if self.server is not None:
            self._out.append(msg)
        return True

    def _on_function_call(self, msg: bytes) -> bool:
        server = self._server()
        if server is None:
            return False
        server.session.residue = LEAVES_ANYTHING  # a function called by its oid: anything may have happened
        if self._shares_role():
            # Fast-path calls serve large objects (libpq's lo_*, psql's \lo_import); the function is
            # named by oid, unseen. The server answers a query as it would the call: error, then ready.
            msg = fe.query(raise_sql("0A000", _FUNCTION_CALLS_REFUSED))
        self._out.append(msg)
        server.plan.expect(r.ENDS_SYNC)
        server.session.synced = True
        return True

    # --- tenant switching ---------------------------------------------------------------------------

    def _tenant_statement(self, statement: TenantStatement) -> bool:
        server = self.server
        busy = server is not None and (server.tx_status != be.TX_IDLE or bool(server.plan))
        if statement.kind == "show":
            if busy:
                assert server is not None
                return self._forward_query(server, f'SELECT {quote_literal(self.tenant or "")} AS "router.tenant"')
            self.write_to_client(be.show_result("router.tenant", self.tenant or ""))
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
            self.write_to_client(
                be.error_response(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)
                + be.ready_for_query(self._tx_status())
            )
            return True
        self.tenant = new
        self._desired = None
        if server is not None:  # a kept server (session mode, pins): bring it to the new tenant now
            self._sync_session(server, target)
            self._flush_out()
        self.write_to_client(be.command_complete("RESET" if statement.kind == "reset" else "SET") + be.READY_IDLE)
        return True

    def _forward_query(self, server: ServerConnection, sql: str) -> bool:
        return self._send_query(server, fe.query(sql))

    def _send_query(self, server: ServerConnection, msg: bytes) -> bool:
        """A simple Query to the server: its response ends with ReadyForQuery."""
        self._out.append(msg)
        server.plan.expect(r.ENDS_SYNC)
        server.session.synced = True
        server.session.unnamed = None  # a simple query replaces the unnamed statement
        return True

    # --- ending -----------------------------------------------------------------------------------

    def fatal(self, exc: RouterError) -> None:
        """Send a FATAL error and close the connection."""
        self.router.count_error(exc.sqlstate)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                be.error_response(exc.sqlstate, exc.message, severity="FATAL", detail=exc.detail, hint=exc.hint)
            )
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._shutdown()

    def _shutdown(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        if self._acquiring is not None:
            self._acquiring.cancel()
        if self._login_task is not None and not self._login_task.done():
            self._login_task.cancel()
        server = self.server
        self.server = None
        clean = server is not None and server.is_clean and server.state is not ServerState.CLOSED
        self.lease.end(clean, reset=bool(self.pins))
        self.router.unregister_client(self)


_SHARED_SETTINGS: dict[frozenset[tuple[str, str]], dict[str, str]] = {}
_SHARED_SETTINGS_LIMIT: Final = 4096


def _shared_settings(settings: dict[str, str]) -> dict[str, str]:
    """One dict for all sessions that want the same settings: a server connection handed from one
    such client to another is then found in sync by identity, not by comparing the dicts on every
    transaction. The dicts are never changed in place (a change makes a new one)."""
    key = frozenset(settings.items())
    shared = _SHARED_SETTINGS.get(key)
    if shared is None:
        if len(_SHARED_SETTINGS) >= _SHARED_SETTINGS_LIMIT:
            _SHARED_SETTINGS.clear()  # bounded: clients varying their settings cannot grow it
        shared = _SHARED_SETTINGS[key] = settings
    return shared


def _handover_reset(conn: ServerConnection, tenant: str | None) -> tuple[str | None, Handover]:
    """What the exact hand-over sends ahead of the new client's first message: what the session's
    residue (router.sql.inert_statements) says may be left. The full wipe when the previous client ran
    anything not judged, or under a search_path the router cannot vouch for: settings changed inside
    functions, temporary tables made by EXECUTE... are invisible to the router. DISCARD SEQUENCES
    when it also wrote rows: a serial column's currval() would otherwise tell the next client the
    last key. Nothing when it was inert: `applied` stays true, so only the settings that differ are
    sent. Prepared statements are private to their tenant: they go when the session passes to
    another tenant, and stay (prepared once per server, not per hand-over) within one, whose clients
    name them by content anyway."""
    left = conn.session.residue
    own_statements = bool(conn.session.prepared or conn.session.unnamed)
    deallocate = own_statements and conn.session.owner_tenant != tenant
    if left == LEAVES_NOTHING and not deallocate:
        return None, Handover.AS_IS  # the common case: an inert session within one tenant passes as it is
    conn.session.residue = LEAVES_NOTHING
    if left == LEAVES_ANYTHING:
        handover = Handover.WIPED
        conn.session.applied = {}
        conn.session.entered = None  # the wipe's RESET ALL empties it, if it runs: leave before it
        statements = [HANDOVER_RESET]
        deallocate = own_statements
    elif left == LEAVES_SEQUENCES:
        handover = Handover.SEQUENCES_RESET
        statements = [HANDOVER_DISCARD_SEQUENCES]
    else:
        statements = []
        handover = Handover.AS_IS
    if deallocate:
        statements.append(HANDOVER_DEALLOCATE)
        conn.session.prepared.clear()
        conn.session.unnamed = None
    return "; ".join(statements), handover
