"""Keeps the router's own logins to its servers out of its tenants' hands.

Owns: opening a pool's server connection when the role it logs in as may have been changed by a
session acting as that role, and the repair. Every shared tenant acts as the router's role, and
PostgreSQL lets a role change its own password and its own session defaults (ALTER ROLE
CURRENT_USER PASSWORD / SET), also where the router cannot see the statement: in a DO block or a
function of pg_temp. The router refuses the statements it sees (router.sql.statements); this covers
the rest, on the path where they would do harm, the opening of a new server connection:

- A login refused for its password (28P01): connect as `admin`, set the role's password back to
  the configured one (sent as a SCRAM verifier, never in clear), log an ERROR naming what happened,
  count it, and log in again, once.
- The router's role in the hardened setup carrying session defaults it could have set itself
  (user-settable parameters in pg_db_role_setting, for every database or this one): such a default
  may be a tenant's trap (a search_path reaching an accomplice's table), and RESET ALL returns to
  it. The connection is closed, each default is RESET as the admin (ALTER ROLE ... [IN DATABASE
  ...] RESET name), logged, counted, and a connection opened again, once. Defaults only a
  superuser can set (track_activities = off) are the operator's and stay.

Without `admin` in router.yaml, both end in a clear error naming what was found and how to fix it;
`tenant-router check` reports such a deployment as exposed. Repairs of one role on one server are
serialised, and a login that failed before a repair finished retries without repairing again.

Cost: one query (ROLE_DEFAULTS_SQL, well under a millisecond) on each new connection of the
router's role in the hardened setup; nothing on the per-transaction path. A repair costs an admin
connection.

It also makes each pool's `Connector` (router.core.pool): the pool is generic, and this is where
its connections become PostgreSQL server connections, opened through the guard.

Must not: change anything on a server but the role's password and its user-settable defaults, or
be used for roles whose password the router does not hold.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final

from router.config import AdminCredentials
from router.core.pool import Connector, Pool, PoolKey
from router.errors import BackendAuthFailed, BackendPasswordRejected, BackendUnavailable
from router.isolation import quote_ident, quote_literal
from router.net.server import ServerConnection, open_server_connection
from router.protocol.pg.auth import scram_verifier
from router.sql.session_sql import ROLE_DEFAULTS_SQL

log = logging.getLogger(__name__)

# Kinds of repair (the label of the metric).
PASSWORD: Final = "password"
ROLE_DEFAULTS: Final = "role_defaults"

_HIDDEN: Final = "perhaps hidden in a DO block or a function, where the router cannot see it"


OpenOnce = Callable[[], Awaitable[ServerConnection]]


class RoleGuard:
    """The repairs of one router process; `repairs` counts them by (shard, kind) for the metrics."""

    def __init__(self, admin: AdminCredentials | None, connect_timeout: float) -> None:
        self.admin = admin
        self.connect_timeout = connect_timeout
        self.repairs: Counter[tuple[str, str]] = Counter()
        self._locks: dict[tuple[str, int, str], asyncio.Lock] = {}
        # Repairs done per (host, port, role): a login that failed before the count moved retries.
        self._generation: Counter[tuple[str, int, str]] = Counter()

    def connector(self, password: str | None, check_defaults: bool) -> Connector[ServerConnection]:
        """How one pool opens its connections: as its role, with `password`, guarded; and whether
        its role is the router's own in the hardened setup (whose session defaults are checked on
        every new connection)."""

        async def connect(pool: Pool[ServerConnection]) -> ServerConnection:
            key = pool.key
            open_once = functools.partial(
                open_server_connection,
                key.host,
                key.port,
                key.database,
                key.user,
                password,
                label=key.label,
                connect_timeout=self.connect_timeout,
                on_closed=pool.connection_closed,
            )
            conn = await self._open(key, open_once, password, check_defaults)
            # Statements known to parse on the pool's database (answered without a server).
            conn.plan.parsed = pool.valid_statements
            return conn

        return connect

    async def _open(
        self, key: PoolKey, open_once: OpenOnce, password: str | None, check_defaults: bool
    ) -> ServerConnection:
        role = (key.host, key.port, key.user)
        seen = self._generation[role]
        try:
            conn = await open_once()
        except BackendPasswordRejected as exc:
            if password is None or self.admin is None or self.admin.user == key.user:
                raise BackendAuthFailed(
                    exc.message,
                    hint=f"if a session acting as {key.user} changed its password (ALTER ROLE CURRENT_USER"
                    " PASSWORD), set it back; with `admin` in router.yaml the router repairs this itself",
                ) from None
            await self._repair(key, seen, PASSWORD, self._password_sql(key.user, password), exc.message)
            try:
                conn = await open_once()
            except BackendPasswordRejected as again:
                raise BackendAuthFailed(
                    f"{again.message} (again, after the router set the password back as {self.admin.user})",
                    hint="is `server.password` what the role's password should be?",
                ) from None
        if not check_defaults:
            return conn
        defaults = await _role_defaults(conn)
        if not defaults:
            return conn
        conn.close("the router's role carries session defaults of its own")
        found = "; ".join(f"{setting} (in {database or 'every database'})" for database, _name, setting in defaults)
        if self.admin is None:
            raise BackendUnavailable(
                f"{key.label}: the router's role has session defaults of its own, which any shared tenant"
                f" could have set (ALTER ROLE CURRENT_USER SET ...): {found}; refusing its connections",
                hint="remove them (ALTER ROLE <role> [IN DATABASE <db>] RESET <name>) and set what is needed"
                " per database (ALTER DATABASE ... SET) instead; with `admin` in router.yaml the router"
                " removes them itself",
            )
        statements = "; ".join(_reset_sql(key.user, database, name) for database, name, _setting in defaults)
        await self._repair(key, seen, ROLE_DEFAULTS, statements, f"session defaults of the role: {found}")
        conn = await open_once()
        if await _role_defaults(conn):
            conn.close("the router's role carries session defaults of its own")
            raise BackendUnavailable(f"{key.label}: the router's role has session defaults again after removing them")
        return conn

    async def _repair(self, key: PoolKey, seen: int, kind: str, sql: str, found: str) -> None:
        """Run `sql` as the admin on the key's server, unless another repair of the role finished
        since `seen` (the failed login predates it): then only log in again."""
        assert self.admin is not None
        role = (key.host, key.port, key.user)
        lock = self._locks.setdefault(role, asyncio.Lock())
        async with lock:
            if self._generation[role] != seen:
                return
            log.error(
                "%s: role %s was changed on the server (%s), by a session acting as it, %s; repairing it as %s",
                key.label,
                key.user,
                found,
                _HIDDEN,
                self.admin.user,
            )
            admin = await open_server_connection(
                key.host,
                key.port,
                key.database,
                self.admin.user,
                self.admin.password,
                label=f"{key.label} as {self.admin.user}",
                connect_timeout=self.connect_timeout,
                on_closed=_forget,
            )
            try:
                _reported, error = await admin.run_internal(sql)
            finally:
                admin.close("repair done")
            if error is not None:
                raise BackendUnavailable(
                    f"{key.label}: the router could not repair role {key.user} as {self.admin.user}: {error.message}",
                    hint=f"the admin needs to be a superuser or have CREATEROLE with ADMIN OPTION on {key.user}",
                )
            self._generation[role] += 1
            self.repairs[(key.shard, kind)] += 1

    @staticmethod
    def _password_sql(role: str, password: str) -> str:
        return f"ALTER ROLE {quote_ident(role)} PASSWORD {quote_literal(scram_verifier(password))}"


def _reset_sql(role: str, database: str | None, name: str) -> str:
    scope = f" IN DATABASE {quote_ident(database)}" if database is not None else ""
    return f"ALTER ROLE {quote_ident(role)}{scope} RESET {quote_ident(name)}"


async def _role_defaults(conn: ServerConnection) -> list[tuple[str | None, str, str]]:
    """(database or None for every database, name, `name=value`) of each default the role could set itself."""
    _reported, error, rows = await conn.query_internal(ROLE_DEFAULTS_SQL)
    if error is not None:
        conn.close("could not check the role's session defaults")
        raise BackendUnavailable(f"{conn.label}: could not check the role's session defaults: {error.message}")
    return [(row[0], row[1] or "", row[2] or "") for row in rows]


def _forget(conn: ServerConnection) -> None:
    """The admin's connection belongs to no pool."""
