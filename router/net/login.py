"""Client login: startup packet, protocol negotiation, authentication, tenant resolution.

Drives a client connection (router.net.client) from its first byte until it is ready to route: answers SSL and GSSAPI
requests with 'N', serves CancelRequests, authenticates by SCRAM-SHA-256, md5 or trust, finds the
tenant (user name `role.tenant` or `options=-c router.tenant=...`, in the configured order), and
reports the server's parameters as a real server would. It routes nothing itself.

A client that asks for the virtual database `tenant_router` gets the admin console instead
(router.net.console) once authenticated, if its user has `console: true` (else 42501): that
choice is made here, once per connection, so the forwarding path never sees a console.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from router.core.target import Target
from router.errors import (
    AuthenticationFailed,
    ClientProtocolError,
    ConsoleRefused,
    InvalidAuthorization,
    NoTenant,
    RouterError,
    UnsupportedProtocolVersion,
)
from router.net.console import serve_console
from router.net.server import ServerConnection
from router.protocol.pg import backend as be
from router.protocol.pg import framing as f
from router.protocol.pg import frontend as fe
from router.protocol.pg.auth import SCRAM, AuthError, check_md5, new_md5_salt
from router.protocol.pg.console import CONSOLE_DATABASE, greeting
from router.protocol.pg.read_intent import ReadPolicy, read_only_session
from router.protocol.pg.session import PgSession
from router.protocol.pg.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    parse_options,
    parse_startup_packet,
    startup_packet_length,
)
from router.sql.session_sql import session_sync_sql

if TYPE_CHECKING:
    from router.net.context import RouterContext

log = logging.getLogger(__name__)


class LoginClient(Protocol):
    """The client connection login drives (router.net.client), as login sees it."""

    router: RouterContext[Any]
    peer: str
    key: tuple[int, bytes]
    session: PgSession  # its PostgreSQL session: login fills in who the client is

    def write_to_client(self, data: bytes | bytearray | memoryview) -> None: ...

    def take_buffer(self) -> bytearray: ...

    async def wait_for_data(self) -> None: ...

    def register(self) -> None: ...

    def start_routing(self) -> None: ...

    def fatal(self, exc: RouterError) -> None: ...

    def close(self) -> None: ...


TENANT_OPTION = "router.tenant"
# Startup parameters that describe the connection, not session settings to carry to servers.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})
# Startup options that would change who the server session acts as: refused, like SET ROLE.
_IDENTITY_SETTINGS = frozenset({"role", "session_authorization"})


async def login(client: LoginClient) -> None:
    try:
        try:
            async with asyncio.timeout(client.router.login_timeout):
                console = await _login(client)
        except TimeoutError:
            client.fatal(ClientProtocolError("login took too long", detail="the client did not finish logging in"))
            return
        if console:
            await serve_console(client)  # no timeout: an admin may sit at the prompt for hours
    except f.FramingError as exc:
        client.fatal(ClientProtocolError(f"invalid startup packet: {exc}"))
    except RouterError as exc:
        client.fatal(exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("login of %s failed unexpectedly", client.peer)
        client.fatal(RouterError("internal router error during login"))


async def _read_startup(client: LoginClient) -> bytes:
    buf = client.take_buffer()
    while True:
        length = startup_packet_length(buf)
        if length is not None and len(buf) >= length:
            packet = bytes(buf[:length])
            del buf[:length]
            return packet
        await client.wait_for_data()


async def _read_message(client: LoginClient, expected: int) -> bytes:
    buf = client.take_buffer()
    while True:
        header = f.read_header(buf, 0)
        if header is not None and len(buf) >= header[1]:
            mtype, size = header
            msg = bytes(buf[:size])
            del buf[:size]
            if mtype != expected:
                raise ClientProtocolError(f"expected message {chr(expected)!r} during login, got {chr(mtype)!r}")
            return msg
        await client.wait_for_data()


async def _login(client: LoginClient) -> bool:
    """Log the client in; True if it is an admin console connection (then ready for commands)."""
    router = client.router
    while True:
        packet = parse_startup_packet(await _read_startup(client))
        if isinstance(packet, SSLRequest | GSSENCRequest):
            client.write_to_client(b"N")
            continue
        if isinstance(packet, CancelRequest):
            # Shielded: the sender may hang up at once, which must not abort delivering the cancel.
            await asyncio.shield(router.cancel(packet.process_id, packet.secret_key))
            client.close()
            return False
        break
    assert isinstance(packet, StartupMessage)
    if packet.major != 3:
        raise UnsupportedProtocolVersion(
            f"unsupported frontend protocol {packet.major}.{packet.minor}: the router supports 3.0"
        )
    if packet.minor > 0 or packet.extensions:
        client.write_to_client(be.negotiate_protocol_version(0, packet.extensions))
    params = packet.parameters
    if "replication" in params and params["replication"].lower() not in ("false", "off", "no", "0"):
        raise UnsupportedProtocolVersion("replication connections are not supported by the router")
    user_name = params.get("user")
    if not user_name:
        raise ClientProtocolError("no PostgreSQL user name specified in startup packet")
    options = parse_options(params.get("options", ""))
    role, tenant = _identify(
        user_name, options.pop(TENANT_OPTION, None), router.tenant_resolution, router.tenant_separator
    )
    user = router.user(role)
    if user is None:
        raise AuthenticationFailed(f'password authentication failed for user "{role}"')
    await _authenticate(client, role, user_name, user.password)
    pg = client.session
    pg.user, pg.role = user_name, role
    if params.get("database") == CONSOLE_DATABASE:
        if not user.console:
            raise ConsoleRefused(
                f'user "{role}" may not use the admin console (database "{CONSOLE_DATABASE}")',
                hint="give the user console: true under auth.users in router.yaml, or connect to another database",
            )
        client.register()
        client.write_to_client(greeting(user_name, params.get("application_name", ""), client.key))
        return True
    pg.tenant_switch_allowed = user.tenant_switch
    if tenant is None and not user.tenant_switch:
        raise NoTenant(
            f'no tenant given for user "{role}"',
            hint=f"connect as user '{role}{router.tenant_separator}<tenant>'"
            " or with options='-c router.tenant=<tenant>'",
        )
    target = router.resolve_target(tenant) if tenant is not None else router.default_target()
    pg.tenant = pg.login_tenant = tenant
    settings = {k: v for k, v in params.items() if k not in _NOT_SETTINGS} | options
    refused = sorted(settings.keys() & _IDENTITY_SETTINGS)
    if refused:
        raise InvalidAuthorization(
            f"startup option {refused[0]} is not allowed through tenant-router",
            hint="the router chooses the role its server connections act as",
        )
    pg.settings = settings
    if user.read_only:
        # Read-only on the primary too, where its transactions go when no replica can serve them.
        pg.settings["default_transaction_read_only"] = "on"
    pg.startup_settings = dict(pg.settings)
    mode = user.reads or router.read_mode
    if mode != "off":
        read_only = read_only_session(user.read_only, pg.settings)
        pg.read_policy = ReadPolicy(mode, read_only, router.read_classifier)
    client.register()
    reported = await _server_parameters(client, target)
    out = bytearray(be.authentication_ok())
    for name, value in reported.items():
        out += be.parameter_status(name, value)
    pg.reported = dict(reported)
    out += be.backend_key_data(*client.key)
    out += be.READY_IDLE
    client.write_to_client(out)
    client.start_routing()
    return False


def _identify(
    user_name: str, option_tenant: str | None, resolution: tuple[str, ...], separator: str
) -> tuple[str, str | None]:
    """Split the login into (role, tenant) following the configured resolution order."""
    role = user_name
    user_tenant: str | None = None
    if "user" in resolution and separator in user_name:
        role, user_tenant = user_name.split(separator, 1)
        if not role or not user_tenant:
            raise InvalidAuthorization(f'user name "{user_name}" must be "role{separator}tenant"')
    for source in resolution:
        found = user_tenant if source == "user" else option_tenant
        if found:
            return role, found
    return role, None


async def _authenticate(client: LoginClient, role: str, login_name: str, password: str | None) -> None:
    router = client.router
    method = router.auth_method
    failed = AuthenticationFailed(f'password authentication failed for user "{role}"')
    if method == "trust":
        return
    if password is None:
        raise failed
    if method == "md5":
        salt = new_md5_salt()
        client.write_to_client(be.authentication_md5(salt))
        answer = await _read_message(client, f.PASSWORD)
        # libpq salts md5 with the user name it logged in with, i.e. `role.tenant`.
        if not check_md5(login_name, password, salt, answer[5:]):
            raise failed
        return
    user = router.user(role)
    assert user is not None
    exchange = router.scram_verifier(user).start()
    client.write_to_client(be.authentication_sasl([SCRAM]))
    mechanism, client_first = fe.parse_sasl_initial_response(await _read_message(client, f.PASSWORD))
    if mechanism != SCRAM:
        raise ClientProtocolError(f"unsupported SASL mechanism {mechanism!r}; the router offers {SCRAM}")
    try:
        client.write_to_client(be.authentication_sasl_continue(exchange.first(client_first)))
        client_final = (await _read_message(client, f.PASSWORD))[5:]
        client.write_to_client(be.authentication_sasl_final(exchange.final(client_final)))
    except AuthError:
        raise failed from None


async def _server_parameters(client: LoginClient, target: Target) -> dict[str, str]:
    """The ParameterStatus values this client must see: the server's own after applying the
    client's settings (so `utf8` comes back as `UTF8`). Learned once per distinct set of settings
    from a real server connection (which also proves the shard answers), then served from the
    pool's memory, so a busy pool does not hold up logins."""
    pool = target.pool
    desired = {**target.context, **client.session.settings}
    key = frozenset(desired.items())
    known = pool.login_parameters.get(key)
    if known is not None:
        return known
    conn: ServerConnection | None = await pool.acquire()
    assert conn is not None
    try:
        reported: dict[str, str] = {}
        sql = session_sync_sql(conn.session.applied, desired)
        if sql is not None:
            reported, error = await conn.run_internal(sql)
            if error is not None:
                conn.session.settings_unknown()
                pool.discard(conn, "failed to apply client settings")
                conn = None
                raise _relay(error)
            conn.session.settings_applied(desired)
        parameters = {**conn.params, **reported}
        pool.remember_login_parameters(key, parameters)
        return parameters
    finally:
        if conn is not None:  # a failure above discarded it instead
            pool.release(conn)


def _relay(error: be.ServerError) -> RouterError:
    exc = RouterError(error.message, detail=error.fields.get("D"), hint=error.fields.get("H"))
    exc.sqlstate = error.sqlstate
    return exc
