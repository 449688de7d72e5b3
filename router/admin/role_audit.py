"""The read-only audit of the router's own role on the shards (`tenant-router check`).

Owns: what row-level security and the entered tenant need of `server.user` on a shard primary and
the SQL that reads it (`ROUTER_ROLE_SQL`: superuser, BYPASSRLS, what it may create in or owns, its
session defaults, large objects; `ENTERING_SQL`: whether it may write the carrier of the entered
tenant, whether router.enter_tenant() is installed, the carrier's default), the findings drawn
from those rows as text (`role_findings`, `entering_findings`: values in, values out), and
`audit_server_role`, which connects to every shard primary as `server.user` and reports them.
`rls enable` (router/admin/rls_enable.py) reads the same rows and reports the same findings.

Must not: change anything on a shard (it only reads), touch the catalog, or print (router/cli.py
does). The names of the security objects come from router/admin/rls.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

from router.admin import rls
from router.admin.shard_access import SHARD_ERRORS, Login, close, connect, reason
from router.config import RouterConfig
from router.core.topology import ServerAddress, Topology
from router.errors import listing
from router.isolation import quote_ident

_SAFE_CREATEROLE_SINCE: Final = 160000  # before 16, CREATEROLE may grant any non-superuser role


@dataclass(frozen=True)
class RoleAudit:
    """What `check` found about the router's role on one shard primary. `problems` mean row-level
    security does not protect anything (check fails); `warnings` are weaker spots or an unreachable
    shard."""

    shard: str
    address: ServerAddress
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


# Whether row-level security applies to the router's role ($1) in this database, and what the role
# could plant code in, to run inside other tenants' statements where no statement text shows it (see
# router/sql/inert_statements.py): schemas it may create objects in, and tables, views, functions
# and domains it owns, or a role it belongs to does. Not the system schemas, nor temporary ones:
# what is in them goes with the session that made it, which the router wipes.
ROUTER_ROLE_SQL: Final = """
SELECT r.rolsuper, r.rolbypassrls, r.rolcreaterole,
       has_database_privilege(r.oid, current_database(), 'CREATE') AS creates_schemas,
       ARRAY(SELECT n.nspname::text FROM pg_namespace n
             WHERE has_schema_privilege(r.oid, n.oid, 'CREATE') AND n.nspname !~ '^pg_(toast|temp_)'
             ORDER BY 1) AS creatable_schemas,
       ARRAY(SELECT i.type || ' ' || i.identity FROM (
                 SELECT 'pg_class'::regclass AS classid, c.oid AS objid, c.relnamespace AS nsp, c.relowner AS owner
                   FROM pg_class c WHERE c.relkind NOT IN ('i', 'I', 't')
                 UNION ALL SELECT 'pg_proc'::regclass, p.oid, p.pronamespace, p.proowner FROM pg_proc p
                 UNION ALL SELECT 'pg_type'::regclass, t.oid, t.typnamespace, t.typowner FROM pg_type t
                   WHERE t.typtype = 'd'
             ) AS o JOIN pg_namespace n ON n.oid = o.nsp
             CROSS JOIN LATERAL pg_identify_object(o.classid, o.objid, 0) AS i
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
               AND pg_has_role(r.oid, o.owner, 'MEMBER')
             ORDER BY 1) AS owned_objects,
       current_database() AS database,
       current_setting('server_version_num')::int AS version,
       current_setting('track_activities') = 'on' AS tracks_activities,
       r.rolname = current_user AS login_is_role,
       ARRAY(SELECT coalesce(d.datname, '(every database)') || ': ' || c.setting
             FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
             LEFT JOIN pg_database d ON d.oid = s.setdatabase
             LEFT JOIN pg_settings p ON p.name = lower(split_part(c.setting, '=', 1))
             WHERE s.setrole = r.oid AND (p.context IS NULL OR p.context = 'user')
             ORDER BY 1) AS role_defaults,
       ARRAY(SELECT f FROM unnest(ARRAY['lo_create(oid)', 'lo_open(oid, integer)', 'loread(integer, integer)',
                                        'lo_get(oid)', 'lo_from_bytea(oid, bytea)']) AS f
             WHERE has_function_privilege(r.oid, 'pg_catalog.' || f, 'EXECUTE')
             UNION ALL SELECT 'SELECT on pg_largeobject_metadata'
             WHERE has_table_privilege(r.oid, 'pg_catalog.pg_largeobject_metadata', 'SELECT')) AS large_objects
