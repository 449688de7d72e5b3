"""The state of one client's PostgreSQL session and what every message handler shares, sans-IO.

Owns the fields of the session (router.protocol.pg.session builds on this class, through the
extended-protocol handlers of router.protocol.pg.extended): who the client is, its tenant and
settings, its named statements and what they may leave, the session state that pins its server
connection, the attached server's session model, and the bytes due to the server and the client.
And the helpers the handlers share: the attached server (or the need for one), the settings sync,
statement effects and refusals, a simple query sent, an error raised in a pipeline.

Must not: do I/O, import asyncio or the network layer, or take connections (router.core.lease does).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Final, Protocol

from router.errors import NoTenant, ProtocolStatementFromSql, RouterError
from router.protocol.pg import backend as be
from router.protocol.pg import frontend as fe
from router.protocol.pg import responses as r
from router.protocol.pg.handover import shared_settings, sync_session
from router.protocol.pg.prepared import ClientStatements
from router.protocol.pg.read_intent import ReadPolicy, read_only_session
from router.protocol.pg.refusals import refusal
from router.sql.inert_statements import LEAVES_ANYTHING
from router.sql.prepared_sql import statement_names_used
from router.sql.session_sql import raise_sql
from router.sql.statements import PREPARE, Effects

if TYPE_CHECKING:
    from collections.abc import Callable

    from router.config import UserConfig
    from router.core.target import Target
    from router.protocol.pg.server_session import ServerSession


class SessionRouter(Protocol):
    """What the session asks of the router (implemented by the composition root, router.app)."""

    exact_handover: bool
    transaction_pooling: bool
    refused_state: frozenset[str]
    tenant_setting: str  # the tenant id's setting (app.tenant_id): the router's, never a client's
    # The tenants whose Target is known, by tenant: the same dict for the router's lifetime, from
    # which entries are dropped when they change, so a session may keep it and look up its target
    # without a call (a miss asks `resolve_target`).
    targets: dict[str, Target]

    def user(self, name: str) -> UserConfig | None: ...

    def resolve_target(self, tenant: str) -> Target:
        """Raises UnknownTenant / TenantSuspended."""
        ...

    def count_error(self, sqlstate: str) -> None: ...

    def move_client(self, old: str | None, new: str | None) -> None:
        """Count a logged-in client under another tenant; raises TooManyClients at its limit."""
        ...

    def close_idle_connections(self, host: str, port: int, databases: tuple[str, ...]) -> None:
        """Close pooled idle connections to these databases (before DROP/ALTER DATABASE)."""
        ...


class ServerAddress(Protocol):
    """Where the attached server connection leads (its pool's key)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class Phase(enum.Enum):
    LOGIN = "login"  # startup and authentication (the adapter's login drives this)
    ROUTING = "routing"  # client messages are handled
    WAITING = "waiting"  # the next message needs a server connection: the adapter is getting one
    READING_BACK = "reading back"  # the router's own queries run on the server before it is let go
    CLOSED = "closed"


# Enum members as C statics: compiled, `Phase.ROUTING` is a lookup through the enum's metaclass.
_PHASE_CLOSED: Final = Phase.CLOSED
_PHASE_LOGIN: Final = Phase.LOGIN
_PHASE_ROUTING: Final = Phase.ROUTING
_PHASE_WAITING: Final = Phase.WAITING


class SessionCore:
    """The fields of one client's session and the helpers its handlers share."""

    # Slots: ten thousand idle clients must stay cheap (no per-instance __dict__).
    __slots__ = (
        "_address",
        "_desired",
        "_desired_for",
        "_discarding",
        "_effects",
        "_exact_handover",
        "_plain_next",
        "_residues",
        "_targets",
        "_transaction_pooling",
        "_watched",
        "out",
        "phase",
        "pins",
        "read_next",
        "read_policy",
        "role",
        "router",
        "serial",
        "server",
        "settings",
        "startup_settings",
        "statements",
        "take_server",
        "tenant",
        "to_client",
    )

    def __init__(self, router: SessionRouter, serial: int) -> None:
        self.router = router
        # Fixed for the router's lifetime, and read on every transaction: kept here (compiled, a
        # field read) rather than looked up on the router each time.
        self._exact_handover = router.exact_handover
        self._transaction_pooling = router.transaction_pooling
        self._targets = router.targets
        self.serial = serial  # the owner of the server sessions it uses (ServerSession.owner)
        self.phase = _PHASE_LOGIN
        # Identity, filled in by login.
        self.role = ""
        self.tenant: str | None = None
        self.settings: dict[str, str] = {}  # session settings in force for the client (startup, SET...)
        self.startup_settings: dict[str, str] = {}  # what RESET ALL returns to
        self.pins: set[str] = set()  # session state kinds that keep the server connection
        self._watched: set[str] | None = None  # settings changed in this transaction: re-read them
        self._effects: dict[str, Effects] | None = None  # session effects of prepared statements
        # What the prepared statements may leave in a session, by name, when less than anything
        # (router.sql.inert_statements): the level follows a statement to the Binds that run it.
        self._residues: dict[str, int] | None = None
        self._desired: dict[str, str] | None = None  # settings + tenant context, for the target below
        self._desired_for: Target | None = None
        self.statements = ClientStatements()
        # The attached server connection's session, and where it leads.
        self.server: ServerSession | None = None
        self._address: ServerAddress | None = None
        # The adapter's way to attach a server connection at once, when one is idle (True: done,
        # or refused); without it, or when it must wait, `run` stops with Need.SERVER. Asking here
        # spares handling the transaction's first message twice.
        self.take_server: Callable[[], bool] | None = None
        # Read/write splitting (None: every transaction goes to the primary).
        self.read_policy: ReadPolicy | None = None
        self.read_next = False  # the request about to take a server may run on a replica
        self._plain_next = False  # ... and it only reads, wherever it runs
        self._discarding = False  # after a refused request: drop messages up to the next Sync
        self.out: list[bytes] = []  # due to the server, in order
        self.to_client: list[bytes] = []  # due to the client, in order (the router's own answers)

    def _enter(self, phase: Phase) -> None:
        """The one place the phase changes. A closed session stays closed."""
        if self.phase is not _PHASE_CLOSED:
            self.phase = phase

    def target(self) -> Target:
        """Where this session's transactions run. Raises NoTenant, or the router's resolution errors."""
        tenant = self.tenant
        if tenant is None:
            raise NoTenant(
                "no tenant selected for this session",
                hint="run SET router.tenant = '<tenant id>' first",
            )
        target = self._targets.get(tenant)  # the router's own dict: no call while nothing changed
        return target if target is not None else self.router.resolve_target(tenant)

    def refuse(self, exc: RouterError) -> None:
        """Fail the request at the head of the input like PostgreSQL would: an ErrorResponse, then
        skip to the next Sync (or this Query) and answer it with ReadyForQuery."""
        self.router.count_error(exc.sqlstate)
        self.to_client.append(be.error_response(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint))
        self._discarding = True
        if self.phase is _PHASE_WAITING:
            self._enter(_PHASE_ROUTING)

    # --- the server connection and its session ---------------------------------------------------

    def _server(self) -> ServerSession | None:
        """The attached server's session, or None: the caller stops, and `run` asks for a server."""
        server = self.server
        if server is not None:
            if self._desired is None and not server.plan and server.tx_status != be.TX_FAILED:
                # Settings changed under a server we keep (pinned, session mode): re-apply them.
                # Not in a failed transaction: the server would refuse them and the client get the
                # errors (on its ROLLBACK, say); the first message after the rollback applies them.
                self._sync(server, self.target())
            return server
        take = self.take_server
        if take is not None and take():
            return self.server  # attached (None: refused, and the request is being discarded)
        self._enter(_PHASE_WAITING)
        return None

    def _sync(self, server: ServerSession, target: Target, reset: str | None = None) -> None:
        sync_session(server, self._desired_settings(target), target.entry, reset, self.settings, self.out)

    def _desired_settings(self, target: Target) -> dict[str, str]:
        desired = self._desired
        if desired is None or self._desired_for is not target:
            desired = self._desired = shared_settings({**self.settings, **target.context})
            self._desired_for = target
        return desired

    def _tx_status(self) -> int:
        return self.server.tx_status if self.server is not None else be.TX_IDLE

    def _shares_role(self) -> bool:
        """Whether this session's server role is the router's own, shared by tenants (hardened)."""
        try:
            return self.target().shares_role
        except RouterError:
            return False  # no tenant: a trusted user, whose statements the acquire path judges

    def _follow_read_only(self) -> None:
        """The session's settings changed: a session that is read-only no more (SET
        default_transaction_read_only = off) sends its transactions to the primary again."""
        policy = self.read_policy
        if policy is not None:
            user = self.router.user(self.role)
            read_only = read_only_session(user is not None and user.read_only, self.settings)
            if read_only != policy.read_only:
                self.read_policy = dataclasses.replace(policy, read_only=read_only)

    # --- what the handlers share ----------------------------------------------------------------

    def _send_query(self, server: ServerSession, msg: bytes) -> bool:
        """A simple Query to the server: its response ends with ReadyForQuery."""
        self.out.append(msg)
        server.plan.expect(r.ENDS_SYNC)
        server.synced = True
        server.unnamed = None  # a simple query replaces the unnamed statement
        return True

    def _refusal(self, effects: Effects) -> str | None:
        """A statement to run instead of one the router refuses, or None."""
        return refusal(effects, effects.large_objects and self._shares_role(), self.router.refused_state)

    def _session_effects(self, effects: Effects, server: ServerSession) -> str | None:
        """Account for what a statement does to the session; return a statement to run instead
        when the router refuses it."""
        refused = self._refusal(effects)
        if refused is not None:
            return refused
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
            server.prepared.clear()
            server.prepared_unsure = True
        if effects.discard_all:
            server.unnamed = None
        if effects.reset_all:
            # Back to the connection-time settings; the context is re-applied before the next use.
            self.settings = dict(self.startup_settings)
            server.applied = {}
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
        address = self._address
        if effects.database_ddl and address is not None:
            self.router.close_idle_connections(address.host, address.port, effects.database_ddl)
        return None

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
            self.refuse(exc)
            return False
        server.synced = False
        # The unnamed statement raises when executed: its ParseComplete and BindComplete are
        # swallowed, and the client sees the error in place of its message's response.
        raising = fe.build_parse("", raise_sql(exc.sqlstate, exc.message), b"\x00\x00")
        self.out.append(raising + fe.bind("", "", ()) + fe.execute(""))
        server.plan.expect(r.ENDS_PARSE, swallow=True)
        server.plan.expect(r.ENDS_BIND, swallow=True)
        server.plan.expect(r.ENDS_EXECUTE)
        server.unnamed = None
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
