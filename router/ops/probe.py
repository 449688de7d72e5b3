"""The health monitor's probe of a PostgreSQL server, over asyncpg.

Owns: `Probe` (what the monitor calls: a server in, a `Reading` out, or an exception), `PgProbe`
(the real one: one persistent connection per server, reopened when it fails or is stale, and one
read-only SELECT), and how a failed check reads (`failure_reason`, `expected_failure`).

Must not: schedule checks, keep up/down state or decide anything (router/ops/health.py does), or
change anything on a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg

from router.config import ServerCredentials
from router.core.topology import ServerAddress, ServerKey
from router.dbconnect import close_connection, open_connection
from router.ops.readings import Reading
from router.protocol.pg.wal import parse_lsn

_APP_NAME: Final = "tenant-router-health"
# One query for both roles: a primary in recovery (or a replica promoted) is reported, not an error.
# pg_current_wal_lsn() raises during recovery, hence the CASE. LSNs as text: parsed by parse_lsn.
_PROBE_SQL: Final = (
    "SELECT pg_is_in_recovery() AS in_recovery,"
    " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS current_lsn,"
    " pg_last_wal_replay_lsn()::text AS replay_lsn,"
    " pg_last_wal_receive_lsn()::text AS receive_lsn,"
    " pg_last_xact_replay_timestamp() AS replay_timestamp,"
    " now() AS now"
)
# Errors that mean "this connection is gone or unusable", as opposed to a failing query; asyncpg
# can raise InternalClientError on a connection the server just terminated (MagicStack/asyncpg#1069).
_CONNECTION_ERRORS: Final = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


# Probes one server and returns what it found, or raises: any exception means the check failed.
# The monitor bounds each call by `health.timeout` and never runs two at once for one server.
Probe = Callable[[ServerKey, ServerAddress], Awaitable[Reading]]


def expected_failure(exc: BaseException) -> bool:
    """Whether `exc` is how a check of a down or unreachable server fails (anything else is a bug)."""
    return isinstance(exc, (TimeoutError, *_CONNECTION_ERRORS, asyncpg.PostgresError))


def failure_reason(exc: BaseException, timeout: float) -> str:
    """Why a check failed, in a few words for the log and `ServerStatus.last_error`."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class PgProbe:
    """The real probe: one persistent connection per server, reopened when it fails or is stale.

    The monitor serialises calls per server and bounds each by its timeout; a call that is
    cancelled or fails drops the connection, so the next one starts on a fresh one.
    """

    def __init__(self, credentials: ServerCredentials, timeout: float) -> None:
        self._credentials = credentials
        self._timeout = timeout
        self._conns: dict[ServerKey, Any] = {}
        self._stale: set[ServerKey] = set()

    async def __call__(self, key: ServerKey, address: ServerAddress) -> Reading:
        conn = self._conns.get(key)
        if conn is not None and (key in self._stale or conn.is_closed()):
            self.terminate(key)
            conn = None
        self._stale.discard(key)
        try:
            if conn is not None:
                try:
                    return await self._query(conn)
                except _CONNECTION_ERRORS:
                    # Lost since the last check (terminated backend, server restart, idle timeout):
                    # only a fresh connection failing too says the server is down.
                    self.terminate(key)
            conn = await open_connection(
                host=address.host,
                port=address.port,
                database=address.dbname,
                user=self._credentials.user,
                password=self._credentials.password,
                timeout=self._timeout,
                application_name=_APP_NAME,
            )
            self._conns[key] = conn
            return await self._query(conn)
        except BaseException:
            self.terminate(key)  # cancelled mid-query or broken: never reuse it
            raise

    async def _query(self, conn: Any) -> Reading:
        row = await conn.fetchrow(_PROBE_SQL)
        return Reading(
            in_recovery=bool(row["in_recovery"]),
            current_lsn=_lsn_or_none(row["current_lsn"]),
            replay_lsn=_lsn_or_none(row["replay_lsn"]),
            receive_lsn=_lsn_or_none(row["receive_lsn"]),
            replay_timestamp=row["replay_timestamp"],
            now=row["now"],
        )

    def invalidate(self, key: ServerKey) -> None:
        """Reconnect before the next probe of `key` (the router could not open a connection)."""
        if key in self._conns:
            self._stale.add(key)

    def terminate(self, key: ServerKey) -> None:
        self._stale.discard(key)
        conn = self._conns.pop(key, None)
        if conn is not None:
            conn.terminate()

    async def discard(self, key: ServerKey) -> None:
        self._stale.discard(key)
        await close_connection(self._conns.pop(key, None), self._timeout)

    async def aclose(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        self._stale.clear()
        await asyncio.gather(*(close_connection(conn, self._timeout) for conn in conns))


def _lsn_or_none(text: str | None) -> int | None:
    return None if text is None else parse_lsn(text)
