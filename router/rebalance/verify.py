"""Whether a move's target holds exactly the tenant's data that its source holds.

Owns: per-table row counts and checksums of the tenant's rows on both sides, each read inside a
snapshot (`Snapshot`) the mover takes while the tenant is held and the target has applied every
commit of the source, so both sides are compared at the same point although the tenant is served
again while the checksums are computed; and the list of differences (`compare`).

The rows are read as export reads them (router/admin/tenant_lifecycle: the same deterministic
output settings and order, so equal rows give equal bytes on any server), as the admin for a shared
tenant and as the tenant's own role for a schema or database tenant (its code, e.g. a type's output
function, must not run with the admin's rights).

Must not: hold the tenant, change anything on either side, or touch the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.admin.shard_access import Login
from router.admin.tenant_admin import TenantView
from router.admin.tenant_lifecycle.shard import OUTPUT_SETTINGS, ShardTable, copy_digest, find_tables
from router.rebalance.replication import MARKER_SCHEMA


@dataclass(frozen=True)
class TableDigest:
    table: str
    rows: int
    size: int
    sha256: str


class Snapshot:
    """A read-only REPEATABLE READ transaction on one side: what it reads is that side's state at
    the moment `take` returned, however long the reading takes afterwards."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._open = False

    async def take(self) -> None:
        await self.conn.execute(
            "SELECT set_config(name, value, false) FROM unnest($1::text[], $2::text[]) AS s(name, value)",
            [name for name, _ in OUTPUT_SETTINGS],
            [value for _, value in OUTPUT_SETTINGS],
        )
        await self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self._open = True
        await self.conn.fetchval("SELECT 1")  # the snapshot is taken by the first query

    async def close(self) -> None:
        if self._open and not self.conn.is_closed():
            self._open = False
            await self.conn.execute("ROLLBACK")


async def tenant_tables(conn: Any, view: TenantView) -> list[ShardTable]:
    """The tables holding the tenant's rows (the move's marker table is not one of them)."""
    return [t for t in await find_tables(conn, view) if t.schema != MARKER_SCHEMA]


async def digests(snapshot: Snapshot, tables: Sequence[ShardTable], tenant_id: str) -> list[TableDigest]:
    found = []
    for table in tables:
        digest = await copy_digest(snapshot.conn, table.select_sql(table.columns, tenant_id))
        found.append(TableDigest(f"{table.schema}.{table.table}", digest.rows, digest.size, digest.hexdigest()))
    return found


def compare(source: Sequence[TableDigest], target: Sequence[TableDigest]) -> list[str]:
    """Every difference between the two sides, one line each; [] when they hold the same rows."""
    problems = []
    theirs = {d.table: d for d in target}
    for ours in source:
        other = theirs.get(ours.table)
        if other is None:
            problems.append(f"{ours.table}: missing on the target")
        elif other.rows != ours.rows:
            problems.append(f"{ours.table}: {ours.rows} rows on the source, {other.rows} on the target")
        elif other.sha256 != ours.sha256:
            problems.append(f"{ours.table}: {ours.rows} rows on both sides, but their contents differ")
    return problems


def reader_login(admin: Login, tenant_login: Login | None) -> Login:
    """Who reads the tenant's rows for the comparison (see the module docstring)."""
    return tenant_login if tenant_login is not None else admin
