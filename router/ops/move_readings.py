"""The catalog's tenant moves as figures for /metrics: moves started, finished and failed, bytes
copied, each open move's catch-up lag, and the cutover holds as a histogram.

Owns `MoveFigures` (one reading) and `MoveReadings`, the background service that reads them from
the catalog's `moves` table every few seconds on a connection of its own (a scrape must not wait
for the catalog), keeping the last good reading through a catalog outage.

The figures are the catalog's, the same for every router reading it: one process per instance
reads them (worker 0), and across instances take max(), not sum().

Must not: run moves (router/rebalance/ does, in `rebalance apply`), or write to the catalog.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from router.catalog.access import OUTAGES, connect, is_open
from router.catalog.schema import validate_schema
from router.core.background import BackgroundService
from router.dbconnect import close_connection
from router.isolation import quote_ident

log = logging.getLogger(__name__)

# The cutover hold histogram's upper bounds (seconds); +Inf follows.
CUTOVER_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_APP_NAME: Final = "tenant-router-move-readings"
_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class MoveFigures:
    """One reading of the moves table."""

    started: int = 0
    finished: int = 0  # cleaned: the tenant is on its target, the source cleaned up
    failed: int = 0  # aborted: rolled back, the tenant stayed on its source
    in_progress: dict[str, int] = field(default_factory=dict)  # open moves by stage
    bytes_copied: int = 0
    lag_bytes: dict[str, int] = field(default_factory=dict)  # open moves' tenants -> bytes behind
    cutover_buckets: tuple[tuple[float, int], ...] = ()  # cumulative, +Inf last
    cutover_sum: float = 0.0


def _queries(schema: str) -> tuple[str, str, str]:
    validate_schema(schema)
    moves = f"{quote_ident(schema)}.moves"
    bounds = ", ".join(f"count(*) FILTER (WHERE hold_seconds <= {bound!r})" for bound in CUTOVER_BUCKETS)
    totals = (
        "SELECT count(*) AS started, count(*) FILTER (WHERE stage = 'cleaned') AS finished,"
        " count(*) FILTER (WHERE stage = 'aborted') AS failed, coalesce(sum(bytes_copied), 0)::bigint AS copied,"
        f" count(hold_seconds) AS holds, coalesce(sum(hold_seconds), 0) AS held, ARRAY[{bounds}] AS buckets"
        f" FROM {moves}"
    )
    by_stage = f"SELECT stage, count(*) FROM {moves} WHERE stage NOT IN ('cleaned', 'aborted') GROUP BY stage"
    lags = (
        f"SELECT tenant_id, lag_bytes FROM {moves} WHERE stage NOT IN ('cleaned', 'aborted') AND lag_bytes IS NOT NULL"
    )
    return totals, by_stage, lags


async def read_figures(conn: Any, schema: str) -> MoveFigures:
    totals_sql, by_stage_sql, lags_sql = _queries(schema)
    totals = await conn.fetchrow(totals_sql, timeout=_TIMEOUT)
    buckets = [*zip(CUTOVER_BUCKETS, totals["buckets"], strict=True), (float("inf"), totals["holds"])]
    return MoveFigures(
        started=totals["started"],
        finished=totals["finished"],
        failed=totals["failed"],
        in_progress={row[0]: row[1] for row in await conn.fetch(by_stage_sql, timeout=_TIMEOUT)},
        bytes_copied=totals["copied"],
        lag_bytes={row[0]: row[1] for row in await conn.fetch(lags_sql, timeout=_TIMEOUT)},
        cutover_buckets=tuple(buckets),
        cutover_sum=float(totals["held"]),
    )


class MoveReadings(BackgroundService):
    """Reads `MoveFigures` every `interval` seconds; `figures` is the last good reading (None
    until the first, or when the catalog has no moves table: a catalog not migrated)."""

    def __init__(self, dsn: str, schema: str, interval: float = 5.0) -> None:
        super().__init__(log)
        self._dsn = dsn
        self._schema = schema
        self._interval = interval
        self._conn: Any = None
        self.figures: MoveFigures | None = None

    async def _begin(self) -> None:
        self._spawn(self._run(), name="move-readings", crash_message="move readings: died; move metrics stand still")

    async def _end(self) -> None:
        conn, self._conn = self._conn, None
        await close_connection(conn, _TIMEOUT)

    async def _run(self) -> None:
        while True:
            try:
                if not is_open(self._conn):
                    self._conn = await connect(self._dsn, _TIMEOUT, _APP_NAME)
                self.figures = await read_figures(self._conn, self._schema)
            except OUTAGES as exc:
                log.debug("move readings: %s; keeping the last reading", exc)
                conn, self._conn = self._conn, None
                await close_connection(conn, _TIMEOUT)
            await asyncio.sleep(self._interval)