FROM pg_roles r WHERE r.rolname = $1
"""
# Whether a role ($1) may write the carrier of the entered tenant (PostgreSQL 15+): itself or any
# role it is a member of, inherited or not (a NOINHERIT member can still SET ROLE to it, set the
# carrier and RESET ROLE; has_parameter_privilege alone only sees inherited privileges).
_ROLE_SETS_CARRIER: Final = (
    "EXISTS (SELECT FROM pg_roles r WHERE pg_has_role($1, r.oid, 'MEMBER')"
    f" AND has_parameter_privilege(r.oid, '{rls.CARRIER}', 'SET'))"
)
# The carrier's default in a session of the router's role ($1) in this database: what RESET ALL and
# DISCARD ALL leave, and what a new session starts with; it must be empty, or such a session acts as
# the tenant it names. From the server's configuration and ALTER ROLE / ALTER DATABASE ... SET (the
# admin's own defaults count too when the admin runs it: over-cautious, never blind).
_CARRIER_DEFAULT: Final = (
    f"concat_ws(', ', NULLIF((SELECT reset_val FROM pg_settings WHERE name = '{rls.CARRIER}'), ''),"
    " (SELECT string_agg(c.setting, ', ') FROM pg_db_role_setting s"
    " CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)"
    f" WHERE c.setting LIKE '{rls.CARRIER}=_%'"
    " AND s.setrole IN (0, (SELECT r.oid FROM pg_roles r WHERE r.rolname = $1))"
    " AND s.setdatabase IN (0, (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()))))"
)
# On a shard in the hardened setup (PostgreSQL 15+): whether the router's role ($1) may write the
# carrier, whether the entering function ($2) is installed, and the carrier's default.
ENTERING_SQL: Final = (
    f"SELECT {_ROLE_SETS_CARRIER} AS router_sets, to_regprocedure($2) IS NOT NULL AS enters,"
    f" {_CARRIER_DEFAULT} AS carrier_default"
)


def entering_findings(role: str, version: int, row: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Problems and warnings about entering shared tenants (router/admin/rls.py) on a shard, from
    ENTERING_SQL (None before PostgreSQL 15)."""
    if row is None:
        return (), (
            f"PostgreSQL {version // 10000} cannot keep shared tenants apart against their own SQL (the entered"
            f" tenant needs {rls.MIN_SERVER_VERSION // 10000}+): serve this shard's tenants with isolation schema"
            " or database",
        )
    if row["router_sets"]:
        return (
            f"role {role} may set {rls.CARRIER}, which carries the entered tenant: any shared tenant could enter"
            f" any other; REVOKE SET ON PARAMETER {rls.CARRIER} FROM {quote_ident(role)}",
        ), ()
    if row["carrier_default"]:
        return (
            f"{rls.CARRIER} has a default ({row['carrier_default']}): a session of role {role} that has not"
            " entered a tenant, or ran RESET ALL, acts as the tenant it names; remove it (ALTER SYSTEM /"
            f" ROLE / DATABASE ... RESET {rls.CARRIER})",
        ), ()
    if not row["enters"]:
        return (), (
            "router.enter_tenant() is not installed: shared tenants' sessions fail until you run"
            " tenant-router rls enable TABLE (a deployment of an earlier version: run it again)",
        )
    return (), ()


