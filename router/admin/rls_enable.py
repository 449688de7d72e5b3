"""`tenant-router rls enable`: row-level security on a shared table, on every shard primary.

Owns: running, as the admin and in one transaction per shard, what makes a shared table safe for
shared tenants: the security objects (role tenant_router_rls, schema `router`, the context key,
the entering functions), SET on the carrier for that role only, the policy on the table and on
every table protected before, the grants of the router's role, and taking large objects from
PUBLIC; and the refusals when the policy would be worth nothing (`check_table`, the carrier and
schema `router` checks). Its report reuses the role audit's findings (router/admin/role_audit.py).

Must not: write SQL text for the security objects (router/admin/rls.py owns it: values in, SQL
out), touch the catalog or a tenant's own schema or database (router/admin/provisioning.py), print
(router/cli.py), or change an owner behind the operator's back: what it cannot make safe it
refuses, saying what to run.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from router.admin import rls
from router.admin.role_audit import ENTERING_SQL, ROUTER_ROLE_SQL, role_findings
from router.admin.shard_access import SHARD_ERRORS, Login, admin_login, close, connect, describe, reason
from router.config import RouterConfig
from router.core.topology import ServerAddress, Topology
from router.errors import AdminRequired, ProvisioningError, UnsafeLayout
from router.isolation import quote_ident

_TABLE_SQL: Final = """
SELECT c.oid, c.relkind::text AS relkind, n.nspname::text AS schema, c.relname::text AS name,
       pg_get_userbyid(c.relowner)::text AS owner,
       pg_has_role($3, c.relowner, 'MEMBER') AS router_owns_table,
       pg_get_userbyid(n.nspowner)::text AS schema_owner,
       pg_has_role($3, n.nspowner, 'MEMBER') AS router_owns_schema,
       (SELECT format_type(a.atttypid, NULL) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped) AS column_type,
       ARRAY(SELECT p.polname::text FROM pg_policy p
             WHERE p.polrelid = c.oid AND p.polpermissive AND p.polname <> $4 ORDER BY 1) AS other_policies
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
"""
_SEQUENCES_SQL: Final = """
SELECT n.nspname::text AS schema, s.relname::text AS name
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace n ON n.oid = s.relnamespace
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = $1 AND d.deptype IN ('a', 'i')
ORDER BY 1, 2
"""
# Everything in schema `router` must belong to the RLS role: anything else may have been planted.
_RLS_SCHEMA_SQL: Final = """
SELECT pg_get_userbyid(n.nspowner)::text AS owner,
       ARRAY(
           SELECT kind || ' ' || name || ' (owner ' || pg_get_userbyid(owner) || ')' FROM (
               SELECT 'relation' AS kind, c.relname::text AS name, c.relowner AS owner
                 FROM pg_class c WHERE c.relnamespace = n.oid
               UNION ALL SELECT 'function', p.proname::text, p.proowner FROM pg_proc p WHERE p.pronamespace = n.oid
               UNION ALL SELECT 'type', t.typname::text, t.typowner FROM pg_type t WHERE t.typnamespace = n.oid
               UNION ALL SELECT 'operator', o.oprname::text, o.oprowner
                 FROM pg_operator o WHERE o.oprnamespace = n.oid
           ) AS objects
           WHERE owner IS DISTINCT FROM (SELECT oid FROM pg_roles WHERE rolname = $2)
           ORDER BY 1
       ) AS foreign_objects
