"""Isolation on the shards: tenant roles and namespaces, row-level security, the router role audit.

Owns: every connection that tenant administration and `rls enable` open to shard primaries, and
what they do there: creating (and, for `tenants remove --drop-data`, dropping) a tenant's role and
schema or database and applying the application schema to it (`provision_tenant`, `drop_tenant`);
installing the signed-context verifier and row-level security on a shared table
(`enable_rls`); and the read-only audit of the router's own role that `tenant-router check` runs
(`audit_server_role`). All provisioning logs in as `config.admin`. The router's `server.user` is
used only for the audit, for the layout without a context secret (no admin configured: the
router's role owns the tenant's schema or database, as before per-tenant roles existed), and to
apply the application schema in that layout.

Must not: touch the catalog (tenant_admin.py decides which tenants exist), parse arguments or print
(cli.py), or be used on the router's hot path: every call opens and closes its own connections.
The SQL text comes from router/admin/rls.py; only catalog look-ups are written here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg

from router.admin import rls
from router.config import RouterConfig
from router.core.topology import ServerAddress, Topology
from router.dbconnect import close_connection, open_connection
from router.errors import RouterError, listing
from router.isolation import (
    Isolation,
    database_name,
    quote_ident,
    schema_name,
    tenant_role,
    tenant_role_password,
    validate_isolation,
    validate_tenant_id,
)

log = logging.getLogger(__name__)

SHARD_CONNECT_TIMEOUT: Final = 10.0
# What can go wrong talking to a shard, as opposed to a bug in our code.
SHARD_ERRORS: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_APP_NAME: Final = "tenant-router-admin"
_FORCE_DROP_SINCE: Final = 130000  # DROP DATABASE ... WITH (FORCE)
_SAFE_CREATEROLE_SINCE: Final = 160000  # before 16, CREATEROLE may grant any non-superuser role


class ProvisioningError(RouterError):
    """Something on a shard is not as isolation needs it; the message says what and how to fix it."""

    sqlstate = "55000"
    severity = "ERROR"


class UnknownShard(ProvisioningError):
    sqlstate = "42704"


class AdminRequired(ProvisioningError):
    """The operation needs `admin` (or `tenant.context_secret`) in router.yaml."""

    sqlstate = "F0000"


class UnsafeLayout(ProvisioningError):
    """Carrying on would leave something the router's role could use to reach other tenants."""

    sqlstate = "42501"


@dataclass(frozen=True)
class Login:
    user: str
    password: str | None = field(repr=False)


@dataclass(frozen=True)
class SchemaFile:
    """One file of `tenant.schema_sql`, read before anything is created."""

    path: Path
    sql: str


@dataclass(frozen=True)
class RoleAudit:
    """What `check` found about the router's role on one shard primary. `problems` mean row-level
    security does not protect anything (check fails); `warnings` are weaker spots or an unreachable
    shard."""

    shard: str
    address: ServerAddress
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


# --- shards and connections ----------------------------------------------------------------------


def shard_primary(topology: Topology, shard: str, tenant_id: str | None = None) -> ServerAddress:
    """The primary of `shard`; UnknownShard if shards.yaml does not have it (a catalog pin may
    name a shard that was removed)."""
    if shard not in topology.shards:
        whose = f"tenant {tenant_id!r} is placed on shard {shard!r}" if tenant_id else f"shard {shard!r}"
        raise UnknownShard(
            f"{whose}, which is not in the topology",
            hint=f"known shards: {', '.join(sorted(topology.shards)) or '(none)'}",
        )
    return topology.shards[shard].primary


def describe(address: ServerAddress, database: str | None = None) -> str:
    return f"{address.host}:{address.port}/{database or address.dbname}"


