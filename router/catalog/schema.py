"""The catalog's tables: their DDL and migrations, the tenant row as a record, and the SQL over it.

Owns: the schema name's rules and the NOTIFY channel derived from it (`channel_name`), the
migrations that `CatalogStore.init_schema` applies (`SCHEMA_VERSION`: the tenants table and its
change-notification trigger; the cluster's instances, holds and hold_acks tables), the `Tenant`
record and its `Status`, and the tenant queries the store and the cache share (`TenantQueries`).

Must not: open connections or run anything (the store and the cache do), or hold state: values and
SQL text only.
"""

from __future__ import annotations

import builtins
import json
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from router.isolation import Isolation, quote_ident, quote_literal, validate_isolation

Status = Literal["active", "suspended"]
STATUSES: Final[tuple[Status, ...]] = ("active", "suspended")

DEFAULT_SCHEMA: Final = "tenant_router"
# The catalog schema becomes part of the NOTIFY channel name, which PostgreSQL caps at 63 bytes.
_SCHEMA_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,54}")
# A notification payload no tenant id can take: "reload everything" (sent on TRUNCATE).
RELOAD_ALL: Final = "*"


@dataclass(frozen=True, slots=True)
class Tenant:
    """One catalog row. `shard` is the catalog pin, or None when placement decides."""

    id: str
    isolation: Isolation
    shard: str | None
    status: Status
    created_at: datetime
    labels: Mapping[str, Any]


def validate_status(status: str) -> Status:
    """Return `status` as a Status, or raise ValueError naming the allowed values."""
    for known in STATUSES:
        if status == known:
            return known
    raise ValueError(f"invalid status {status!r}: expected one of {', '.join(STATUSES)}")


def validate_schema(schema: str) -> None:
    """Raise ValueError unless `schema` can name a catalog schema (and the channels derived from it)."""
    if _SCHEMA_RE.fullmatch(schema) is None:
        raise ValueError(
            f"invalid catalog schema {schema!r}: use lowercase letters, digits and '_',"
            " starting with a letter or '_', at most 55 characters"
        )


def channel_name(schema: str) -> str:
    """The NOTIFY channel the catalog in `schema` announces tenant changes on."""
    validate_schema(schema)
    return f"{schema}_changes"


# --- migrations ----------------------------------------------------------------------------------


def _migration_1(schema: str) -> builtins.list[str]:
    s = quote_ident(schema)
    isolations = ", ".join(quote_literal(i) for i in ("shared", "schema", "database"))
    statuses = ", ".join(quote_literal(st) for st in STATUSES)
    channel = quote_literal(channel_name(schema))
    return [
        f"""CREATE TABLE {s}.tenants (
            id text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{{0,47}}$'),
            isolation text NOT NULL CHECK (isolation IN ({isolations})),
            shard text NULL,
            status text NOT NULL DEFAULT 'active' CHECK (status IN ({statuses})),
            created_at timestamptz NOT NULL DEFAULT now(),
            labels jsonb NOT NULL DEFAULT '{{}}' CHECK (jsonb_typeof(labels) = 'object')
        )""",
        # Row triggers name the tenant; TRUNCATE names no one, so it asks for a full reload.
        f"""CREATE FUNCTION {s}.notify_tenant_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify({channel}, {quote_literal(RELOAD_ALL)});
            ELSIF TG_OP = 'DELETE' THEN
                PERFORM pg_notify({channel}, OLD.id);
            ELSE
                PERFORM pg_notify({channel}, NEW.id);
                IF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
                    PERFORM pg_notify({channel}, OLD.id);
                END IF;
            END IF;
            RETURN NULL;
        END
        $fn$""",
        f"""CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON {s}.tenants
            FOR EACH ROW EXECUTE FUNCTION {s}.notify_tenant_change()""",
        f"""CREATE TRIGGER tenants_notify_truncate AFTER TRUNCATE ON {s}.tenants
            FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_tenant_change()""",
    ]


def _migration_2(schema: str) -> builtins.list[str]:
    """What router instances agree on (router/catalog/cluster/): the registry, holds and their acks."""
    s = quote_ident(schema)
    return [
        f"""CREATE TABLE {s}.instances (
            instance_id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            workers integer NOT NULL DEFAULT 1,
            version text NOT NULL,
            labels jsonb NOT NULL DEFAULT '{{}}' CHECK (jsonb_typeof(labels) = 'object')
        )""",
        # At most one hold per tenant; hold_id is what acknowledgements and notifications name.
        f"""CREATE TABLE {s}.holds (
            tenant_id text PRIMARY KEY,
            hold_id text NOT NULL UNIQUE,
            requested_at timestamptz NOT NULL DEFAULT now(),
            reason text NOT NULL
        )""",
        # Removing a hold removes its acks; an ack for a hold that is already gone is refused.
        f"""CREATE TABLE {s}.hold_acks (
            hold_id text NOT NULL REFERENCES {s}.holds (hold_id) ON DELETE CASCADE,
            instance_id text NOT NULL,
            acked_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (hold_id, instance_id)
        )""",
    ]


