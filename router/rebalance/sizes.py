"""What the rebalance plan reads: the catalog behind it, and how big each moving tenant is.

Owns: `load_plan` (tenants, reload pins and open moves read from the catalog in one snapshot, the
plan computed by plan.py, then sized) and `estimate_sizes` (rows and bytes per moving tenant, read
on its source shard as the admin):
- shared tenants: per source shard, ONE query per RLS-protected table (`router.rls_tables`)
  grouping the moving tenants' rows by the tenant column: rows = count(*), bytes = the sum of
  pg_column_size of each row (the data; indexes not counted);
- schema tenants: over the ordinary tables of the tenant's schema, pg_total_relation_size (indexes
  and TOAST included) and the planner's reltuples (0 until a table was first analysed);
- database tenants: pg_database_size, and reltuples summed over the tables of that database.
A shard that cannot be read leaves its tenants without an estimate and says why in the plan's
problems; the plan is still printed.

Must not: change anything on a shard or in the catalog, decide what moves (plan.py), or open
shard connections other than through router/admin/shard_access.py.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

from router.admin.rls import TABLES_TABLE
from router.admin.shard_access import (
    SHARD_ERRORS,
    Login,
    admin_login,
    close,
    connect,
    describe,
    reason,
    shard_primary,
)
from router.catalog.access import connection
from router.catalog.schema import MOVE_FINISHED, Tenant, TenantQueries, tenant_from_row
from router.config import RouterConfig
from router.core.topology import Topology
from router.errors import AdminRequired
from router.isolation import database_name, quote_ident, quote_literal, schema_name
from router.rebalance.plan import Plan, PlannedMove, compute_plan

__all__ = ["Sizes", "estimate_sizes", "load_plan"]

Sizes = dict[str, tuple[int, int]]  # tenant -> (rows, bytes)

_APP_NAME: Final = "tenant-router-rebalance"
_CATALOG_TIMEOUT: Final = 10.0
_SYSTEM_SCHEMAS: Final = ("pg_catalog", "information_schema")

_RLS_TABLES_SQL: Final = f"""
SELECT n.nspname, c.relname, r.column_name FROM {TABLES_TABLE} r
JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY n.nspname, c.relname
"""
# Ordinary tables (and materialized views) of each of the schemas $1.
_SCHEMA_SIZES_SQL: Final = """
SELECT n.nspname,
       coalesce(sum(greatest(c.reltuples, 0)) FILTER (WHERE c.relkind = 'r'), 0)::bigint,
       coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
WHERE n.nspname = ANY($1::text[])
GROUP BY n.nspname
"""
_DATABASE_SIZES_SQL: Final = "SELECT datname, pg_database_size(oid) FROM pg_database WHERE datname = ANY($1::text[])"
# Rows of every ordinary table of the connection's database, system schemas aside.
_DATABASE_ROWS_SQL: Final = """
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname <> ALL($1::text[]) AND n.nspname NOT LIKE 'pg\\_%'
"""


async def load_plan(config: RouterConfig, topology: Topology, *, sizes: bool = True) -> Plan:
    """The plan for the catalog as it is now under `topology`, with size estimates if `sizes`.

    Raises CatalogUnavailable or CatalogError (not initialised); a shard that cannot be sized is
    one of the plan's problems, and so is a router.yaml without `admin`."""
    tenants, reload_pins, open_moves = await _read_catalog(config)
    plan = compute_plan(tenants, reload_pins, open_moves, topology)
    if not sizes or not plan.moves:
        return plan
    problems: list[str] = []
    try:
        found = await estimate_sizes(config, topology, plan.moves, problems=problems)
    except AdminRequired as exc:
        plan.problems.append(f"sizes not estimated: {exc.message}")
        return plan
    plan = plan.with_sizes(found)
    plan.problems.extend(problems)
    return plan


