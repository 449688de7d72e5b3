"""The shard side of one tenant move: the logical replication that copies the tenant's data from
its source shard to its target and keeps the copy current until the cutover.

Owns: the names of a move's publication, subscription and slot (`ReplicationNames`), the marker
table through which the mover knows the target has applied everything the source committed (a
row per move in schema `tenant_router_move`, published with the tenant's tables: replication
applies transactions in commit order, so once the target shows the marker's new value it has every
earlier commit), the publication of each isolation model (shared: the tenant's rows of every RLS
table, filtered on the tenant column; schema: the tenant's schema; database: the tenant's whole
database), the subscription and its progress (tables synced, lag in bytes, errors), copying the
sequences' positions, and taking all of it down again (`teardown`).

Must not: decide when to do any of this (router/rebalance/mover.py does), touch the catalog, or
delete tenant data (router/rebalance/cleanup.py does, after checking the catalog's placement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from router.admin.shard_access import SHARD_ERRORS, Login, close, connect
from router.core.topology import ServerAddress
from router.errors import MoveError
from router.isolation import Isolation, quote_ident, quote_literal, schema_name

log = logging.getLogger(__name__)

MARKER_SCHEMA: Final = "tenant_router_move"
_MARKERS: Final = f"{MARKER_SCHEMA}.markers"

# The tables whose rows make a tenant, per model, with the tenant column for shared tables.
_RLS_TABLES_SQL: Final = """
SELECT n.nspname::text, c.relname::text, r.column_name::text FROM router.rls_tables r
JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY 1, 2
"""
# Whether the tenant column is part of each table's replica identity: a publication that filters
# on it and publishes updates and deletes needs that, or the source refuses every UPDATE/DELETE
# on the table, other tenants' included.
_IDENTITY_SQL: Final = """
SELECT c.relreplident::text AS identity,
       coalesce((SELECT bool_or(a.attname = $3) FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary)
                                               OR (c.relreplident = 'i' AND i.indisreplident))), false) AS covered
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2
"""
# The sequences whose positions move with the tenant: for shared tables those their columns own.
_OWNED_SEQUENCES_SQL: Final = """
SELECT sn.nspname::text, s.relname::text FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  AND (tn.nspname, t.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY 1, 2
"""
_SCHEMA_SEQUENCES_SQL: Final = """
SELECT schemaname::text, sequencename::text FROM pg_sequences
WHERE CASE WHEN $1::text IS NULL THEN schemaname NOT IN ('pg_catalog', 'information_schema', $2)
           ELSE schemaname = $1 END
ORDER BY 1, 2
"""
_SEQUENCE_VALUE_SQL: Final = "SELECT last_value FROM pg_sequences WHERE schemaname = $1 AND sequencename = $2"


@dataclass(frozen=True)
class ReplicationNames:
    """What a move creates on the shards, all named after the move."""

    move_id: int

    @property
    def name(self) -> str:
        """The publication, the subscription and the slot share it."""
        return f"tenant_router_move_{self.move_id}"


@dataclass(frozen=True)
class Side:
    """One end of a move: a shard's primary and the database the tenant's data is in there."""

    shard: str
    address: ServerAddress
    database: str

    def conninfo(self, login: Login) -> str:
        """A libpq connection string to this side, for a subscription on the other."""
        parts = {
            "host": self.address.host,
            "port": str(self.address.port),
            "dbname": self.database,
            "user": login.user,
            "application_name": "tenant-router-move",
        }
        if login.password is not None:
            parts["password"] = login.password
        return " ".join(f"{key}={_conninfo_value(value)}" for key, value in parts.items())

    def describe(self) -> str:
        return f"shard {self.shard} ({self.address.host}:{self.address.port}/{self.database})"


def _conninfo_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class SharedTable:
    schema: str
    table: str
    tenant_column: str

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"


@contextlib.asynccontextmanager
async def opened(side: Side, login: Login) -> Any:
    """An admin connection to `side`'s database; failures are MoveError naming the side."""
    try:
        conn = await connect(side.address, login, side.database)
    except SHARD_ERRORS as exc:
        raise MoveError(f"cannot connect to {side.describe()}: {exc}") from exc
    try:
        yield conn
    finally:
        await close(conn)


async def shared_tables(conn: Any) -> list[SharedTable]:
    """The RLS-protected tables of a shard (`rls enable` records them in router.rls_tables)."""
    if await conn.fetchval("SELECT to_regclass('router.rls_tables') IS NULL"):
        return []
    return [SharedTable(r[0], r[1], r[2]) for r in await conn.fetch(_RLS_TABLES_SQL)]


async def identity_problems(conn: Any, tables: Sequence[SharedTable], side: Side) -> list[str]:
    """Shared tables a row-filtered publication cannot publish without breaking the source."""
    problems = []
    for table in tables:
        row = await conn.fetchrow(_IDENTITY_SQL, table.schema, table.table, table.tenant_column)
        if row is None:
            problems.append(f"table {table.sql} does not exist on {side.describe()}")
        elif row["identity"] != "f" and not row["covered"]:
            problems.append(
                f"table {table.sql} on {side.describe()}: its replica identity does not include the tenant"
                f" column {table.tenant_column!r}, so its rows cannot be published filtered by tenant"
                f" (every UPDATE and DELETE on it would fail meanwhile); make the tenant column part of"
                f" its primary key, e.g. PRIMARY KEY ({table.tenant_column}, id)"
            )
    return problems


async def ensure_markers(conn: Any, move_id: int, *, row: bool) -> None:
    """The marker table in this database (owned by the admin, reachable by nobody else); with
    `row`, this move's marker row (on the source; replication brings it to the target)."""
    async with conn.transaction():
        # Moves starting together would race on the schema's catalog rows (a concurrent REVOKE
        # fails with "tuple concurrently updated"): one at a time, per database.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", MARKER_SCHEMA)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {MARKER_SCHEMA}")
        await conn.execute(f"REVOKE ALL ON SCHEMA {MARKER_SCHEMA} FROM PUBLIC")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {_MARKERS} (move_id bigint PRIMARY KEY, probe bigint NOT NULL)")
        if row:
            await conn.execute(f"INSERT INTO {_MARKERS} VALUES ($1, 0) ON CONFLICT (move_id) DO NOTHING", move_id)


def publication_sql(
    names: ReplicationNames, isolation: Isolation, tenant_id: str, tables: Sequence[SharedTable]
) -> str:
    """CREATE PUBLICATION for the tenant's data and this move's marker row."""
    marker = f"TABLE {_MARKERS} WHERE (move_id = {names.move_id})"
    name = quote_ident(names.name)
    if isolation == "shared":
        filtered = [
            f"TABLE {t.sql} WHERE ({quote_ident(t.tenant_column)} = {quote_literal(tenant_id)})" for t in tables
        ]
        return f"CREATE PUBLICATION {name} FOR {', '.join([*filtered, marker])}"
    if isolation == "schema":
        return f"CREATE PUBLICATION {name} FOR TABLES IN SCHEMA {quote_ident(schema_name(tenant_id))}, {marker}"
    # The tenant's own database: everything in it (the marker table included) is the tenant's.
    return f"CREATE PUBLICATION {name} FOR ALL TABLES"


async def create_publication(conn: Any, sql: str, names: ReplicationNames) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", names.name):
        await conn.execute(sql)


async def create_subscription(conn: Any, names: ReplicationNames, source: Side, login: Login) -> None:
    """Subscribe the target to the source's publication: the initial copy starts at once."""
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)", names.name):
        return
    name = quote_ident(names.name)
    await conn.execute(
        f"CREATE SUBSCRIPTION {name} CONNECTION {quote_literal(source.conninfo(login))}"
        f" PUBLICATION {name} WITH (slot_name = {quote_literal(names.name)}, copy_data = true)"
    )


