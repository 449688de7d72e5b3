"""One connection from the router to a PostgreSQL server.

It owns the socket to the server: connecting and authenticating (SCRAM-SHA-256, md5, cleartext or
trust), running the router's own internal statements, and, while a client session is attached,
forwarding the server's output to that client framed by length only. Rows are never decoded: the
only messages looked at are those the response plan needs (completions, errors, ReadyForQuery).
It does not decide routing or pool membership; the session attaches it and the pool owns it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, cast

from router.core.lease import LeaseOwner
from router.core.pool import PooledConnection
from router.errors import BackendAuthFailed, BackendPasswordRejected, BackendUnavailable
from router.net.flow import FlowSide
from router.protocol.pg import backend as be
from router.protocol.pg import framing as f
from router.protocol.pg import frontend as fe
from router.protocol.pg.auth import AuthError, ScramClientExchange, md5_password
from router.protocol.pg.server_session import ServerSession
from router.protocol.pg.startup import build_cancel_request, build_startup_message

if TYPE_CHECKING:
    from router.protocol.pg.backend import ServerError

log = logging.getLogger(__name__)

_DATA_ROW: Final = f.DATA_ROW
_READY: Final = f.READY_FOR_QUERY
_ERROR: Final = f.ERROR_RESPONSE


class ServerState(enum.Enum):
    CONNECTING = "connecting"  # socket open, startup and authentication under way
    INTERNAL = "internal"  # running the router's own statement; output goes to a reader
    IDLE = "idle"  # clean, in its pool, no client
    ACTIVE = "active"  # attached to a client; output is forwarded to it
    CLOSED = "closed"


class ClientLink(LeaseOwner):
    """What a server connection forwards to: the client session attached to it (router.net.client
    implements it). A base class rather than a Protocol: compiled, a call on a field of a native
    class is a direct call, where one on a Protocol-typed field is a method lookup by name, on every
    response the server sends."""

    __slots__ = ("flow",)

    def __init__(self) -> None:
        super().__init__()
        self.flow = FlowSide()  # linked to the attached server's while output is forwarded

    def write_to_client(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def report_parameters(self, params: dict[str, str]) -> None:
        """The server reported these parameters: tell the client what it does not know yet."""
        raise NotImplementedError

    def server_ready(self, server: ServerConnection) -> None:
        """The server finished everything sent to it and is idle."""
        raise NotImplementedError

    def server_lost(self, server: ServerConnection, reason: str) -> None:
        raise NotImplementedError


class ServerConnection(PooledConnection):
    """A pooled server connection. See the module docstring."""

    def __init__(self, label: str, on_closed: Callable[[ServerConnection], None]) -> None:
        super().__init__(time.monotonic())
        self.label = label  # "shard_a/app@127.0.0.1:5433", for messages and logs
        self.state = ServerState.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.process_id = 0
        self.secret_key = b""
        # What the router has put on the server session (prepared statements, settings, tenant,
        # residue, the responses owed): the PostgreSQL session owns it; this connection reads it, and
        # advances the response plan as responses stream.
        self.session = ServerSession()
        self.plan = self.session.plan  # the same object for the connection's life: read per response
        # Forwarding state.
        self.client: ClientLink | None = None
        self.flow = FlowSide()  # linked to the attached client's while output is forwarded to it
        self._on_closed = on_closed
        self._tail = b""
        self._pass_left = 0  # bytes of a forwarded message still to come
        self._inbox: list[tuple[int, bytes]] = []
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._lost_reason: str | None = None
        # The server's own FATAL reached the client: it knows why its session ends, and hears
        # nothing more from the router about it.
        self.fatal_forwarded = False

    # --- asyncio.Protocol (implemented, not inherited: a compiled class has no Python base) -------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.flow.opened(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.state
        self.state = ServerState.CLOSED
        self._lost_reason = self._lost_reason or (
            f"connection to server lost ({exc})" if exc else "server closed the connection"
        )
        self._wake_reader()
        client = self.client
        self.client = None
        self.flow.unlink()
        if client is not None and previous is ServerState.ACTIVE:
            client.server_lost(self, self._lost_reason)
        self._on_closed(self)

    def data_received(self, data: bytes) -> None:
        if self.state is ServerState.ACTIVE:
            self._forward(data)
        else:
            self._collect(data)

    def pause_writing(self) -> None:
        # The server is not reading what the client sends (e.g. COPY IN faster than the server).
        self.flow.writing_paused()

    def resume_writing(self) -> None:
        self.flow.writing_resumed()

    def eof_received(self) -> bool | None:
        return None  # the server is done sending: the transport closes, connection_lost follows

    # --- forwarding (hot path) --------------------------------------------------------------------

    def _forward(self, data: bytes) -> None:
        """Forward complete server messages to the client, consulting the plan at control messages."""
        client = self.client
        assert client is not None
        if self._tail:
            data = self._tail + data
            self._tail = b""
        n = len(data)
        pos = 0
        if self._pass_left:
            pos = min(self._pass_left, n)
            self._pass_left -= pos
        run_start = 0  # start of the bytes not yet written to the client
        plan = self.plan
        # Rows of the router's own statements (set_config) are dropped like the rest of their response.
        swallowing = plan.swallowing()
        saw_ready = False
        while n - pos >= 5:
            mtype = data[pos]
            end = pos + 1 + f.length_at(data, pos + 1)
            if mtype == _DATA_ROW and not swallowing:
                if end > n:
                    self._pass_left = end - n
                    pos = n
                    break
                pos = end
                continue
            if end > n:
                # Control messages are small: wait for the rest before deciding.
                break
            if mtype == _READY:
                self.session.tx_status = data[pos + 5]
                saw_ready = True
            elif mtype == _ERROR and be.is_fatal_error(data[pos:end]):
                # The server is ending the session (shutdown, terminated backend): say which one.
                if pos > run_start:
                    client.write_to_client(memoryview(data)[run_start:pos])
                if plan.on_message(mtype):
                    client.write_to_client(be.naming_server(data[pos:end], self.label))
                    self.fatal_forwarded = True
                pos = run_start = end
                swallowing = plan.swallowing()
                if plan.ready:
                    client.write_to_client(bytes(plan.ready))
                    plan.ready.clear()
                continue
            elif mtype == f.PARAMETER_STATUS:
                # Not forwarded as such: the client is told what differs from what it knows, which
                # also hides the churn of the router's own resets.
                name, value = be.parse_parameter_status(data[pos + 5 : end])
                self.params[name] = value
                if pos > run_start:
                    client.write_to_client(memoryview(data)[run_start:pos])
                pos = run_start = end
                client.report_parameters(self.params)
                continue
            if plan.on_message(mtype):
                pos = end
            else:
                if pos > run_start:
                    client.write_to_client(memoryview(data)[run_start:pos])
                pos = end
                run_start = end
            swallowing = plan.swallowing()
            if plan.ready:
                if pos > run_start:
                    client.write_to_client(memoryview(data)[run_start:pos])
                    run_start = pos
                client.write_to_client(bytes(plan.ready))
                plan.ready.clear()
        if pos > run_start:
            client.write_to_client(data if run_start == 0 and pos == n else memoryview(data)[run_start:pos])
        if pos < n:
            self._tail = data[pos:]
        if saw_ready and not plan and self.session.synced:
            client.server_ready(self)

    def send(self, data: bytes | bytearray) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def flush_ready(self) -> None:
        """Write synthetic responses that became due while the router, not the server, was talking."""
        if self.plan.ready and self.client is not None:
            self.client.write_to_client(bytes(self.plan.ready))
            self.plan.ready.clear()

    def attach(self, client: ClientLink) -> None:
        self.client = client
        self.state = ServerState.ACTIVE
        self.flow.link(client.flow)

    def detach(self) -> None:
        self.client = None
        self.flow.unlink()
        if self.state is ServerState.ACTIVE:
            self.state = ServerState.IDLE

    @property
    def is_clean(self) -> bool:
        """Nothing outstanding and no transaction open: safe to hand to another client. Not after a
        statement of the router's own set-up failed: the session is not what the router believes."""
        return (
            self.state in (ServerState.IDLE, ServerState.ACTIVE)
            and not self.plan
            and not self.plan.setup_failed
            and self.session.synced
            and self.session.tx_status == be.TX_IDLE
            and not self._tail
            and not self._pass_left
        )

    def close(self, reason: str = "closed by the router") -> None:
        if self.transport is not None and self.state is not ServerState.CLOSED:
            self._lost_reason = reason
            try:
                self.transport.write(fe.TERMINATE)
            finally:
                self.transport.close()

    # --- the router's own exchanges (startup, internal statements) ---------------------------------

    def _collect(self, data: bytes) -> None:
        buf = self._tail + data if self._tail else data
        pos = 0
        n = len(buf)
        try:
            while True:
                header = f.read_header(buf, pos)
                if header is None or pos + header[1] > n:
                    break
                mtype, size = header
                self._inbox.append((mtype, bytes(buf[pos + 5 : pos + size])))
                pos += size
        except f.FramingError as exc:
            self._lost_reason = f"server sent garbage: {exc}"
            assert self.transport is not None
            self.transport.close()
            return
        self._tail = buf[pos:]
        if self.state is ServerState.IDLE and self._inbox:
            self._idle_message()
        self._wake_reader()

    def _idle_message(self) -> None:
        """A message while pooled: a notice or a FATAL before the server goes away."""
        for mtype, body in self._inbox:
            if mtype == f.ERROR_RESPONSE:
                err = be.parse_error_fields(body)
                self._lost_reason = f"server error while idle: {err.message}"
                log.info("idle server connection %s: %s", self.label, err.message)
        self._inbox.clear()

    def _wake_reader(self) -> None:
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _read(self) -> tuple[int, bytes]:
        while not self._inbox:
            if self.state is ServerState.CLOSED:
                raise BackendUnavailable(f"{self.label}: {self._lost_reason or 'connection closed'}")
            self._inbox_waiter = asyncio.get_running_loop().create_future()
            await self._inbox_waiter
            self._inbox_waiter = None
        return self._inbox.pop(0)

    async def startup(self, user: str, database: str, password: str | None) -> None:
        """Authenticate and wait for ReadyForQuery. Raises BackendAuthFailed/BackendUnavailable."""
        self.send(build_startup_message({"user": user, "database": database}))
        scram: ScramClientExchange | None = None
        while True:
            mtype, body = await self._read()
            if mtype == f.AUTHENTICATION:
                code, payload = be.parse_authentication(body)
                if code == be.AUTH_OK:
                    continue
                if password is None:
                    raise BackendAuthFailed(f"{self.label}: server asks for a password and none is configured")
                try:
                    if code == be.AUTH_CLEARTEXT:
                        self.send(fe.password_message(password.encode() + b"\x00"))
                    elif code == be.AUTH_MD5:
                        self.send(fe.password_message(md5_password(user, password, payload)))
                    elif code == be.AUTH_SASL:
                        scram = ScramClientExchange(be.parse_sasl_mechanisms(payload), user, password)
                        self.send(fe.sasl_initial_response("SCRAM-SHA-256", scram.first()))
                    elif code == be.AUTH_SASL_CONTINUE and scram is not None:
                        self.send(fe.password_message(scram.final(payload)))
                    elif code == be.AUTH_SASL_FINAL and scram is not None:
                        scram.verify(payload)
                    else:
                        raise BackendAuthFailed(f"{self.label}: unsupported authentication request {code}")
                except AuthError as exc:
                    raise BackendAuthFailed(f"{self.label}: {exc}") from exc
            elif mtype == f.PARAMETER_STATUS:
                name, value = be.parse_parameter_status(body)
                self.params[name] = value
            elif mtype == f.BACKEND_KEY_DATA:
                self.process_id, self.secret_key = be.parse_backend_key_data(body)
            elif mtype == f.ERROR_RESPONSE:
                err = be.parse_error_fields(body)
                raise _startup_error(self.label, err)
            elif mtype == f.READY_FOR_QUERY:
                self.state = ServerState.IDLE
                return
            # NoticeResponse and NegotiateProtocolVersion need no answer.

    async def run_internal(self, sql: str) -> tuple[dict[str, str], ServerError | None]:
        """Run one simple query of the router's own; return the ParameterStatus values it reported
        and its error, if any."""
        reported, error, _rows = await self.query_internal(sql)
        return reported, error

    async def query_internal(self, sql: str) -> tuple[dict[str, str], ServerError | None, list[list[str | None]]]:
        """Like run_internal, and also return the rows (text format). The connection must have
        nothing outstanding; if a client is attached it stays attached but sees none of this."""
        assert self.state in (ServerState.IDLE, ServerState.ACTIVE) and not self.plan
        previous = self.state
        self.state = ServerState.INTERNAL
        # The answer is the router's, not the client's: a client that reads slowly must not hold it up.
        self.flow.unlink()
        self.session.simple_query_sent()
        self.send(fe.query(sql))
        reported: dict[str, str] = {}
        error: ServerError | None = None
        rows: list[list[str | None]] = []
        while True:
            mtype, body = await self._read()
            if mtype == f.DATA_ROW:
                rows.append(be.parse_data_row(body))
            elif mtype == f.PARAMETER_STATUS:
                name, value = be.parse_parameter_status(body)
                self.params[name] = value
                reported[name] = value
            elif mtype == f.ERROR_RESPONSE and error is None:
                error = be.parse_error_fields(body)
            elif mtype == f.READY_FOR_QUERY:
                self.session.tx_status = body[0]
                self.state = previous
                if previous is ServerState.ACTIVE and self.client is not None:
                    self.flow.link(self.client.flow)
                return reported, error, rows