async def _read_catalog(config: RouterConfig) -> tuple[list[Tenant], dict[str, str], set[str]]:
    schema = config.catalog.schema
    s = quote_ident(schema)
    finished = ", ".join(quote_literal(stage) for stage in MOVE_FINISHED)
    # One snapshot: a move or a reload committing meanwhile is seen whole or not at all.
    async with (
        connection(config.catalog.dsn, schema, _CATALOG_TIMEOUT, _APP_NAME) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        rows = await conn.fetch(TenantQueries(schema).select_all, timeout=_CATALOG_TIMEOUT)
        pins = await conn.fetch(f"SELECT tenant_id, shard FROM {s}.reload_pins", timeout=_CATALOG_TIMEOUT)
        moving = await conn.fetch(
            f"SELECT tenant_id FROM {s}.moves WHERE stage NOT IN ({finished})", timeout=_CATALOG_TIMEOUT
        )
    return (
        [tenant_from_row(row) for row in rows],
        {row["tenant_id"]: row["shard"] for row in pins},
        {row["tenant_id"] for row in moving},
    )


async def estimate_sizes(
    config: RouterConfig, topology: Topology, moves: Iterable[PlannedMove], *, problems: list[str] | None = None
) -> Sizes:
    """tenant -> (rows, bytes) for `moves`, read on each move's source shard as the admin.

    Shards are read in parallel. A tenant missing from the result could not be sized: its shard
    failed (said in `problems`, if given), or its schema or database does not exist.
    Raises AdminRequired if router.yaml has no `admin`."""
    login = admin_login(config, "estimating the size of tenants to move")
    by_shard: defaultdict[str, list[PlannedMove]] = defaultdict(list)
    for move in moves:
        by_shard[move.source].append(move)
    results = await asyncio.gather(
        *(_shard_sizes(topology, shard, shard_moves, login) for shard, shard_moves in sorted(by_shard.items()))
    )
    sizes: Sizes = {}
    for found, failures in results:
        sizes.update(found)
        if problems is not None:
            problems.extend(failures)
    return sizes


async def _shard_sizes(
    topology: Topology, shard: str, moves: Sequence[PlannedMove], login: Login
) -> tuple[Sizes, list[str]]:
    """The sizes of `moves` (all on `shard`), and what went wrong, if anything did."""
    sizes: Sizes = {}
    found: dict[str, int] = {}  # database -> bytes
    address = shard_primary(topology, shard)
    try:
        conn = await connect(address, login)
    except SHARD_ERRORS as exc:
        return sizes, [_failure(shard, describe(address), moves, exc)]
    try:
        ids = {isolation: [m.tenant for m in moves if m.isolation == isolation] for isolation in ("shared", "schema")}
        if ids["shared"]:
            sizes.update(await _shared_sizes(conn, ids["shared"]))
        if ids["schema"]:
            by_schema = {schema_name(t): t for t in ids["schema"]}
            for name, rows, size in await conn.fetch(_SCHEMA_SIZES_SQL, list(by_schema)):
                sizes[by_schema[name]] = (rows, size)
        databases = {database_name(m.tenant): m.tenant for m in moves if m.isolation == "database"}
        if databases:
            found = {name: size for name, size in await conn.fetch(_DATABASE_SIZES_SQL, list(databases))}
    except SHARD_ERRORS as exc:
        return sizes, [_failure(shard, describe(address), moves, exc)]
    finally:
        await close(conn)
    # A database tenant's tables are only visible from inside its database: one connection each.
    failures: list[str] = []
    for name, size in sorted(found.items()):
        try:
            db = await connect(address, login, database=name)
            try:
                rows = await db.fetchval(_DATABASE_ROWS_SQL, list(_SYSTEM_SCHEMAS))
            finally:
                await close(db)
        except SHARD_ERRORS as exc:
            tenant = databases[name]
            failures.append(
                f"size of tenant {tenant} on shard {shard} ({describe(address, name)}) unknown: {reason(exc)}"
            )
            continue
        sizes[databases[name]] = (rows, size)
    return sizes, failures


async def _shared_sizes(conn: Any, tenants: list[str]) -> Sizes:
    """Rows and bytes of each shared tenant over every RLS-protected table: one query per table."""
    if await conn.fetchval("SELECT to_regclass($1) IS NULL", TABLES_TABLE):
        return dict.fromkeys(tenants, (0, 0))  # no protected table: no shared rows on this shard
    rows: dict[str, int] = dict.fromkeys(tenants, 0)
    size: dict[str, int] = dict.fromkeys(tenants, 0)
    for schema, table, column in await conn.fetch(_RLS_TABLES_SQL):
        col = quote_ident(column)
        sql = (
            f"SELECT t.{col}::text, count(*), coalesce(sum(pg_column_size(t.*)), 0)::bigint"
            f" FROM {quote_ident(schema)}.{quote_ident(table)} AS t WHERE t.{col} = ANY($1::text[]) GROUP BY 1"
        )
        for tenant, count, total in await conn.fetch(sql, tenants):
            rows[tenant] += count
            size[tenant] += total
    return {tenant: (rows[tenant], size[tenant]) for tenant in tenants}


def _failure(shard: str, where: str, moves: Sequence[PlannedMove], exc: BaseException) -> str:
    count = len(moves)
    return f"sizes of {count} tenant{'s' if count != 1 else ''} on shard {shard} ({where}) unknown: {reason(exc)}"