@dataclass(frozen=True)
class SyncState:
    """Where the target's subscription is."""

    exists: bool
    tables: int
    ready: int
    running: bool  # an apply worker runs
    errors: int  # apply and sync errors since the subscription began

    @property
    def synced(self) -> bool:
        return self.exists and self.tables > 0 and self.ready == self.tables


async def sync_state(conn: Any, names: ReplicationNames) -> SyncState:
    row = await conn.fetchrow(
        """SELECT s.oid,
                  (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid) AS tables,
                  (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid AND r.srsubstate = 'r') AS ready,
                  EXISTS (SELECT 1 FROM pg_stat_subscription a WHERE a.subid = s.oid AND a.relid IS NULL
                          AND a.pid IS NOT NULL) AS running,
                  coalesce((SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats t
                            WHERE t.subid = s.oid), 0) AS errors
           FROM pg_subscription s WHERE s.subname = $1""",
        names.name,
    )
    if row is None:
        return SyncState(False, 0, 0, False, 0)
    return SyncState(True, row["tables"], row["ready"], row["running"], row["errors"])


async def copy_progress(conn: Any, names: ReplicationNames) -> dict[int, int]:
    """Bytes each table's running initial copy (by table oid) has loaded so far on the target."""
    rows = await conn.fetch(
        """SELECT p.relid::bigint AS relid, p.bytes_processed FROM pg_stat_progress_copy p
           JOIN pg_stat_subscription a ON a.pid = p.pid JOIN pg_subscription s ON s.oid = a.subid
           WHERE s.subname = $1""",
        names.name,
    )
    return {int(row["relid"]): int(row["bytes_processed"]) for row in rows}


async def lag_bytes(conn: Any, names: ReplicationNames) -> int | None:
    """How far (bytes of WAL) the target's confirmed position is behind the source's current one."""
    value = await conn.fetchval(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
        " FROM pg_replication_slots WHERE slot_name = $1",
        names.name,
    )
    return None if value is None else max(0, int(value))