def reason(exc: BaseException, timeout: float = SHARD_CONNECT_TIMEOUT) -> str:
    """A shard error in a few words, for messages naming the shard themselves."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    return str(exc) or type(exc).__name__


async def connect(
    address: ServerAddress, login: Login, database: str | None = None, timeout: float = SHARD_CONNECT_TIMEOUT
) -> Any:
    return await open_connection(
        host=address.host,
        port=address.port,
        database=database or address.dbname,
        user=login.user,
        password=login.password,
        timeout=timeout,
        application_name=_APP_NAME,
    )


async def close(conn: Any) -> None:
    await close_connection(conn, SHARD_CONNECT_TIMEOUT)


def admin_login(config: RouterConfig, purpose: str) -> Login:
    if config.admin is None:
        raise AdminRequired(
            f"{purpose} needs the admin role: router.yaml has no `admin` section",
            hint="add admin: {user: ..., password: ...}, a role that may create roles, databases and"
            " policies on every shard (usually a superuser); the router's own server.user must not be one",
        )
    return Login(config.admin.user, config.admin.password)


def _namespace_owner_login(config: RouterConfig) -> Login:
    """Without a context secret: the admin if configured, else (as before) the router's role."""
    if config.admin is not None:
        return Login(config.admin.user, config.admin.password)
    return Login(config.server.user, config.server.password)


def _reserved_roles(config: RouterConfig) -> set[str]:
    names = {rls.RLS_ROLE, config.server.user}
    if config.admin is not None:
        names.add(config.admin.user)
    return names


def check_can_provision(config: RouterConfig, tenant_id: str, isolation: Isolation) -> tuple[SchemaFile, ...]:
    """Everything provisioning needs that can be checked before touching anything: the admin when
    a context secret is set, a tenant role name that is not one of ours, the schema files (read).
    Returns the schema files to apply (none for shared tenants)."""
    validate_tenant_id(tenant_id)
    if isolation == "shared":
        return ()
    if config.tenant.context_secret is not None:
        admin_login(config, f"provisioning the {isolation} tenant {tenant_id!r}")
        role = tenant_role(tenant_id)
        if role in _reserved_roles(config):
            raise UnsafeLayout(
                f"tenant id {tenant_id!r} would act as role {role!r}, which is the router's own, the admin's"
                " or the owner of the row-level security key",
                hint="choose another tenant id",
            )
    return load_schema_files(config)


