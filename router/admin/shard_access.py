"""Admin connections to shard primaries: who logs in, where, and how a failure is told.

Owns: `Login` and the logins admin work uses (`admin_login`: the `admin` role, required;
`admin_or_router_login`: the admin if configured, else the router's own `server.user`), finding a
shard's primary (`shard_primary`), opening and closing one connection to it (`connect`, `close`,
through router/dbconnect.py, named `tenant-router-admin` in pg_stat_activity), which errors mean
"the shard failed" (`SHARD_ERRORS`), and how a shard and such a failure read in a message
(`describe`, `reason`).

Must not: run SQL of its own (router/admin/provisioning.py, rls_enable.py, role_audit.py and
tenant_lifecycle/ decide what to do on a shard), touch the catalog, or keep connections: every
caller opens its own and closes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from router.config import RouterConfig
from router.core.topology import ServerAddress, Topology
from router.dbconnect import close_connection, open_connection
from router.errors import AdminRequired, UnknownShard

SHARD_CONNECT_TIMEOUT: Final = 10.0
# What can go wrong talking to a shard, as opposed to a bug in our code.
SHARD_ERRORS: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_APP_NAME: Final = "tenant-router-admin"


@dataclass(frozen=True)
class Login:
    """Who an admin connection logs in as."""

    user: str
    password: str | None = field(repr=False)


def shard_primary(topology: Topology, shard: str, tenant_id: str | None = None) -> ServerAddress:
    """The primary of `shard`; UnknownShard if shards.yaml does not have it (a catalog pin may
    name a shard that was removed)."""
    if shard not in topology.shards:
        whose = f"tenant {tenant_id!r} is placed on shard {shard!r}" if tenant_id else f"shard {shard!r}"
        raise UnknownShard(
            f"{whose}, which is not in the topology",
            hint=f"known shards: {', '.join(sorted(topology.shards)) or '(none)'}",
        )
    return topology.shards[shard].primary


def describe(address: ServerAddress, database: str | None = None) -> str:
    """`host:port/database`, how messages name a shard's server."""
    return f"{address.host}:{address.port}/{database or address.dbname}"


def reason(exc: BaseException, timeout: float = SHARD_CONNECT_TIMEOUT) -> str:
    """A shard error in a few words, for messages naming the shard themselves."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    return str(exc) or type(exc).__name__


async def connect(
    address: ServerAddress, login: Login, database: str | None = None, timeout: float = SHARD_CONNECT_TIMEOUT
) -> Any:
    """A new connection to `address` as `login`, to `database` (default: the shard's own)."""
    return await open_connection(
        host=address.host,
        port=address.port,
        database=database or address.dbname,
        user=login.user,
        password=login.password,
        timeout=timeout,
        application_name=_APP_NAME,
    )


async def close(conn: Any) -> None:
    """Close a connection `connect` opened; never raises for a connection already lost."""
    await close_connection(conn, SHARD_CONNECT_TIMEOUT)


def admin_login(config: RouterConfig, purpose: str) -> Login:
    """The `admin` credentials; AdminRequired, naming `purpose`, if router.yaml has none."""
    if config.admin is None:
        raise AdminRequired(
            f"{purpose} needs the admin role: router.yaml has no `admin` section",
            hint="add admin: {user: ..., password: ...}, a role that may create roles, databases and"
            " policies on every shard (usually a superuser); the router's own server.user must not be one",
        )
    return Login(config.admin.user, config.admin.password)


def admin_or_router_login(config: RouterConfig) -> Login:
    """The admin if configured, else the router's own role: who does admin work that the layout
    without an admin (and without a context secret) leaves to the router's role."""
    user = config.admin if config.admin is not None else config.server
    return Login(user.user, user.password)
