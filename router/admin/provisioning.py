"""Tenant roles and namespaces on the shards: what `tenants add` creates and `remove --drop-data` drops.

Owns: creating (and dropping) a `schema` or `database` tenant's role and its schema or database on
the primary of its shard, and applying the application schema (`tenant.schema_sql`) to a namespace
it created (`provision_tenant`, `drop_tenant`); what can be checked before touching a shard
(`check_can_provision`, `load_schema_files`); and telling a role provisioning made from one that
merely shares its name (`tenant_role_issues`). All of it logs in as `config.admin`. The router's
`server.user` is used only for the layout without a context secret (no admin configured: the
router's role owns the tenant's schema or database, as before per-tenant roles existed), and to
apply the application schema in that layout.

Must not: touch the catalog (router/admin/tenant_admin.py decides which tenants exist), parse
arguments or print (router/cli.py), protect shared tables (router/admin/rls_enable.py), or be used
on the router's hot path: every call opens and closes its own connections (router/admin/
shard_access.py). The SQL text comes from router/admin/rls.py; only catalog look-ups are written here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from router.admin import rls
from router.admin.shard_access import (
    SHARD_ERRORS,
    Login,
    admin_login,
    admin_or_router_login,
    close,
    connect,
    describe,
    shard_primary,
)
from router.config import RouterConfig
from router.core.topology import ServerAddress, Topology
from router.errors import ProvisioningError, RouterError, UnsafeLayout
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

_FORCE_DROP_SINCE: Final = 130000  # DROP DATABASE ... WITH (FORCE)


@dataclass(frozen=True)
class SchemaFile:
    """One file of `tenant.schema_sql`, read before anything is created."""

    path: Path
    sql: str


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
    config: RouterConfig,
    topology: Topology,
    tenant_id: str,
    isolation: Isolation,
    shard: str,
    *,
    schema_files: bool = True,
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

    Without `schema_files`, the namespace stays empty: a tenant move fills it with the source's
    objects (router/rebalance/schema_copy.py).
    """
    level = validate_isolation(isolation)
    files = check_can_provision(config, tenant_id, level)
    if not schema_files:
        files = ()
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
    conn = await connect(address, admin_or_router_login(config))
    try:
        await _drop(conn, config, tenant_id, level, namespace=True, role=True)
    finally:
        await close(conn)


async def _drop(
    conn: Any, config: RouterConfig, tenant_id: str, level: Isolation, *, namespace: bool, role: bool
) -> None:
    if role or namespace:
        # Sessions of the tenant's role (a router's idle pooled connections) would outlive the
        # role: a role created again under the same name (a tenant moved back) is another role,
        # and such a session could no longer use the tenant's schema.
        await conn.execute(_TERMINATE_ROLE_SESSIONS_SQL, tenant_role(tenant_id))
    if namespace and level == "schema":
        await conn.execute(rls.drop_schema_sql(schema_name(tenant_id)))
    elif namespace:
        force = conn.get_server_version().major * 10000 >= _FORCE_DROP_SINCE
        await conn.execute(rls.drop_database_sql(database_name(tenant_id), force))
    name = tenant_role(tenant_id)
    row = await conn.fetchrow(_TENANT_ROLE_SQL, name) if role and name not in _reserved_roles(config) else None
    if row is None:
        return
    if issues := tenant_role_issues(row, config.admin.user if config.admin else config.server.user):
        # Not one provisioning made: the tenant's name merely matches some other role. Keep it.
        log.warning("tenant %r: role %r is not a plain tenant role (%s); not dropped", tenant_id, name, issues)
        return
    admin_login(config, f"dropping role {name!r} of tenant {tenant_id!r}")
    async with conn.transaction():
        for statement in rls.drop_role_sql(name):
            await conn.execute(statement)


_TERMINATE_ROLE_SESSIONS_SQL: Final = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()"
)
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
    login = admin_or_router_login(config)
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


def tenant_role_issues(row: Any, admin: str) -> str:
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
    if row is not None and (issues := tenant_role_issues(row, admin)):
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
        conn = await connect(address, admin_or_router_login(config))
        try:
            await _drop(conn, config, tenant_id, level, namespace=namespace, role=role)
        finally:
            await close(conn)
    except (*SHARD_ERRORS, RouterError) as exc:
        where = describe(address)
        log.error("tenant %r: provisioning failed and cleaning up on %s failed too: %s", tenant_id, where, exc)


async def _grant_large_objects(conn: Any, role: str) -> None:
    """Give a schema tenant's role the large-object functions `rls enable` took from PUBLIC."""
    functions = [
        row["signature"] for row in await conn.fetch(rls.LARGE_OBJECT_FUNCTIONS_SQL) if not row["server_files"]
    ]
    for statement in rls.grant_large_objects_sql(functions, role):
        await conn.execute(statement)
