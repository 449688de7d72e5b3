"""One client connection: the asyncio side of a client's session, where it meets a server connection.

Owns the client's socket: the asyncio.Protocol callbacks, flow control with the attached server
(router.net.flow), the login hand-off (router.net.login), and the loop that feeds the client's bytes
to its PostgreSQL session (router.protocol.pg.session) and does what it asks: take a server
connection through the lease (router.core.lease), send bytes, run read-backs. It makes no protocol
or routing decision of its own.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, cast

from router.core.lease import Lease
from router.errors import BackendUnavailable, RouterError
from router.net.login import login
from router.net.server import ClientLink, ServerConnection, ServerState
from router.protocol.pg import backend as be
from router.protocol.pg.read_back import ReadBack
from router.protocol.pg.session import Ending, Need, PgSession
from router.protocol.pg.session_core import Phase

if TYPE_CHECKING:
    from router.core.pool import Pool
    from router.net.context import RouterContext


# Enum members as C statics: compiled, `Phase.ROUTING` is a lookup through the enum's metaclass.
_ENDING_READ_BACK: Final = Ending.READ_BACK
_ENDING_RELEASE: Final = Ending.RELEASE
_NEED_CLOSE: Final = Need.CLOSE
_NEED_FAIL: Final = Need.FAIL
_PHASE_CLOSED: Final = Phase.CLOSED
_PHASE_LOGIN: Final = Phase.LOGIN
_PHASE_ROUTING: Final = Phase.ROUTING


class ClientSession(ClientLink):
    """A client connection. See the module docstring."""

    # Slots: ten thousand idle clients must stay cheap (no per-instance __dict__).
    __slots__ = (
        "_buf",
        "_login_task",
        "_login_waiter",
        "_reading_back",
        "key",
        "lease",
        "peer",
        "router",
        "server",
        "session",
        "transport",
    )

    def __init__(self, router: RouterContext[ClientSession]) -> None:
        super().__init__()
        self.router = router
        self.session = PgSession(router)
        # The server connection this session holds, and taking and giving it back.
        self.lease = Lease(router, self)
        self.server: ServerConnection | None = None
        self.session.take_server = self._take_server
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.key: tuple[int, bytes] = (0, b"")
        self._buf = bytearray()  # what the client sent during login
        self._reading_back: asyncio.Task[None] | None = None
        self._login_task: asyncio.Task[None] | None = None
        self._login_waiter: asyncio.Future[None] | None = None

    @property
    def tenant(self) -> str | None:
        return self.session.tenant

    @property
    def pool(self) -> Pool | None:  # the held connection's, for the router's cancel
        return self.lease.pool

    # --- asyncio.Protocol (implemented, not inherited: a compiled class has no Python base) -------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.flow.opened(self.transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._login_task = asyncio.get_running_loop().create_task(login(self))

    def data_received(self, data: bytes) -> None:
        session = self.session
        phase = session.phase
        if phase is _PHASE_ROUTING:
            session.receive(data)
            self._drive()
        elif phase is _PHASE_LOGIN:
            self._buf += data
            waiter = self._login_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif phase is not _PHASE_CLOSED:
            session.receive(data)  # held until the server connection or the read-back is done

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown()

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: the transport closes, connection_lost follows

    def pause_writing(self) -> None:
        # The client is slower than the server: reading from the server stops until it catches up.
        self.flow.writing_paused()

    def resume_writing(self) -> None:
        self.flow.writing_resumed()

    # --- the server connection's calls (ClientLink) -------------------------------------------------

    def write_to_client(self, data: bytes | bytearray | memoryview) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def report_parameters(self, params: dict[str, str]) -> None:
        out = self.session.report_parameters(params)
        if out:
            self.write_to_client(out)

    def server_ready(self, server: ServerConnection) -> None:
        if server is not self.server or server.session.tx_status != be.TX_IDLE:
            return
        session = self.session
        ending = session.transaction_ended(self.lease.track_writes)
        if ending is _ENDING_RELEASE:
            self._release()
        elif ending is _ENDING_READ_BACK:
            if ReadBack.COMMIT_POSITION in session.read_backs:
                self.lease.commit_pending(session.tenant)
            self._reading_back = asyncio.get_running_loop().create_task(self._read_back(server))

    def server_lost(self, server: ServerConnection, reason: str) -> None:
        if server is not self.server:
            return
        self.server = None
        self.session.server_lost()
        self.lease.lost(reason)
        if server.fatal_forwarded:
            self.close()  # the client has the server's own FATAL: a second error would replace it
        else:
            self.fatal(BackendUnavailable(f"lost the server connection to {server.label}: {reason}"))

    async def _read_back(self, server: ServerConnection) -> None:
        """Run the session's read-backs on the server a transaction just ended on, before it goes.
        If one fails, the session cannot go on as the client believes it is: it ends (FATAL)."""
        session = self.session
        try:
            for kind in session.read_backs:
                try:
                    _reported, error, rows = await server.query_internal(session.read_back_sql(kind))
                    if error is not None:
                        raise BackendUnavailable(f"could not {kind.value}: {error.message}")
                    position = session.read_back(kind, rows)
                except RouterError as exc:
                    self._reading_back = None
                    self.fatal(exc)
                    return
                if kind is ReadBack.COMMIT_POSITION:
                    self.lease.commit_noted(session.tenant, position)
        finally:
            self.lease.commit_settled()
        self._reading_back = None
        if session.read_back_done() is _ENDING_RELEASE and self.server is server:
            self._release()
        self._drive()

    # --- login support (router.net.login) --------------------------------------------------------

    async def wait_for_data(self) -> None:
        self._login_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._login_waiter
        finally:
            self._login_waiter = None

    def take_buffer(self) -> bytearray:
        return self._buf

    def register(self) -> None:
        """Admit the logged-in client (raises TooManyClients) and take its cancel key."""
        self.key = self.router.register_client(self)

    def start_routing(self) -> None:
        """Login is done: route whatever the client has already sent."""
        session = self.session
        session.start()
        if self._buf:
            session.receive(bytes(self._buf))
            self._buf.clear()
        self._drive()

    # --- driving the session -----------------------------------------------------------------------

    def _drive(self) -> None:
        """Let the session handle what the client sent, providing a server connection when it needs
        one, then send what it produced."""
        session = self.session
        need = session.run()  # Need.SERVER: in line for one (session.take_server asked); the lease calls back
        if need is _NEED_FAIL:
            self._write_client_out()
            self.fatal(cast(RouterError, session.failure))  # set with Need.FAIL
            return
        self._flush()
        if need is _NEED_CLOSE:
            self.close()

    def _take_server(self) -> bool:
        """For the session (take_server): a connection attached now (True), a wait, or a refusal (True)."""
        session = self.session
        try:
            conn = self.lease.acquire(session.target(), session.read_next, session.read_policy is not None)
        except RouterError as exc:
            session.refuse(exc)
            return True
        if conn is None:
            return False
        self._attach(conn)
        return True

    def _attach(self, conn: ServerConnection) -> None:
        lease = self.lease
        target, pool = lease.target, lease.pool
        assert target is not None and pool is not None
        conn.attach(self)
        self.server = conn
        lease.count_handover(self.session.attach(conn.session, target, pool.key))

    def lease_granted(self) -> None:
        self._attach(cast(ServerConnection, self.lease.conn))  # set before the lease calls this
        self._drive()

    def lease_resume(self) -> None:
        self.session.resume()
        self._drive()

    def lease_refused(self, exc: RouterError) -> None:
        self.session.refuse(exc)
        self._drive()

    def _release(self) -> None:
        self.server = None
        self.lease.release()

    def _write_client_out(self) -> None:
        to_client = self.session.to_client
        if to_client:
            self.write_to_client(to_client[0] if len(to_client) == 1 else b"".join(to_client))
            to_client.clear()

    def _flush(self) -> None:
        self._write_client_out()
        out = self.session.out
        server = self.server
        if server is not None:
            if out:
                server.send(out[0] if len(out) == 1 else b"".join(out))
            server.flush_ready()
        out.clear()

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
        session = self.session
        if session.phase is _PHASE_CLOSED:
            return
        session.close()
        if self._reading_back is not None:
            self._reading_back.cancel()
        if self._login_task is not None and not self._login_task.done():
            self._login_task.cancel()
        server = self.server
        self.server = None
        clean = server is not None and server.is_clean and server.state is not ServerState.CLOSED
        self.lease.end(clean, reset=bool(session.pins))
        self.router.unregister_client(self)