def load_schema_files(config: RouterConfig) -> tuple[SchemaFile, ...]:
    """`tenant.schema_sql`, relative to router.yaml's folder: one .sql file, or every .sql file of
    a folder in name order. Raises ProvisioningError if it is missing or unreadable."""
    if config.tenant.schema_sql is None:
        return ()
    path = config.path.parent / config.tenant.schema_sql
    if path.is_dir():
        paths = sorted((p for p in path.iterdir() if p.suffix == ".sql" and p.is_file()), key=lambda p: p.name)
        if not paths:
            raise ProvisioningError(f"tenant.schema_sql: folder {path} holds no .sql files")
    elif path.is_file():
        paths = [path]
    else:
        raise ProvisioningError(f"tenant.schema_sql: {path} does not exist")
    files = []
    for file in paths:
        try:
            files.append(SchemaFile(file, file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise ProvisioningError(f"tenant.schema_sql: cannot read {file}: {exc}") from exc
    return tuple(files)


# --- tenants -------------------------------------------------------------------------------------


async def provision_tenant(
    config: RouterConfig, topology: Topology, tenant_id: str, isolation: Isolation, shard: str
) -> None:
    """Create what a tenant's isolation needs on the primary of `shard`; nothing for `shared`.

    With `tenant.context_secret` (as the admin): the login role tenant_<id> (NOINHERIT, no other
    attribute or membership, password derived from the secret) and either schema tenant_<id> that
    it owns in the shard's database, or database tenant_<id> that it owns, where it also owns schema
    public; PUBLIC keeps no privilege on either, so neither the router's role nor another tenant's
    can reach them. Without the secret, as before: the namespace belongs to the router's role.

    Idempotent: an existing role, schema or database of the right owner is kept (the role's
    password is set again, e.g. after the secret rotated). `tenant.schema_sql` is applied, as the
    namespace's owner and in one transaction, only to a namespace this call created; if applying it
    fails, what this call created is dropped again. A schema, database or role that exists but
    belongs to someone else is refused (UnsafeLayout).
    """
    level = validate_isolation(isolation)
    files = check_can_provision(config, tenant_id, level)
    if level == "shared":
        return
    address = shard_primary(topology, shard, tenant_id)
    secret = config.tenant.context_secret
    if secret is None:
        await _provision_router_owned(config, address, tenant_id, level, files)
    else:
        await _provision_own_role(config, address, tenant_id, level, secret, files)


async def drop_tenant(
    config: RouterConfig, topology: Topology, tenant_id: str, isolation: Isolation, shard: str
) -> None:
    """Drop a tenant's schema or database, and its role where one exists (as the admin if
    configured, else as the router's role). Nothing for `shared`."""
    level = validate_isolation(isolation)
    if level == "shared":
        return
    address = shard_primary(topology, shard, tenant_id)
    conn = await connect(address, _namespace_owner_login(config))
    try:
        await _drop(conn, config, tenant_id, level, namespace=True, role=True)
    finally:
        await close(conn)


async def _drop(
    conn: Any, config: RouterConfig, tenant_id: str, level: Isolation, *, namespace: bool, role: bool
) -> None:
    if namespace and level == "schema":
        await conn.execute(rls.drop_schema_sql(schema_name(tenant_id)))
    elif namespace:
        force = conn.get_server_version().major * 10000 >= _FORCE_DROP_SINCE
        await conn.execute(rls.drop_database_sql(database_name(tenant_id), force))
    name = tenant_role(tenant_id)
    row = await conn.fetchrow(_TENANT_ROLE_SQL, name) if role and name not in _reserved_roles(config) else None
    if row is None:
        return
    if issues := _role_issues(row, config.admin.user if config.admin else config.server.user):
        # Not one provisioning made: the tenant's name merely matches some other role. Keep it.
        log.warning("tenant %r: role %r is not a plain tenant role (%s); not dropped", tenant_id, name, issues)
        return
    admin_login(config, f"dropping role {name!r} of tenant {tenant_id!r}")
    async with conn.transaction():
        for statement in rls.drop_role_sql(name):
            await conn.execute(statement)


_SCHEMA_OWNER_SQL: Final = "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1"
_DATABASE_OWNER_SQL: Final = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1"
_TENANT_ROLE_SQL: Final = """
SELECT r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolbypassrls, r.rolreplication,
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1) AS member_of,
       ARRAY(SELECT u.rolname::text FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
             WHERE m.roleid = r.oid ORDER BY 1) AS members
FROM pg_roles r WHERE r.rolname = $1
"""
_ROLE_ATTRIBUTES: Final = (
    ("rolsuper", "SUPERUSER"),
    ("rolcreatedb", "CREATEDB"),
    ("rolcreaterole", "CREATEROLE"),
    ("rolbypassrls", "BYPASSRLS"),
    ("rolreplication", "REPLICATION"),
)


async def _provision_router_owned(
    config: RouterConfig, address: ServerAddress, tenant_id: str, level: Isolation, files: Sequence[SchemaFile]
) -> None:
    login = _namespace_owner_login(config)
    owner = config.server.user if login.user != config.server.user else None
    conn = await connect(address, login)
    try:
        if level == "schema":
            name = schema_name(tenant_id)
            created = await conn.fetchval(_SCHEMA_OWNER_SQL, name) is None
            authorization = f" AUTHORIZATION {quote_ident(owner)}" if owner is not None else ""
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(name)}{authorization}")
        else:
            created = await _create_database(conn, database_name(tenant_id), owner)
    finally:
        await close(conn)
    if created and files:
        server = Login(config.server.user, config.server.password)
        try:
            await _apply_schema_files(address, server, tenant_id, level, files)
        except BaseException:
            await asyncio.shield(_undo(config, address, tenant_id, level, namespace=True, role=False))
            raise


async def _provision_own_role(
    config: RouterConfig,
    address: ServerAddress,
    tenant_id: str,
    level: Isolation,
    secret: str,
    files: Sequence[SchemaFile],
) -> None:
    admin = admin_login(config, f"provisioning tenant {tenant_id!r}")
    role, password = tenant_role(tenant_id), tenant_role_password(secret, tenant_id)
    # What this call created, once it is committed: all that a failure undoes (never anything older).
    created_role = created_namespace = False
    try:
        conn = await connect(address, admin)
        try:
            async with conn.transaction():
                new_role = await _ensure_tenant_role(conn, tenant_id, password, admin.user, address)
                new_schema = level == "schema" and await _ensure_schema(conn, schema_name(tenant_id), role, address)
                if level == "schema":  # it acts as its own role: large objects stay its own
                    await _grant_large_objects(conn, role)
            created_role, created_namespace = new_role, new_schema
            if level == "database":
                database = database_name(tenant_id)
                owner = await conn.fetchval(_DATABASE_OWNER_SQL, database)
                if owner is not None and owner != role:
                    raise _foreign_owner("database", database, owner, role, address)
                created_namespace = owner is None and await _create_database(conn, database, role)
                await conn.execute(rls.lock_down_database_sql(database))
        finally:
            await close(conn)
        if level == "database":
            await _lock_down_tenant_database(address, admin, database_name(tenant_id), role)
        if created_namespace and files:
            await _apply_schema_files(address, Login(role, password), tenant_id, level, files)
    except BaseException:
        if created_role or created_namespace:
            undo = _undo(config, address, tenant_id, level, namespace=created_namespace, role=created_role)
            await asyncio.shield(undo)
        raise


def _role_issues(row: Any, admin: str) -> str:
    """What makes a role (a _TENANT_ROLE_SQL row) more than provisioning makes: empty if nothing."""
    issues = [keyword for column, keyword in _ROLE_ATTRIBUTES if row[column]]
    if not row["rolcanlogin"]:
        issues.append("NOLOGIN")
    issues += [f"member of {name}" for name in row["member_of"]]
    issues += [f"{name} is a member of it" for name in row["members"] if name != admin]
    return ", ".join(issues)


async def _ensure_tenant_role(conn: Any, tenant_id: str, password: str, admin: str, address: ServerAddress) -> bool:
    """Create the tenant's role or check that the existing one is what we would have created;
    either way set its password. True if it was created."""
    role = tenant_role(tenant_id)
    row = await conn.fetchrow(_TENANT_ROLE_SQL, role)
    if row is not None and (issues := _role_issues(row, admin)):
        raise UnsafeLayout(
            f"role {role!r} already exists on {describe(address)} and is not a plain tenant role: {issues}",
            hint=f"inspect it; drop it (DROP OWNED BY {role}; DROP ROLE {role}) or fix it, then try again",
        )
    await conn.execute(rls.ensure_tenant_role_sql(tenant_id, password))
    return row is None


async def _ensure_schema(conn: Any, schema: str, role: str, address: ServerAddress) -> bool:
    owner = await conn.fetchval(_SCHEMA_OWNER_SQL, schema)
    if owner is not None and owner != role:
        raise _foreign_owner("schema", schema, owner, role, address)
    for statement in rls.create_schema_sql(schema, role):
        await conn.execute(statement)
    return owner is None


async def _create_database(conn: Any, database: str, owner: str | None) -> bool:
    if await conn.fetchval(_DATABASE_OWNER_SQL, database) is not None:
        return False
    # Without arguments asyncpg uses the simple protocol, outside any transaction block, which
    # CREATE DATABASE requires. Losing a race to a concurrent creator still ends where we want.
    try:
        await conn.execute(rls.create_database_sql(database, owner))
    except asyncpg.DuplicateDatabaseError:
        return False
    return True


def _foreign_owner(kind: str, name: str, owner: str, role: str, address: ServerAddress) -> UnsafeLayout:
    return UnsafeLayout(
        f"{kind} {name!r} already exists on {describe(address)} and belongs to {owner!r}, not to {role!r}",
        hint=f"it was probably created without tenant.context_secret: give it and its objects to {role}"
        f" (REASSIGN OWNED BY {owner} TO {role} only if {owner} owns nothing else) or drop it, then try again",
    )


async def _lock_down_tenant_database(address: ServerAddress, admin: Login, database: str, role: str) -> None:
    conn = await connect(address, admin, database=database)
    try:
        async with conn.transaction():
            for statement in rls.lock_down_public_schema_sql(role):
                await conn.execute(statement)
    finally:
        await close(conn)


async def _apply_schema_files(
    address: ServerAddress, login: Login, tenant_id: str, level: Isolation, files: Sequence[SchemaFile]
) -> None:
    """Run the schema files as `login` in the tenant's namespace, all in one transaction."""
    database = database_name(tenant_id) if level == "database" else None
    search_path = schema_name(tenant_id) if level == "schema" else None
    conn = await connect(address, login, database=database)
    try:
        async with conn.transaction():
            for statement in rls.schema_sql_statements(search_path):
                await conn.execute(statement)
            for file in files:
                try:
                    await conn.execute(file.sql)
                except asyncpg.PostgresError as exc:
                    raise ProvisioningError(
                        f"applying {file.path} as {login.user} in {describe(address, database)} failed: {exc}"
                    ) from exc
    finally:
        await close(conn)


async def _undo(
    config: RouterConfig, address: ServerAddress, tenant_id: str, level: Isolation, *, namespace: bool, role: bool
) -> None:
    """Best effort: drop what a failed provisioning created, so that trying again starts afresh."""
    try:
        conn = await connect(address, _namespace_owner_login(config))
        try:
            await _drop(conn, config, tenant_id, level, namespace=namespace, role=role)
        finally:
            await close(conn)
    except (*SHARD_ERRORS, RouterError) as exc:
        where = describe(address)
        log.error("tenant %r: provisioning failed and cleaning up on %s failed too: %s", tenant_id, where, exc)


# --- row-level security --------------------------------------------------------------------------

# Also what the role could plant code in, to run inside other tenants' statements where no statement
# text shows it (see router/sql/inert_statements.py): schemas it may create objects in, and tables,
# views, functions and domains it owns, or a role it belongs to does. Not the system schemas, nor
# temporary ones: what is in them goes with the session that made it, which the router wipes.
_ROUTER_ROLE_SQL: Final = """
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
_ENTERING_SQL: Final = (
    f"SELECT {_ROLE_SETS_CARRIER} AS router_sets, to_regprocedure($2) IS NOT NULL AS enters,"
    f" {_CARRIER_DEFAULT} AS carrier_default"
)
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
            role = await conn.fetchrow(_ROUTER_ROLE_SQL, router_role)
            if role is None:
                raise UnsafeLayout(f"{where}: the router's role {router_role!r} (server.user) does not exist")
            target = await conn.fetchrow(_TABLE_SQL, table, column, router_role, rls.POLICY)
            qualified = _check_table(target, table, column, router_role, admin.user, where)
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
    problems, weaker = _role_findings(router_role, role)
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
    entering = await conn.fetchrow(_ENTERING_SQL, router_role, rls.ENTER_TENANT)
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


async def _grant_large_objects(conn: Any, role: str) -> None:
    """Give a schema tenant's role the large-object functions `rls enable` took from PUBLIC."""
    functions = [
        row["signature"] for row in await conn.fetch(rls.LARGE_OBJECT_FUNCTIONS_SQL) if not row["server_files"]
    ]
    for statement in rls.grant_large_objects_sql(functions, role):
        await conn.execute(statement)


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


def _check_table(target: Any, table: str, column: str, router_role: str, admin: str, where: str) -> rls.QualifiedName:
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


# --- the router's role ---------------------------------------------------------------------------


def _entering_findings(role: str, version: int, row: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Problems and warnings about entering shared tenants (router/admin/rls.py) on a shard, from
    _ENTERING_SQL (None before PostgreSQL 15)."""
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


def _role_findings(role: str, row: Any, hardened: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Problems (RLS does not apply) and warnings about the router's role, from _ROUTER_ROLE_SQL.
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
                row = await conn.fetchrow(_ROUTER_ROLE_SQL, login.user)
                entering = None
                if row["version"] >= rls.MIN_SERVER_VERSION:
                    entering = await conn.fetchrow(_ENTERING_SQL, login.user, rls.ENTER_TENANT)
            finally:
                await close(conn)
        except SHARD_ERRORS as exc:
            warning = f"could not connect as {login.user} to check its privileges: {reason(exc, limit)}"
            return RoleAudit(shard, address, warnings=(warning,))
        hardened = config.tenant.context_secret is not None
        problems, warnings = _role_findings(login.user, row, hardened=hardened)
        if hardened:
            found, notes = _entering_findings(login.user, row["version"], entering)
            problems += found
            warnings += notes
        if hardened and config.admin is None:
            problems += (_NO_REPAIR.format(role=login.user),)
        return RoleAudit(shard, address, problems, warnings)

    return list(await asyncio.gather(*(one(name, shard.primary) for name, shard in topology.shards.items())))
