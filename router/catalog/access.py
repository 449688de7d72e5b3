"""How the catalog's code reaches the catalog database, and what a failure there means.

Owns: naming the catalog in messages without its credentials (`describe_dsn`), opening a catalog
connection (`connect`, `connection`), and the translation of driver errors into the router's:
a lost or refused connection -> CatalogUnavailable naming the catalog's host:port, a missing table
-> CatalogError saying how to create it (`translated`), plus what a background task survives by
reconnecting later (`OUTAGES`). Used by the store, the cache, the cluster registry and holds, and
the reload's pinning.

Must not: know the catalog's tables or SQL (router/catalog/schema.py does), retry, or keep
connections: each caller owns the connections it opens.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from router.dbconnect import CONNECTION_ERRORS, close_connection, open_connection
from router.errors import CatalogError, CatalogUnavailable

# What a background task survives by dropping its connection and trying again later (the
# connection errors include asyncpg's InternalClientError after a terminated backend).
OUTAGES: Final = (CatalogUnavailable, CatalogError, *CONNECTION_ERRORS, asyncpg.PostgresError)


def describe_dsn(dsn: str) -> str:
    """`host:port` of a DSN (URL or key=value form), without credentials, for error messages."""
    hosts: builtins.list[str]
    ports: builtins.list[str]
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        pairs = [_split_host_port(item) for item in parts.netloc.rpartition("@")[2].split(",") if item]
        hosts, ports = [h for h, _ in pairs], [p for _, p in pairs]
        query = parse_qs(parts.query)
        if "host" in query:
            hosts = query["host"][0].split(",")
        if "port" in query:
            ports = query["port"][0].split(",")
    else:
        params = {k: v.strip("'") for k, v in re.findall(r"(\w+)\s*=\s*('[^']*'|\S+)", dsn)}
        hosts, ports = params.get("host", "").split(","), params.get("port", "").split(",")
    hosts = [h for h in hosts if h] or [os.environ.get("PGHOST", "localhost")]
    default_port = os.environ.get("PGPORT", "5432")
    if len(ports) == 1:  # one port applies to every host
        ports = ports * len(hosts)
    return ",".join(f"{host}:{(ports[i] if i < len(ports) else '') or default_port}" for i, host in enumerate(hosts))


def _split_host_port(item: str) -> tuple[str, str]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = item.partition(":")
    return unquote(host), port


def unavailable(where: str, exc: BaseException, timeout: float) -> CatalogUnavailable:
    """The CatalogUnavailable that `exc`, met talking to the catalog at `where`, means."""
    if isinstance(exc, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(exc, TimeoutError):
        reason = f"no answer within {timeout:g}s"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = str(exc) or type(exc).__name__
    return CatalogUnavailable(f"tenant catalog at {where} is unavailable: {reason}")


def not_initialised(where: str, schema: str) -> CatalogError:
    """The catalog has no schema (or no tenant tables) yet."""
    return CatalogError(
        f"the tenant catalog at {where} has no schema {schema!r} yet", hint="run `tenant-router catalog init`"
    )


async def connect(dsn: str, timeout: float, application_name: str) -> Any:
    """A new catalog connection; any failure, bad credentials and a missing database included, is
    CatalogUnavailable: each leaves the router without a catalog."""
    try:
        return await open_connection(dsn=dsn, timeout=timeout, application_name=application_name)
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
        raise unavailable(describe_dsn(dsn), exc, timeout) from exc


@contextlib.contextmanager
def translated(
    where: str,
    schema: str,
    timeout: float,
    *,
    missing: Callable[[str, str], CatalogError] = not_initialised,
    conn: Any = None,
) -> Iterator[None]:
    """Driver errors -> `missing(where, schema)` (a table is not there) or CatalogUnavailable (the
    connection is lost). With `conn`: an InterfaceError while `conn` is still open is a misuse of
    the API, not an outage, and passes through as it is."""
    try:
        yield
    except asyncpg.UndefinedTableError as exc:
        raise missing(where, schema) from exc
    except CONNECTION_ERRORS as exc:
        if conn is not None and isinstance(exc, asyncpg.InterfaceError) and not conn.is_closed():
            raise
        raise unavailable(where, exc, timeout) from exc


@contextlib.asynccontextmanager
async def connection(
    dsn: str,
    schema: str,
    timeout: float,
    application_name: str,
    *,
    missing: Callable[[str, str], CatalogError] = not_initialised,
) -> AsyncIterator[Any]:
    """One short-lived catalog connection, with driver errors translated, closed on the way out."""
    conn = await connect(dsn, timeout, application_name)
    try:
        with translated(describe_dsn(dsn), schema, timeout, missing=missing):
            yield conn
    finally:
        await close_connection(conn, timeout)


def is_open(conn: Any) -> bool:
    """Whether `conn` (an asyncpg connection or None) can still be used."""
    return conn is not None and not conn.is_closed()