FROM pg_namespace n WHERE n.nspname = $1
"""


async def enable_rls(config: RouterConfig, topology: Topology, table: str, column: str = "tenant_id") -> list[str]:
    """Protect `table` with row-level security keyed by `column` on every shard primary (in the
    primary's database, as the admin), idempotently; return one report per shard, a line followed
    by indented `warning:` lines where the router's role keeps a weaker spot.

    Installs: the NOLOGIN role tenant_router_rls (the router's role must not be a member), schema
    `router` it owns, the key pads of `tenant.context_secret` in router.context_key (no privilege
    for anyone else; rewritten on every run, so rotating the secret is running this again), SET on
    the carrier setting for tenant_router_rls, the functions router.enter_tenant(),
    leave_tenant() and current_tenant() (router/admin/rls.py), router.rls_tables (the protected tables
    and their columns, readable by all; rows of dropped tables are pruned); then on `table`: ENABLE
    and FORCE ROW LEVEL SECURITY and the policy tenant_isolation for all commands, USING and WITH
    CHECK `column` = the entered tenant; every other protected table's policy is re-created the
    same way, and the objects of earlier versions are dropped. Needs PostgreSQL 15+ and an admin
    that may grant SET on a parameter (a superuser).
    The router's role gets SELECT, INSERT, UPDATE, DELETE on the table and USAGE on its sequences,
    never TRUNCATE (which ignores row-level security), REFERENCES or TRIGGER. In the database, the
    large-object functions and pg_largeobject_metadata are taken from PUBLIC and given back to the
    schema tenants' roles (rls.close_large_objects_sql); an admin that may not do so gets a warning.

    Refused (UnsafeLayout, nothing changed on that shard), because the policy would be worth
    nothing: a table the router's role owns, directly or through a role it is a member of (an owner
    can disable row-level security or drop the policy): this does not change the owner behind the
    operator's back, whose migrations may depend on it; the error says to run
    `ALTER TABLE ... OWNER TO <admin>` (the admin or a migrations role, never the router's) and
    run again. Also refused: a router role that is a member of tenant_router_rls, other permissive
    policies on the table (they would be OR-ed with ours), a schema `router` or objects in it that
    belong to another role, partitioned tables (protect each partition), a missing column.

    Shards are done one after another, each in one transaction; if one fails, those before it are
    done, and running the command again finishes the rest.
    """
    secret = config.tenant.context_secret
    if secret is None:
        raise AdminRequired(
            "rls enable needs tenant.context_secret in router.yaml: the key the router signs the tenant"
            " context with, which the shards' verifying function checks",
            hint="set tenant.context_secret (for example to ${TENANT_CONTEXT_SECRET}) and run again",
        )
    admin = admin_login(config, "rls enable")
    if not column:
        raise ProvisioningError("rls enable: the tenant column name must not be empty")
    reports = []
    for name, shard in topology.shards.items():
        try:
            reports.append(await _enable_on_shard(config, admin, secret, name, shard.primary, table, column))
        except SHARD_ERRORS as exc:
            raise ProvisioningError(
                f"could not enable row-level security on {table} on shard {name}"
                f" ({describe(shard.primary)}): {reason(exc)}",
                hint="fix the cause and run the same command again: it is idempotent",
            ) from exc
    return reports


async def _enable_on_shard(
    config: RouterConfig, admin: Login, secret: str, shard: str, address: ServerAddress, table: str, column: str
) -> str:
    where = f"shard {shard} ({describe(address)})"
    router_role = config.server.user
    inner_pad, outer_pad = rls.context_key_pads(secret)
    conn = await connect(address, admin)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", rls.ENABLE_LOCK)
            role = await conn.fetchrow(ROUTER_ROLE_SQL, router_role)
            if role is None:
                raise UnsafeLayout(f"{where}: the router's role {router_role!r} (server.user) does not exist")
            target = await conn.fetchrow(_TABLE_SQL, table, column, router_role, rls.POLICY)
            qualified = check_table(target, table, column, router_role, admin.user, where)
            if role["version"] < rls.MIN_SERVER_VERSION:
                raise UnsafeLayout(
                    f"{where}: PostgreSQL {role['version'] // 10000} cannot keep shared tenants apart against"
                    f" their own SQL: the entered tenant needs PostgreSQL {rls.MIN_SERVER_VERSION // 10000}"
                    " or later (GRANT SET ON PARAMETER)",
                    hint="upgrade the shard, or serve its tenants with isolation schema or database",
                )
            await conn.execute(rls.ensure_rls_role_sql())
            await _grant_carrier(conn, router_role, where)
            if await conn.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", router_role, rls.RLS_ROLE):
                raise UnsafeLayout(
                    f"{where}: the router's role {router_role!r} is a member of {rls.RLS_ROLE}, so it could"
                    " read the context key",
                    hint=f"REVOKE {rls.RLS_ROLE} FROM {router_role} (and from any role it belongs to), then run again",
                )
            await _check_rls_schema(conn, where)
            await conn.execute(rls.rls_schema_sql())
            # Every shared tenant acts as the router's role: its sessions must not show each other
            # their statement text in pg_stat_activity. A superuser-only setting, so a tenant can
            # neither undo it nor is it among the role defaults the router refuses.
            await conn.execute(f"ALTER ROLE {quote_ident(router_role)} SET track_activities = off")
            await conn.execute(f"SET LOCAL ROLE {quote_ident(rls.RLS_ROLE)}")
            for statement in rls.security_objects_sql(config.tenant.setting):
                await conn.execute(statement)
            await conn.execute(rls.STORE_KEY_SQL, inner_pad, outer_pad)
            await conn.execute(rls.PRUNE_TABLES_SQL)
            await conn.execute(rls.RECORD_TABLE_SQL, target["oid"], column)
            await conn.execute("RESET ROLE")
            # Every protected table gets the current policy (a new version of the router's, say),
            # then what earlier versions installed and no policy uses any more goes.
            for protected in await conn.fetch(rls.PROTECTED_TABLES_SQL):
                name = rls.QualifiedName(protected["schema"], protected["name"])
                for statement in rls.policy_sql(name, protected["column_name"], protected["column_type"]):
                    await conn.execute(statement)
            for statement in rls.OLD_OBJECTS_SQL:
                await conn.execute(statement)
            sequences = tuple(
                rls.QualifiedName(r["schema"], r["name"]) for r in await conn.fetch(_SEQUENCES_SQL, target["oid"])
            )
            for statement in rls.protect_table_sql(qualified, column, target["column_type"], router_role, sequences):
                await conn.execute(statement)
            large_objects = await _close_large_objects(conn, router_role)
    finally:
        await close(conn)
    problems, weaker = role_findings(router_role, role)
    warnings = [*problems, *weaker]
    if large_objects is not None:
        warnings.append(large_objects)
    if target["router_owns_schema"]:
        warnings.append(
            f"{router_role} owns schema {qualified.schema} (directly or as the database's owner): it can DROP"
            f" {qualified} and create an unprotected table in its place; ALTER SCHEMA {quote_ident(qualified.schema)}"
            f" OWNER TO {quote_ident(admin.user)}"
        )
    line = f"{where}: {qualified} protected by {rls.POLICY} on {column} ({target['column_type']}); key written"
    return line + "".join(f"\n  warning: {warning}" for warning in warnings)


async def _grant_carrier(conn: Any, router_role: str, where: str) -> None:
    """Let tenant_router_rls, and make sure no one the router's role can act as, write the setting
    that carries the entered tenant (router/admin/rls.py)."""
    try:
        async with conn.transaction():
            await conn.execute(rls.grant_carrier_sql())
    except asyncpg.InsufficientPrivilegeError as exc:
        raise AdminRequired(
            f"{where}: the admin may not grant SET on {rls.CARRIER} ({exc}), which the shard needs to tell shared"
            " tenants apart",
            hint=f"run rls enable with a superuser admin, or have a superuser run once: {rls.grant_carrier_sql()}",
        ) from exc
    entering = await conn.fetchrow(ENTERING_SQL, router_role, rls.ENTER_TENANT)
    if entering["router_sets"]:
        raise UnsafeLayout(
            f"{where}: the router's role {router_role!r} may set {rls.CARRIER} (it was granted SET on it, directly"
            " or through a role), so any shared tenant could enter any other",
            hint=f"REVOKE SET ON PARAMETER {rls.CARRIER} FROM {quote_ident(router_role)} (and from the roles it"
            " belongs to), then run again",
        )
    default = entering["carrier_default"]
    if default:
        raise UnsafeLayout(
            f"{where}: {rls.CARRIER} has a default ({default}): a session of the router's role that has not"
            " entered a tenant, or ran RESET ALL, would act as the tenant it names",
            hint=f"remove it (ALTER SYSTEM RESET {rls.CARRIER}, ALTER ROLE/DATABASE ... RESET {rls.CARRIER}),"
            " then run again",
        )


async def _close_large_objects(conn: Any, router_role: str) -> str | None:
    """Take large objects from PUBLIC in this database and give them back to its schema tenants
    (rls.close_large_objects_sql); inside the caller's transaction, in a savepoint. Returns a
    warning if the admin may not (only a superuser may revoke on pg_catalog's objects)."""
    functions = await conn.fetch(rls.LARGE_OBJECT_FUNCTIONS_SQL)
    everyone = [row["signature"] for row in functions]
    grantable = [row["signature"] for row in functions if not row["server_files"]]
    try:
        async with conn.transaction():
            for statement in rls.close_large_objects_sql(everyone):
                await conn.execute(statement)
            for row in await conn.fetch(rls.SCHEMA_TENANT_ROLES_SQL, router_role):
                for statement in rls.grant_large_objects_sql(grantable, row["rolname"]):
                    await conn.execute(statement)
    except asyncpg.InsufficientPrivilegeError as exc:
        return (
            f"could not take the large-object functions from PUBLIC ({exc}): statements hidden from the router"
            " (a DO block) can still store large objects every shared tenant can read; run rls enable with a"
            " superuser admin"
        )
    return None


def check_table(target: Any, table: str, column: str, router_role: str, admin: str, where: str) -> rls.QualifiedName:
    if target is None:
        raise UnsafeLayout(f"{where}: there is no table {table!r} in the shard's database")
    qualified = rls.QualifiedName(target["schema"], target["name"])
    if target["relkind"] == "p":
        raise UnsafeLayout(
            f"{where}: {qualified} is partitioned; row-level security on it does not cover its partitions"
            " when they are queried directly",
            hint="protect each partition (rls enable PARTITION) instead",
        )
    if target["relkind"] != "r":
        raise UnsafeLayout(f"{where}: {qualified} is not a table (relkind {target['relkind']!r})")
    if target["column_type"] is None:
        raise UnsafeLayout(f"{where}: table {qualified} has no column {column!r}")
    if target["router_owns_table"]:
        raise UnsafeLayout(
            f"{where}: table {qualified} is owned by {target['owner']!r}, and the router's role {router_role!r}"
            " is (or is a member of) that owner, so it could disable row-level security or drop the policy",
            hint=f"change the owner to the admin or a migrations role the router is not a member of:"
            f" ALTER TABLE {qualified.sql} OWNER TO {quote_ident(admin)}; then run again",
        )
    if target["other_policies"]:
        raise UnsafeLayout(
            f"{where}: table {qualified} has other permissive policies ({', '.join(target['other_policies'])}),"
            f" which would be OR-ed with {rls.POLICY} and could let rows of other tenants through",
            hint="drop them, or re-create them AS RESTRICTIVE, then run again",
        )
    return qualified


async def _check_rls_schema(conn: Any, where: str) -> None:
    row = await conn.fetchrow(_RLS_SCHEMA_SQL, rls.RLS_SCHEMA, rls.RLS_ROLE)
    if row is None:
        return
    foreign = list(row["foreign_objects"])
    if row["owner"] != rls.RLS_ROLE:
        foreign.insert(0, f"the schema itself (owner {row['owner']})")
    if foreign:
        raise UnsafeLayout(
            f"{where}: schema {rls.RLS_SCHEMA} exists and not all of it belongs to {rls.RLS_ROLE}:"
            f" {', '.join(foreign)}; something there may have been planted to read the context key",
            hint=f"inspect it, then DROP SCHEMA {rls.RLS_SCHEMA} CASCADE and run again",
        )
