"""What a shard needs before a tenant can move to or from it online, and saying what is missing.

Owns: the SQL that reads it on a shard primary as the admin (`PREREQUISITES_SQL`), the findings
drawn from that row (`move_findings`: values in, text out, each naming the setting and its value),
`move_prerequisites` (one shard's problems, [] when moves may use it), `all_move_prerequisites`
(every shard, for `tenant-router check`) and `require_move_prerequisites`, which refuses a move
(MovePrerequisiteMissing) listing every problem of both its shards.

What moves need, and why: PostgreSQL 15 or later (publications with row filters, for shared
tenants); wal_level = logical (logical decoding of the source's WAL); a free replication slot and a
free WAL sender (each move's subscription holds one of each on the source while it runs);
max_logical_replication_workers >= 1 (the target's apply worker); the admin role able to connect,
and a superuser (PostgreSQL 15 lets only superusers create subscriptions; on 16 and later a member
of pg_create_subscription may) or, to publish, at least REPLICATION.

Must not: change anything on a shard (it only reads), touch the catalog, or print (router/cli.py
does). Connections go through router/admin/shard_access.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from router.admin.shard_access import SHARD_ERRORS, Login, admin_login, close, connect, describe, reason, shard_primary
from router.config import RouterConfig
from router.core.topology import ServerAddress, Topology
from router.errors import AdminRequired, MovePrerequisiteMissing

__all__ = [
    "PREREQUISITES_SQL",
    "all_move_prerequisites",
    "move_findings",
    "move_prerequisites",
    "require_move_prerequisites",
]

MIN_VERSION: Final = 150000  # publications with row filters
_SUBSCRIBERS_ROLE_SINCE: Final = 160000  # pg_create_subscription: non-superusers may subscribe

# The settings and the admin role (the login's) as moves need them, read in one row.
PREREQUISITES_SQL: Final = """
SELECT current_setting('server_version_num')::int AS version,
       current_setting('server_version') AS version_text,
       current_setting('wal_level') AS wal_level,
       current_setting('max_replication_slots')::int AS max_replication_slots,
       (SELECT count(*) FROM pg_replication_slots)::int AS used_replication_slots,
       current_setting('max_wal_senders')::int AS max_wal_senders,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int AS used_wal_senders,
       current_setting('max_logical_replication_workers')::int AS max_logical_replication_workers,
       r.rolname AS role, r.rolsuper AS superuser, r.rolreplication AS replication,
       EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'pg_create_subscription'
               AND pg_has_role(r.oid, g.oid, 'MEMBER')) AS creates_subscriptions
FROM pg_roles r WHERE r.rolname = current_user
"""


def move_findings(row: Mapping[str, Any]) -> list[str]:
    """What `row` (PREREQUISITES_SQL's) lacks for moves, one sentence each; [] when nothing."""
    found: list[str] = []
    if row["version"] < MIN_VERSION:
        found.append(
            f"server version is {row['version_text']}; moves need PostgreSQL 15 or later (publications"
            " with row filters)"
        )
    if row["wal_level"] != "logical":
        found.append(
            f"wal_level is {row['wal_level']}; moves need wal_level = logical (set it in postgresql.conf and restart)"
        )
    slots, used_slots = row["max_replication_slots"], row["used_replication_slots"]
    if slots - used_slots < 1:
        found.append(
            f"no free replication slot: max_replication_slots is {slots} and {used_slots} in use; each move needs"
            " one (raise max_replication_slots in postgresql.conf and restart, or drop unused slots)"
        )
    senders, used_senders = row["max_wal_senders"], row["used_wal_senders"]
    if senders - used_senders < 1:
        found.append(
            f"no free WAL sender: max_wal_senders is {senders} and {used_senders} in use; each move needs one"
            " (raise max_wal_senders in postgresql.conf and restart)"
        )
    if row["max_logical_replication_workers"] < 1:
        found.append(
            f"max_logical_replication_workers is {row['max_logical_replication_workers']}; moves need at least 1"
            " (set it in postgresql.conf and restart)"
        )
    found += _role_findings(row)
    return found


def _role_findings(row: Mapping[str, Any]) -> list[str]:
    if row["superuser"]:
        return []
    role = row["role"]
    found = []
    if row["version"] >= _SUBSCRIBERS_ROLE_SINCE:
        if not row["creates_subscriptions"]:
            found.append(
                f"the admin role {role} is neither a superuser nor a member of pg_create_subscription, so it"
                f" cannot create subscriptions: tenants cannot move to this shard (GRANT pg_create_subscription"
                f" TO {role}, or make it a superuser)"
            )
    else:
        found.append(
            f"the admin role {role} is not a superuser: PostgreSQL {row['version'] // 10000} lets only"
            f" superusers create subscriptions, so tenants cannot move to this shard (ALTER ROLE {role} SUPERUSER)"
        )
    if not row["replication"]:
        found.append(
            f"the admin role {role} has neither SUPERUSER nor REPLICATION, so it cannot stream a publication:"
            f" tenants cannot move off this shard (ALTER ROLE {role} REPLICATION)"
        )
    return found


async def move_prerequisites(config: RouterConfig, topology: Topology, shard: str) -> list[str]:
    """What `shard` lacks for moves, each problem naming the shard, the setting and its value;
    [] when moves may use it. Reads only; UnknownShard if shards.yaml lacks `shard`."""
    address = shard_primary(topology, shard)
    where = f"shard {shard} ({describe(address)})"
    try:
        login = admin_login(config, "moving tenants")
    except AdminRequired as exc:
        return [f"{where}: {exc.message}"]
    try:
        row = await _read(address, login)
    except SHARD_ERRORS as exc:
        return [f"{where}: the admin role {login.user} cannot connect ({reason(exc)}); moves need an admin connection"]
    if row is None:  # pragma: no cover - current_user always has a pg_roles row
        return [f"{where}: the admin role {login.user} is not in pg_roles"]
    return [f"{where}: {finding}" for finding in move_findings(row)]


async def _read(address: ServerAddress, login: Login) -> Any:
    conn = await connect(address, login)
    try:
        return await conn.fetchrow(PREREQUISITES_SQL)
    finally:
        await close(conn)


async def all_move_prerequisites(config: RouterConfig, topology: Topology) -> dict[str, list[str]]:
    """shard -> its problems (see move_prerequisites) for every shard of `topology`, read in parallel."""
    shards = list(topology.shards)
    found = await asyncio.gather(*(move_prerequisites(config, topology, shard) for shard in shards))
    return dict(zip(shards, found, strict=True))


async def require_move_prerequisites(config: RouterConfig, topology: Topology, source: str, target: str) -> None:
    """Refuse a move from `source` to `target` unless both shards have what moves need:
    MovePrerequisiteMissing listing every problem of both. Nothing is changed either way."""
    shards = list(dict.fromkeys((source, target)))
    found = await asyncio.gather(*(move_prerequisites(config, topology, shard) for shard in shards))
    problems = [problem for shard_problems in found for problem in shard_problems]
    if problems:
        raise MovePrerequisiteMissing(
            f"cannot move a tenant from shard {source} to shard {target}: "
            + ("; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems)),
            problems,
            hint="`tenant-router check` reports what each shard lacks for moves",
        )