async def bump_marker(conn: Any, move_id: int) -> int:
    """Commit a new marker value on the source; the target has caught up once it shows it.

    The commit waits for its WAL flush even where synchronous_commit is off: WAL senders only send
    what is flushed, so otherwise the marker could wait for the WAL writer (up to wal_writer_delay,
    200 ms by default) while the tenant is held."""
    # One statement, one round trip: set_config(..., true) lasts for the statement's own
    # transaction, and synchronous_commit is read at its commit.
    value = await conn.fetchval(
        f"WITH flushed AS (SELECT set_config('synchronous_commit', 'on', true))"
        f" UPDATE {_MARKERS} SET probe = probe + 1 FROM flushed WHERE move_id = $1 RETURNING probe",
        move_id,
    )
    if value is None:
        raise MoveError(f"the marker row of move {move_id} is missing on the source")
    return int(value)


async def wait_for_marker(conn: Any, move_id: int, value: int, deadline: float) -> bool:
    """Poll the target until it has applied the marker `value`; False at `deadline` (loop time)."""
    loop = asyncio.get_running_loop()
    delay = 0.001
    while True:
        seen = await conn.fetchval(f"SELECT probe FROM {_MARKERS} WHERE move_id = $1", move_id)
        if seen is not None and seen >= value:
            return True
        if loop.time() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


async def tenant_sequences(
    conn: Any, isolation: Isolation, tenant_id: str, tables: Sequence[SharedTable]
) -> list[tuple[str, str]]:
    """The (schema, name) of the sequences whose positions go with the tenant."""
    if isolation == "shared":
        rows = await conn.fetch(_OWNED_SEQUENCES_SQL, [t.schema for t in tables], [t.table for t in tables])
    else:
        only = schema_name(tenant_id) if isolation == "schema" else None
        rows = await conn.fetch(_SCHEMA_SEQUENCES_SQL, only, MARKER_SCHEMA)
    return [(r[0], r[1]) for r in rows]


async def copy_sequences(source: Any, target: Any, sequences: Sequence[tuple[str, str]]) -> int:
    """Set each sequence on the target at least as far as on the source (a shared sequence keeps
    the target's own value if that is further: other tenants there use it too). Returns how many."""
    moved = 0
    for schema, name in sequences:
        value = await source.fetchval(_SEQUENCE_VALUE_SQL, schema, name)
        if value is None:
            continue  # never used on the source
        qualified = f"{quote_ident(schema)}.{quote_ident(name)}"
        await target.execute(
            "SELECT setval($1::regclass, greatest($2::bigint, coalesce((SELECT last_value FROM pg_sequences"
            " WHERE schemaname = $3 AND sequencename = $4), $2::bigint)))",
            qualified,
            value,
            schema,
            name,
        )
        moved += 1
    return moved


async def teardown(names: ReplicationNames, source: Side, target: Side, login: Login, *, own_database: bool) -> None:
    """Remove the move's subscription, slot, publication and marker rows from both sides, whatever
    exists of them (idempotent). The subscription goes first, so nothing done to the source
    afterwards (deleting the tenant's rows) can reach the target. `own_database`: the sides are the
    tenant's own databases, whose marker schema goes too (in a shard's database other moves may
    be using it)."""
    with contextlib.suppress(MoveError):  # the target database may be gone already (rolled back)
        async with opened(target, login) as conn:
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)", names.name):
                name = quote_ident(names.name)
                await conn.execute(f"ALTER SUBSCRIPTION {name} DISABLE")
                # Detach the slot: DROP SUBSCRIPTION would otherwise need the source to be reachable.
                await conn.execute(f"ALTER SUBSCRIPTION {name} SET (slot_name = NONE)")
                await conn.execute(f"DROP SUBSCRIPTION {name}")
            await _drop_marker(conn, names.move_id, own_database)
    with contextlib.suppress(MoveError):
        async with opened(source, login) as conn:
            await _drop_slot(conn, names.name)
            await conn.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(names.name)}")
            await _drop_marker(conn, names.move_id, own_database)


async def _drop_slot(conn: Any, slot: str) -> None:
    # A walsender of the disabled subscription may still hold the slot for a moment.
    for _ in range(100):
        row = await conn.fetchrow("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot)
        if row is None:
            return
        if row["active_pid"] is not None:
            await conn.execute("SELECT pg_terminate_backend($1)", row["active_pid"])
            await asyncio.sleep(0.05)
            continue
        with contextlib.suppress(asyncpg.UndefinedObjectError, asyncpg.ObjectInUseError):
            await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", slot):
        raise MoveError(
            f"replication slot {slot} stays in use; drop it by hand: SELECT pg_drop_replication_slot('{slot}')"
        )


async def _drop_marker(conn: Any, move_id: int, own_database: bool) -> None:
    if own_database:
        await conn.execute(f"DROP SCHEMA IF EXISTS {MARKER_SCHEMA} CASCADE")
    elif await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _MARKERS):
        await conn.execute(f"DELETE FROM {_MARKERS} WHERE move_id = $1", move_id)