def _startup_error(label: str, err: ServerError) -> Exception:
    if err.sqlstate == "28P01":
        return BackendPasswordRejected(f"{label}: the server rejected the router's credentials: {err.message}")
    if err.sqlstate == "28000":
        return BackendAuthFailed(f"{label}: the server rejected the router's credentials: {err.message}")
    return BackendUnavailable(f"{label}: {err.message}", detail=f"SQLSTATE {err.sqlstate}")


async def open_server_connection(
    host: str,
    port: int,
    database: str,
    user: str,
    password: str | None,
    *,
    label: str,
    connect_timeout: float,
    on_closed: Callable[[ServerConnection], None],
) -> ServerConnection:
    """Connect and authenticate within `connect_timeout`, or raise BackendUnavailable naming `label`."""
    loop = asyncio.get_running_loop()
    conn = ServerConnection(label, on_closed)
    try:
        async with asyncio.timeout(connect_timeout):
            await loop.create_connection(lambda: cast(asyncio.Protocol, conn), host, port)
            await conn.startup(user, database, password)
    except TimeoutError:
        conn.close("connect timeout")
        raise BackendUnavailable(
            f"{label}: could not connect within {connect_timeout:g}s", hint="is the shard's server up?"
        ) from None
    except OSError as exc:
        raise BackendUnavailable(f"{label}: could not connect: {exc.strerror or exc}") from None
    except BaseException:
        conn.close("startup failed")
        raise
    return conn


async def send_cancel_unix(path: str, process_id: int, secret_key: bytes, timeout: float) -> None:
    """Hand a CancelRequest to a sibling worker over its private unix socket."""
    await _deliver_cancel(asyncio.open_unix_connection(path), path, process_id, secret_key, timeout)


async def send_cancel(host: str, port: int, process_id: int, secret_key: bytes, timeout: float) -> None:
    """Deliver a CancelRequest to a server or a peer router."""
    await _deliver_cancel(asyncio.open_connection(host, port), f"{host}:{port}", process_id, secret_key, timeout)


async def _deliver_cancel(
    opening: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    where: str,
    process_id: int,
    secret_key: bytes,
    timeout: float,
) -> None:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await opening
            writer.write(build_cancel_request(process_id, secret_key))
            await writer.drain()
            # Like libpq: wait for the other side to hang up, which it does once it has acted.
            await reader.read()
            writer.close()
            await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        log.warning("could not deliver a cancel request to %s: %s", where, exc)
