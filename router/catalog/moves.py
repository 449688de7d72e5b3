"""Tenant moves as the catalog records them: one row per move, its stage written as it goes.

Owns: the `Move` record and `MoveStore`, the SQL over the catalog's `moves` table (and, for the
cutover, the one transaction that switches a tenant's placement: `switch`), and which process runs
a move (`claim`/`touch`: an owner with a heartbeat, so two `rebalance apply` runs never drive the
same move, and a dead one's moves are taken over once its heartbeat is stale).

Must not: touch shard servers or decide what to move (router/rebalance/ does), or hold a
connection between calls: every call opens its own, so a store is shared freely by concurrent moves.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from router.catalog.access import connection
from router.catalog.cluster.holds import hold_sql
from router.catalog.schema import DEFAULT_SCHEMA, MOVE_FINISHED, MOVE_STAGES, validate_schema
from router.errors import HoldExpired, MoveConflict
from router.isolation import Isolation, quote_ident, quote_literal, validate_isolation

__all__ = ["MOVE_FINISHED", "MOVE_STAGES", "Move", "MoveStore"]

_APP_NAME: Final = "tenant-router-rebalance"
_TIMEOUT: Final = 10.0
_COLUMNS: Final = (
    "move_id, tenant_id, isolation, source, target, pin, stage, attempts, rows_copied, bytes_copied,"
    " hold_seconds, lag_bytes, last_error, owner, owner_seen_at, created_at, updated_at, finished_at"
)


@dataclass(frozen=True, slots=True)
class Move:
    """One row of the moves table."""

    move_id: int
    tenant_id: str
    isolation: Isolation
    source: str
    target: str
    pin: str | None  # the catalog pin once moved; None: placement (ring, shards.yaml pins) decides
    stage: str
    attempts: int
    rows_copied: int
    bytes_copied: int
    hold_seconds: float | None
    lag_bytes: int | None
    last_error: str | None
    owner: str | None
    owner_seen_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.stage in MOVE_FINISHED

    @property
    def switched(self) -> bool:
        """Whether the catalog already places the tenant on the target."""
        return self.stage in ("switched", "cleaned")


def _move(row: Any) -> Move:
    return Move(**{**dict(row), "isolation": validate_isolation(row["isolation"])})


class MoveStore:
    """The moves table of one catalog. Stateless between calls."""

    def __init__(self, dsn: str, schema: str = DEFAULT_SCHEMA) -> None:
        validate_schema(schema)
        self._dsn = dsn
        self.schema = schema
        s = quote_ident(schema)
        self._s = s
        finished = ", ".join(quote_literal(stage) for stage in MOVE_FINISHED)
        self._open = f"stage NOT IN ({finished})"

    def _connection(self, conn: Any = None) -> Any:
        return connection(self._dsn, self.schema, _TIMEOUT, _APP_NAME) if conn is None else contextlib.nullcontext(conn)

    async def create(self, tenant_id: str, isolation: Isolation, source: str, target: str, pin: str | None) -> Move:
        """Record a planned move; MoveConflict if the tenant has an open move already."""
        async with self._connection() as conn:
            try:
                row = await conn.fetchrow(
                    f"INSERT INTO {self._s}.moves (tenant_id, isolation, source, target, pin)"
                    f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
                    tenant_id,
                    isolation,
                    source,
                    target,
                    pin,
                )
            except asyncpg.UniqueViolationError:
                raise MoveConflict(
                    f"tenant {tenant_id!r} is being moved already",
                    hint="see `tenant-router rebalance status`; `rebalance apply` finishes it",
                ) from None
        return _move(row)

    async def get(self, move_id: int) -> Move | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM {self._s}.moves WHERE move_id = $1", move_id)
        return None if row is None else _move(row)

    async def open_move(self, tenant_id: str) -> Move | None:
        """The tenant's move that is not over yet, if any."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM {self._s}.moves WHERE tenant_id = $1 AND {self._open}", tenant_id
            )
        return None if row is None else _move(row)

    async def list(self, *, open_only: bool = False) -> builtins.list[Move]:
        where = f" WHERE {self._open}" if open_only else ""
        async with self._connection() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM {self._s}.moves{where} ORDER BY move_id")
        return [_move(row) for row in rows]

    async def claim(self, move_id: int, owner: str, stale_after: float) -> bool:
        """Make `owner` the process running the move, unless another owner's heartbeat is fresh."""
        async with self._connection() as conn:
            status: str = await conn.execute(
                f"UPDATE {self._s}.moves SET owner = $2, owner_seen_at = clock_timestamp()"
                f" WHERE move_id = $1 AND {self._open} AND (owner IS NULL OR owner = $2"
                " OR owner_seen_at < clock_timestamp() - $3::float8 * interval '1 second')",
                move_id,
                owner,
                stale_after,
            )
        return status == "UPDATE 1"

    async def touch(self, move_ids: Sequence[int], owner: str) -> None:
        """The owner's heartbeat on the moves it runs."""
        async with self._connection() as conn:
            await conn.execute(
                f"UPDATE {self._s}.moves SET owner_seen_at = clock_timestamp()"
                " WHERE move_id = ANY($1::bigint[]) AND owner = $2",
                list(move_ids),
                owner,
            )

    async def release(self, move_id: int, owner: str) -> None:
        """The owner stops running the move (it stays where it is, for a later run)."""
        async with self._connection() as conn:
            await conn.execute(
                f"UPDATE {self._s}.moves SET owner = NULL, owner_seen_at = NULL WHERE move_id = $1 AND owner = $2",
                move_id,
                owner,
            )

    async def set_stage(self, move_id: int, stage: str, *, expect: Sequence[str] | None = None, **fields: Any) -> Move:
        """Record the move's new stage (and other columns); with `expect`, only from those stages,
        else MoveConflict (someone else moved it on)."""
        if stage not in MOVE_STAGES:
            raise ValueError(f"unknown move stage {stage!r}")
        return await self._update(move_id, {"stage": stage, **fields}, expect)

    async def record(self, move_id: int, **fields: Any) -> Move:
        """Update columns (progress, lag, errors) without changing the stage."""
        return await self._update(move_id, fields, None)

    async def _update(self, move_id: int, fields: dict[str, Any], expect: Sequence[str] | None) -> Move:
        allowed = {"stage", "attempts", "rows_copied", "bytes_copied", "hold_seconds", "lag_bytes", "last_error"}
        unknown = fields.keys() - allowed
        if unknown:
            raise ValueError(f"not a move column: {', '.join(sorted(unknown))}")
        names = list(fields)
        sets = [f"{name} = ${i + 2}" for i, name in enumerate(names)]
        sets.append("updated_at = clock_timestamp()")
        if fields.get("stage") in MOVE_FINISHED:
            sets.append("finished_at = clock_timestamp(), owner = NULL, owner_seen_at = NULL")
        args: list[Any] = [move_id, *fields.values()]
        where = "move_id = $1"
        if expect is not None:
            args.append(list(expect))
            where += f" AND stage = ANY(${len(args)}::text[])"
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"UPDATE {self._s}.moves SET {', '.join(sets)} WHERE {where} RETURNING {_COLUMNS}", *args
            )
        if row is None:
            current = await self.get(move_id)
            now = "gone" if current is None else f"at stage {current.stage}"
            raise MoveConflict(f"move {move_id} is {now}, not at {' or '.join(expect or ())}")
        return _move(row)

    async def switch(self, move: Move, hold_id: str, margin: float, *, conn: Any = None) -> Move:
        """The cutover's catalog step, in one transaction: while the hold `hold_id` is in force (and
        will be for `margin` seconds more), place the tenant on the target (its pin set to
        `move.pin`, its reload pin forgotten) and record the move as switched. HoldExpired if the
        hold is gone or about to expire: then nothing changed, and the routers resume on the source.

        The catalog's trigger announces the tenant's change at commit; the routers re-read the
        tenant before they resume its transactions anyway (router/catalog/cluster/participant.py).
        `conn`: a catalog connection to work on (the cutover's own), else one of its own.
        """
        s = self._s
        async with self._connection(conn) as conn, conn.transaction():
            # Locked first: the hold cannot be released (deleted) while this transaction switches;
            # then whether it stays in force, by the holds' own rule (HoldSql.hold_alive).
            held = await conn.fetchval(
                f"SELECT true FROM {s}.holds WHERE hold_id = $1 AND tenant_id = $2 FOR UPDATE", hold_id, move.tenant_id
            )
            if not held or not await conn.fetchval(hold_sql(self.schema).hold_alive, hold_id, margin):
                raise HoldExpired(f"the hold on tenant {move.tenant_id!r} expired before its placement was switched")
            await conn.execute(f"UPDATE {s}.tenants SET shard = $2 WHERE id = $1", move.tenant_id, move.pin)
            await conn.execute(f"DELETE FROM {s}.reload_pins WHERE tenant_id = $1", move.tenant_id)
            row = await conn.fetchrow(
                f"UPDATE {s}.moves SET stage = 'switched', updated_at = clock_timestamp()"
                f" WHERE move_id = $1 AND stage = 'holding' RETURNING {_COLUMNS}",
                move.move_id,
            )
            if row is None:
                raise MoveConflict(f"move {move.move_id} left the holding stage while its cutover ran")
        return _move(row)

    async def clear_pin(self, tenant_id: str) -> bool:
        """Forget a reload pin that needs no move (placement puts the tenant on that shard anyway):
        the catalog pin goes with it, if it still names the reload pin's shard."""
        s = self._s
        async with self._connection() as conn, conn.transaction():
            shard = await conn.fetchval(f"DELETE FROM {s}.reload_pins WHERE tenant_id = $1 RETURNING shard", tenant_id)
            if shard is None:
                return False
            await conn.execute(f"UPDATE {s}.tenants SET shard = NULL WHERE id = $1 AND shard = $2", tenant_id, shard)
        return True

    async def drop_holds(self, tenant_id: str, reason: str) -> int:
        """Remove the tenant's hold left behind by a dead run of a move (its reason names the move),
        announced as a release is, so the routers resume the tenant at once."""
        async with self._connection() as conn, conn.transaction():
            dropped = await conn.fetch(
                f"DELETE FROM {self._s}.holds WHERE tenant_id = $1 AND reason = $2 RETURNING hold_id",
                tenant_id,
                reason,
            )
            for row in dropped:
                sql = hold_sql(self.schema)
                await conn.execute(sql.notify, sql.holds_channel, row["hold_id"])
        return len(dropped)
