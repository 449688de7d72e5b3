"""The router's model of one PostgreSQL server session: what it has put on one server connection.

Owns the record of a server session as the router believes it to be: the named statements it holds
(and the epoch of each one's parse), the unnamed statement, the settings applied, the tenant entered,
the client that last used it, what that client's statements may have left (the residue the exact
hand-over clears), whether the extended protocol is synced, the transaction status, and the plan of
responses still owed.

Only the PostgreSQL session (router.protocol.pg.session) changes these fields while a client uses the
connection; the few moments outside a client's use (a login's settings, a wipe before the connection
goes back to its pool, a query of the router's own) go through the methods below. The server
connection that holds this model reads it and advances the response plan as responses stream, and
never writes the rest. Sans-IO: no sockets, no asyncio, no pool.
"""

from __future__ import annotations

from router.protocol.pg import backend as be
from router.protocol.pg.prepared import ServerStatements
from router.protocol.pg.responses import ResponsePlan
from router.sql.inert_statements import LEAVES_NOTHING


class ServerSession:
    """What the router has put on one server connection. See the module docstring."""

    __slots__ = (
        "applied",
        "entered",
        "owner",
        "owner_tenant",
        "plan",
        "prepared",
        "prepared_unsure",
        "residue",
        "synced",
        "tx_status",
        "unnamed",
    )

    def __init__(self) -> None:
        # Its named statements and the epoch of each one's parse (router.protocol.pg.prepared),
        # changed in place only (the plan holds it too).
        self.prepared: ServerStatements = {}
        # A client's statement may have dropped some of them (DEALLOCATE, DISCARD ALL) or not (it
        # failed): `prepared` was emptied of them at once, and the names are read back from the
        # server when the transaction ends.
        self.prepared_unsure = False
        self.unnamed: bytes | None = None
        # The settings in force, as one dict shared by the sessions that want the same (never
        # changed in place: replaced when the settings change).
        self.applied: dict[str, str] = {}
        # The tenant this session has entered (router/admin/rls.py), "" for none, None when unknown (a
        # new connection, or after a wipe or a client's own setting changes): the router leaves first.
        self.entered: str | None = None
        # Serial number of the client session that last used this connection: a different one
        # means a hand-over, which may have to clear what the last one left.
        self.owner: int | None = None
        self.owner_tenant: str | None = None  # ... and its tenant
        # What the session may hold since it was last wiped (router.sql.inert_statements): the highest
        # level of the statements that ran on it, LEAVES_ANYTHING also when a client's search_path
        # that may reach a tenant's objects was applied. The exact hand-over clears what it says.
        self.residue = LEAVES_NOTHING
        self.plan = ResponsePlan(self.prepared)
        # No extended-protocol message is waiting for its Sync.
        self.synced = True
        # The transaction status of the last ReadyForQuery (the server connection writes it as
        # responses stream).
        self.tx_status = be.TX_IDLE

    def simple_query_sent(self) -> None:
        """A simple query of the router's own went: it replaced the unnamed statement."""
        self.unnamed = None

    def settings_applied(self, applied: dict[str, str]) -> None:
        """The router's statement made these settings the ones in force (a login's probe)."""
        self.applied = applied

    def settings_unknown(self) -> None:
        """The router's statement setting them failed: what is in force is not known."""
        self.applied = {}

    def wiped(self) -> None:
        """DISCARD ALL ran (the session goes back to its pool empty): nothing of any client is left."""
        self.prepared.clear()
        self.unnamed = None
        self.applied = {}
        self.owner = None
        # Its RESET ALL emptied the setting that carries the entered tenant (router/admin/rls.py):
        # the next client of any shared tenant, this one's included, enters again.
        self.entered = None
        self.owner_tenant = None
        self.residue = LEAVES_NOTHING
