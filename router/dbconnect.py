"""The one place the router opens and closes its own asyncpg connections: to the catalog, for the
health checks of the shards, and for admin work on them. (Client traffic never goes through asyncpg:
router/net/ forwards it byte for byte.)

Must not: translate errors into the router's (each caller knows what a failure means for it:
the catalog unavailable, a server down, an admin command failed), retry, or pool.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import asyncpg

# Errors that mean "the connection is gone or unusable", as opposed to a SQL error. asyncpg can
# raise InternalClientError ("cannot switch to state ...") on a connection the server just
# terminated (MagicStack/asyncpg#1069): a lost connection too.
CONNECTION_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


async def open_connection(
    *,
    application_name: str,
    timeout: float,
    dsn: str | None = None,
    host: str | None = None,
    port: int | None = None,
    database: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> Any:
    """A new asyncpg connection, named in pg_stat_activity, connecting within `timeout` seconds."""
    return await asyncpg.connect(
        dsn,
        host=host,
        port=port,
        database=database,
        user=user,
        password=password,
        timeout=timeout,
        server_settings={"application_name": application_name},
    )


async def close_connection(conn: Any, timeout: float) -> None:
    """Close politely; asyncpg aborts the socket itself if that fails or takes longer than `timeout`."""
    if conn is not None and not conn.is_closed():
        with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
            await conn.close(timeout=timeout)