# The stages of a tenant move (router/rebalance/), in order; "aborted" ends a move rolled back.
MOVE_STAGES: Final = (
    "planned",
    "copying",
    "catching_up",
    "holding",
    "switched",
    "verified",
    "cleaned",
    "aborted",
)
# Stages after which a move is over (the one-open-move-per-tenant index ignores them).
MOVE_FINISHED: Final = ("cleaned", "aborted")


def _migration_3(schema: str) -> builtins.list[str]:
    """Online rebalancing: holds that expire, which catalog pins a reload made, and tenant moves."""
    s = quote_ident(schema)
    stages = ", ".join(quote_literal(stage) for stage in MOVE_STAGES)
    finished = ", ".join(quote_literal(stage) for stage in MOVE_FINISHED)
    return [
        # A hold whose coordinator died must not hold its tenant forever: past expires_at it is
        # as good as released (NULL: never expires, holds made before this version).
        f"ALTER TABLE {s}.holds ADD COLUMN expires_at timestamptz NULL",
        # A catalog pin a reload made (the tenant's data stayed on its old shard), as opposed to an
        # operator's pin: `rebalance plan` moves the former to where shards.yaml places them.
        f"""CREATE TABLE {s}.reload_pins (
            tenant_id text PRIMARY KEY REFERENCES {s}.tenants (id) ON DELETE CASCADE ON UPDATE CASCADE,
            shard text NOT NULL,
            pinned_at timestamptz NOT NULL DEFAULT now()
        )""",
        # One row per tenant move, its stage recorded as it goes, so a move survives the process
        # running it (router/rebalance/mover.py).
        f"""CREATE TABLE {s}.moves (
            move_id bigserial PRIMARY KEY,
            tenant_id text NOT NULL,
            isolation text NOT NULL,
            source text NOT NULL,
            target text NOT NULL,
            pin text NULL,
            stage text NOT NULL DEFAULT 'planned' CHECK (stage IN ({stages})),
            attempts integer NOT NULL DEFAULT 0,
            rows_copied bigint NOT NULL DEFAULT 0,
            bytes_copied bigint NOT NULL DEFAULT 0,
            hold_seconds float8 NULL,
            lag_bytes bigint NULL,
            last_error text NULL,
            owner text NULL,
            owner_seen_at timestamptz NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz NULL,
            CHECK (source <> target)
        )""",
        f"CREATE UNIQUE INDEX moves_one_open_per_tenant ON {s}.moves (tenant_id) WHERE stage NOT IN ({finished})",
    ]


# Append only: version N's statements run once, in order, on catalogs below version N.
MIGRATIONS: Final[tuple[Callable[[str], builtins.list[str]], ...]] = (_migration_1, _migration_2, _migration_3)
SCHEMA_VERSION: Final = len(MIGRATIONS)


# --- tenant rows ---------------------------------------------------------------------------------


def tenant_from_row(row: Mapping[str, Any]) -> Tenant:
    return Tenant(
        id=row["id"],
        isolation=validate_isolation(row["isolation"]),
        shard=row["shard"],
        status=validate_status(row["status"]),
        created_at=row["created_at"],
        labels=types.MappingProxyType(json.loads(row["labels"])),
    )


class TenantQueries:
    """The SQL text over the tenants table of one catalog schema, built once."""

    def __init__(self, schema: str) -> None:
        validate_schema(schema)
        s = quote_ident(schema)
        cols = "id, isolation, shard, status, created_at, labels::text AS labels"
        self.schema = schema
        self.channel = channel_name(schema)
        self.select_all = f"SELECT {cols} FROM {s}.tenants ORDER BY id"
        # Keyset pages (by the primary key's own order) for the running cache's full reload.
        self.select_page = f"SELECT {cols} FROM {s}.tenants WHERE id > $1 ORDER BY id LIMIT $2"
        self.select_one = f"SELECT {cols} FROM {s}.tenants WHERE id = $1"
        self.select_many = f"SELECT {cols} FROM {s}.tenants WHERE id = ANY($1::text[])"
        self.insert = (
            f"INSERT INTO {s}.tenants (id, isolation, shard, labels) VALUES ($1, $2, $3, $4::jsonb) RETURNING {cols}"
        )
        self.set_status = f"UPDATE {s}.tenants SET status = $2 WHERE id = $1"
        # An operator's pin replaces whatever a reload pinned: the tenant is where the operator says.
        self.set_shard = (
            f"WITH operator_pin AS (DELETE FROM {s}.reload_pins WHERE tenant_id = $1)"
            f" UPDATE {s}.tenants SET shard = $2 WHERE id = $1"
        )
        self.delete = f"DELETE FROM {s}.tenants WHERE id = $1"