def role_findings(role: str, row: Any, hardened: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Problems (RLS does not apply) and warnings about the router's role, from ROUTER_ROLE_SQL.
    `hardened` (a context secret is configured, so isolation is promised against hostile SQL):
    what would let a client escape it is a problem too, not a warning."""
    problems = []
    if row["rolsuper"]:
        problems.append(f"role {role} is a superuser: row-level security does not apply to it")
    elif row["rolbypassrls"]:
        problems.append(f"role {role} has BYPASSRLS: row-level security does not apply to it")
    warnings = []
    if row["rolcreaterole"] and row["version"] < _SAFE_CREATEROLE_SINCE:
        warnings.append(
            f"role {role} has CREATEROLE on PostgreSQL {row['version'] // 10000}: before 16 that lets it grant"
            f" itself any non-superuser role, {rls.RLS_ROLE} and tenant roles included;"
            f" ALTER ROLE {quote_ident(role)} NOCREATEROLE"
        )
    if row["creates_schemas"]:
        warnings.append(
            f"role {role} may create schemas in database {row['database']} (it owns it or has CREATE):"
            " a schema named after it comes first in the default search_path of every shared session and"
            f" could shadow shared tables; ALTER DATABASE {quote_ident(row['database'])} OWNER TO <admin>"
        )
    if row["creatable_schemas"]:
        schemas = list(row["creatable_schemas"])
        warnings.append(
            f"role {role} may create objects in {'schema' if len(schemas) == 1 else 'schemas'}"
            f" {listing(schemas)} of database {row['database']}:"
            " a function, view or table planted there can run inside other tenants' statements (a function"
            " named like a built-in, a table shadowing a shared one) where the router cannot see it;"
            f" REVOKE CREATE ON SCHEMA {quote_ident(schemas[0])} FROM {quote_ident(role)} (and from PUBLIC)"
        )
    if row["owned_objects"]:
        warnings.append(
            f"role {role} owns {listing(list(row['owned_objects']))} in database {row['database']}: its"
            " sessions can redefine what it owns (CREATE OR REPLACE), so a tenant could plant code that runs"
            " inside other tenants' statements; ALTER ... OWNER TO <admin>"
        )
    if row["tracks_activities"] and row["login_is_role"]:
        warnings.append(
            f"role {role} has track_activities on: every shared tenant acts as {role} and can read the"
            " others' statement text, literals included, in pg_stat_activity;"
            f" ALTER ROLE {quote_ident(role)} SET track_activities = off (as a superuser; rls enable does it)"
        )
    if row["role_defaults"]:
        warnings.append(
            f"role {role} has session defaults it could have set itself ({listing(list(row['role_defaults']))}):"
            " every shared tenant acts as it and can set them (ALTER ROLE CURRENT_USER SET, also hidden in a"
            " DO block); the router removes them through `admin` on its next connection, or refuses to connect"
            f" without one; set such defaults per database instead (ALTER DATABASE ... SET)"
        )
    if hardened and row["large_objects"]:
        warnings.append(
            f"role {role} may use large objects ({listing(list(row['large_objects']))}) in database"
            f" {row['database']}: they have no row-level security and belong to the role every shared tenant"
            " acts as, so a tenant's statement the router cannot see (a DO block) can store or read them for"
            " all; run `rls enable` with a superuser admin, which takes them from PUBLIC"
        )
    if hardened:
        return tuple(problems + warnings), ()
    return tuple(problems), tuple(warnings)


_NO_REPAIR: Final = (
    "router.yaml has no `admin`: a shared tenant that changes the password or session defaults of role"
    " {role}, which all shared tenants act as (ALTER ROLE CURRENT_USER PASSWORD inside a DO block, where"
    " the router cannot see it), locks every shared tenant out until an operator repairs the role; with"
    " `admin` the router repairs it on its next connection"
)


async def audit_server_role(config: RouterConfig, topology: Topology, timeout: float | None = None) -> list[RoleAudit]:
    """Connect to every shard primary as `server.user` (all at once) and report whether row-level
    security applies to it there, and whether it could plant code in the shared database (schemas
    it may create in, objects it owns). An unreachable shard gives a warning, not a problem."""
    limit = timeout if timeout is not None else config.pool.connect_timeout
    login = Login(config.server.user, config.server.password)

    async def one(shard: str, address: ServerAddress) -> RoleAudit:
        try:
            conn = await connect(address, login, timeout=limit)
            try:
                row = await conn.fetchrow(ROUTER_ROLE_SQL, login.user)
                entering = None
                if row["version"] >= rls.MIN_SERVER_VERSION:
                    entering = await conn.fetchrow(ENTERING_SQL, login.user, rls.ENTER_TENANT)
            finally:
                await close(conn)
        except SHARD_ERRORS as exc:
            warning = f"could not connect as {login.user} to check its privileges: {reason(exc, limit)}"
            return RoleAudit(shard, address, warnings=(warning,))
        hardened = config.tenant.context_secret is not None
        problems, warnings = role_findings(login.user, row, hardened=hardened)
        if hardened:
            found, notes = entering_findings(login.user, row["version"], entering)
            problems += found
            warnings += notes
        if hardened and config.admin is None:
            problems += (_NO_REPAIR.format(role=login.user),)
        return RoleAudit(shard, address, problems, warnings)

    return list(await asyncio.gather(*(one(name, shard.primary) for name, shard in topology.shards.items())))
