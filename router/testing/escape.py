"""The escape suite's deployments: tenants of every isolation model behind a router, hardened or legacy.

Owns: the two layouts tests/integration/test_escape.py attacks (`HARDENED`: signed tenant context,
row-level security by `rls enable`, per-tenant roles; `LEGACY`: the setup before that, an unsigned
`app.tenant_id` read by a plain policy and schema/database tenants served by the router's own
role), deploying one onto a PgEnvironment with its own unprivileged router role, catalog schema,
shared table and tenants (two per isolation model, all pinned to one shard, each with its own
secret rows), and removing all of it again.

Must not: touch what other tests deploy: every name here (roles, catalog schema, table, tenant ids)
is the suite's own. The router role is made the way a hardened deployment must make it: LOGIN and
nothing else (no SUPERUSER, CREATEDB, CREATEROLE, BYPASSRLS), like the harness's `tenant_router`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import asyncpg

from router.admin.rls_enable import enable_rls
from router.admin.role_audit import RoleAudit, audit_server_role
from router.admin.tenant_admin import add_tenant, init_catalog, remove_tenant
from router.config import RouterConfig
from router.core.topology import Topology
from router.errors import RouterError
from router.isolation import (
    Isolation,
    database_name,
    quote_ident,
    quote_literal,
    schema_name,
    sign_tenant,
    tenant_role,
)
from router.testing.deploy import APP_PASSWORD, APP_USER, CONTEXT_SECRET, load, write_configs
from router.testing.pgcluster import PgEnvironment
from router.testing.routerthread import RouterThread

Mode = Literal["hardened", "legacy"]
MODELS: Final[tuple[Isolation, ...]] = ("shared", "schema", "database")

SETTING: Final = "app.tenant_id"
# The session's secret: a shard database holds one key, which `rls enable` rewrites.
SECRET: Final = CONTEXT_SECRET
SHARD: Final = "shard_a"  # every tenant is pinned here, so pool size 1 means ONE server connection
ROLE_PASSWORD: Final = "esc-router-password"
# A user trusted to switch tenants (SET router.tenant); the suite's `app` user is not.
OPS_USER: Final = "ops"
OPS_PASSWORD: Final = "ops-secret"
# What `tenant.schema_sql` gives every schema and database tenant.
TENANT_SCHEMA_SQL: Final = "CREATE TABLE items (secret text NOT NULL);\n"
ROWS_PER_TENANT: Final = 2


@dataclass(frozen=True)
class Layout:
    """The names one deployment uses; nothing is shared between HARDENED and LEGACY."""

    mode: Mode
    role: str  # the router's server.user
    catalog_schema: str
    table: str  # the shared table, in the shard's database
    policy: str
    prefix: str  # of tenant ids

    def tenants(self, model: Isolation) -> tuple[str, str]:
        """(A, B) of an isolation model: A attacks, B is the victim."""
        return f"{self.prefix}-{model}-a", f"{self.prefix}-{model}-b"

    @property
    def all_tenants(self) -> list[tuple[str, Isolation]]:
        return [(tenant, model) for model in MODELS for tenant in self.tenants(model)]


HARDENED: Final = Layout("hardened", "esc_router", "esc_catalog", "esc_items", "tenant_isolation", "esc")
LEGACY: Final = Layout("legacy", "esc_legacy", "esc_legacy_catalog", "esc_legacy_items", "legacy_isolation", "escl")

# The legacy setup: the router role reads an unsigned setting, nothing verifies it.
_LEGACY_POLICY_SQL: Final = (
    "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;"
    " CREATE POLICY {policy} ON {table} USING (tenant_id = current_setting('app.tenant_id'))"
    " WITH CHECK (tenant_id = current_setting('app.tenant_id'))"
)


@dataclass
class EscapeDeployment:
    """A deployed layout with its router running. `secrets` holds each tenant's rows as deployed."""

    env: PgEnvironment
    layout: Layout
    config: RouterConfig
    topology: Topology
    router: RouterThread
    secrets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    models: dict[str, Isolation] = field(default_factory=dict)
    audit: list[RoleAudit] = field(default_factory=list)

    @property
    def mode(self) -> Mode:
        return self.layout.mode

    @property
    def hardened(self) -> bool:
        return self.layout.mode == "hardened"

    def url(
        self,
        tenant: str | None,
        user: str = APP_USER,
        password: str = APP_PASSWORD,
        dbname: str = "app",
        router: RouterThread | None = None,
    ) -> str:
        """A libpq URL through the router (or `router`), the tenant in the user name (none: `user` alone)."""
        name = f"{user}.{tenant}" if tenant else user
        port = (router or self.router).port
        return f"postgresql://{name}:{password}@127.0.0.1:{port}/{dbname}"

    @contextlib.contextmanager
    def another_router(self, **pool: Any) -> Iterator[RouterThread]:
        """A second router on the same deployment with other pool settings (e.g. size=2), stopped after."""
        config = dataclasses.replace(self.config, pool=dataclasses.replace(self.config.pool, **pool))
        thread = RouterThread(config, self.topology).start()
        try:
            yield thread
        finally:
            thread.stop()

    def signature(self, tenant: str) -> str:
        """What the router signs `tenant` with (hardened only; an attacker reads its own)."""
        return sign_tenant(SECRET, tenant)

    def superuser_dsn(self, tenant: str | None = None) -> str:
        """The superuser on the shard, in the shard's database or a database tenant's own."""
        dbname = database_name(tenant) if tenant and self.models[tenant] == "database" else self.env.SHARD_DB
        return self.env.shard_dsn(SHARD, self.env.SUPERUSER, self.env.SUPERUSER_PASSWORD, dbname)

    def rows_sql(self, tenant: str) -> str:
        """The superuser's query for all of `tenant`'s secrets (row-level security does not apply)."""
        model = self.models[tenant]
        if model == "shared":
            return f"SELECT secret FROM {self.layout.table} WHERE tenant_id = {quote_literal(tenant)} ORDER BY 1"
        if model == "schema":
            return f"SELECT secret FROM {quote_ident(schema_name(tenant))}.items ORDER BY 1"
        return "SELECT secret FROM public.items ORDER BY 1"

    def restore_sql(self, tenant: str) -> str:
        """The superuser's statements putting `tenant`'s rows back as deployed."""
        values = ", ".join(f"({quote_literal(secret)})" for secret in self.secrets[tenant])
        model = self.models[tenant]
        if model == "shared":
            table, who = self.layout.table, quote_literal(tenant)
            rows = ", ".join(f"({who}, {quote_literal(secret)})" for secret in self.secrets[tenant])
            return f"DELETE FROM {table} WHERE tenant_id = {who}; INSERT INTO {table} (tenant_id, secret) VALUES {rows}"
        table = f"{quote_ident(schema_name(tenant))}.items" if model == "schema" else "public.items"
        return f"DELETE FROM {table}; INSERT INTO {table} (secret) VALUES {values}"

    def close_idle_server_connections(self) -> None:
        """Close the router's idle server connections: the next attack starts on fresh sessions."""

        async def close_idle() -> None:
            for pool in self.router.router.iter_pools():
                pool.close_idle("escape suite: next attack")

        self.router.call(close_idle())


def printed_in_plan(value: bytes) -> str:
    """How a plan printed by debug_print_plan shows the start of a constant holding `value`: its
    first 16 bytes as signed decimals (C chars). Search for it in a plan with its line wrapping
    removed (`re.sub(r"\\n\\s*", "", plan)`)."""
    return " ".join(str(byte - 256 if byte > 127 else byte) for byte in value[:16])


def write_layout_configs(directory: Path, env: PgEnvironment, layout: Layout) -> Path:
    """router.yaml and shards.yaml for `layout`: pool size 1, the suite's users, role and catalog."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tenant.sql").write_text(TENANT_SCHEMA_SQL)
    tenant: dict[str, Any] = {
        "resolution": ["user", "option"],
        "setting": SETTING,
        "default_isolation": "shared",
        "schema_sql": "tenant.sql",
    }
    extra: dict[str, Any] = {
        "catalog": {"dsn": env.catalog_dsn(), "schema": layout.catalog_schema, "refresh_interval": 5.0},
        "server": {"user": layout.role, "password": ROLE_PASSWORD},
        "admin": {"user": env.SUPERUSER, "password": env.SUPERUSER_PASSWORD},
        "tenant": tenant,
        "auth": {
            "method": "scram-sha-256",
            "users": [
                {"name": APP_USER, "password": APP_PASSWORD, "tenant_switch": False},
                {"name": OPS_USER, "password": OPS_PASSWORD, "tenant_switch": True},
            ],
        },
        "reload": {"watch": False},
    }
    # The legacy layout is the unsigned mode on purpose: the suite proves it can see leaks there.
    return write_configs(
        directory,
        env,
        pool={"size": 1, "wait_timeout": 10.0},
        extra=extra,
        context_secret=SECRET,
        legacy_unsigned=layout.mode == "legacy",
    )


async def _superuser(env: PgEnvironment, shard: str, dbname: str | None = None) -> Any:
    return await asyncpg.connect(env.shard_dsn(shard, env.SUPERUSER, env.SUPERUSER_PASSWORD, dbname or env.SHARD_DB))


async def _prepare_shards(env: PgEnvironment, layout: Layout) -> None:
    """On every shard: the router role (LOGIN only) and the shared table, owned by the superuser."""
    role, table = quote_ident(layout.role), quote_ident(layout.table)
    for shard in env.shards:
        conn = await _superuser(env, shard)
        try:
            exists = await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", layout.role)
            verb = "ALTER" if exists else "CREATE"
            await conn.execute(
                f"{verb} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION"
                f" PASSWORD {quote_literal(ROLE_PASSWORD)}"
            )
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"CREATE TABLE {table} (tenant_id text NOT NULL, secret text NOT NULL)")
            await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}")
            if layout.mode == "legacy":
                await conn.execute(_LEGACY_POLICY_SQL.format(table=table, policy=quote_ident(layout.policy)))
            else:
                # Every shared tenant acts as this role, and pg_stat_activity shows a role the text of
                # its other sessions' statements: other tenants' literals. Only a superuser can set
                # this default (so the router keeps it, see router/net/role_guard.py).
                await conn.execute(f"ALTER ROLE {role} SET track_activities = off")
        finally:
            await conn.close()


async def _seed(deployment: EscapeDeployment) -> None:
    env, layout = deployment.env, deployment.layout
    for tenant, _model in layout.all_tenants:
        deployment.secrets[tenant] = tuple(
            f"{tenant}-secret-{n}-{uuid.uuid4().hex[:10]}" for n in range(1, ROWS_PER_TENANT + 1)
        )
    conn = await _superuser(env, SHARD)
    try:
        for tenant, model in layout.all_tenants:
            if model != "database":
                await conn.execute(deployment.restore_sql(tenant))
        await conn.execute(f"ANALYZE {quote_ident(layout.table)}")  # statistics an attacker may look for
    finally:
        await conn.close()
    for tenant, model in layout.all_tenants:
        if model == "database":
            conn = await _superuser(env, SHARD, database_name(tenant))
            try:
                await conn.execute(deployment.restore_sql(tenant))
            finally:
                await conn.close()


async def _deploy(env: PgEnvironment, directory: Path, layout: Layout) -> EscapeDeployment:
    await _prepare_shards(env, layout)
    config, topology = load(write_layout_configs(directory, env, layout))
    if layout.mode == "hardened":
        await enable_rls(config, topology, layout.table, "tenant_id")
    await init_catalog(config)
    models: dict[str, Isolation] = {}
    for tenant, model in layout.all_tenants:
        await add_tenant(config, topology, tenant, model, shard=SHARD)
        models[tenant] = model
    audit = await audit_server_role(config, topology)
    router = RouterThread(config, topology)
    deployment = EscapeDeployment(env, layout, config, topology, router, models=models, audit=audit)
    await _seed(deployment)
    return deployment


def deploy(env: PgEnvironment, directory: Path, layout: Layout) -> EscapeDeployment:
    """Deploy `layout` and start its router. On failure, whatever was made is removed again."""
    try:
        deployment = asyncio.run(_deploy(env, directory, layout))
    except BaseException:
        with contextlib.suppress(Exception):
            config, topology = load(directory / "router.yaml")
            asyncio.run(_remove(env, config, topology, layout))
        raise
    deployment.router.start()
    return deployment


async def _remove(env: PgEnvironment, config: RouterConfig, topology: Topology, layout: Layout) -> None:
    """Drop the tenants (data and roles), the shared table, the router role and the catalog schema."""
    for tenant, _model in layout.all_tenants:
        with contextlib.suppress(RouterError):
            await remove_tenant(config, topology, tenant, drop_data=True)
    table = quote_ident(layout.table)
    for shard in env.shards:
        conn = await _superuser(env, shard)
        try:
            if layout.mode == "hardened" and await conn.fetchval("SELECT to_regclass('router.rls_tables')"):
                await conn.execute("DELETE FROM router.rls_tables WHERE table_name = to_regclass($1)", layout.table)
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            for tenant, _model in layout.all_tenants:  # leftovers of a tenant whose removal failed
                await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema_name(tenant))} CASCADE")
                await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(database_name(tenant))} WITH (FORCE)")
            names = [layout.role, *(tenant_role(tenant) for tenant, _model in layout.all_tenants)]
            for name in names:
                if await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name):
                    await conn.execute(f"DROP OWNED BY {quote_ident(name)}")
                    await conn.execute(f"DROP ROLE {quote_ident(name)}")
        finally:
            await conn.close()
    catalog = await asyncpg.connect(env.catalog_dsn(env.SUPERUSER, env.SUPERUSER_PASSWORD))
    try:
        await catalog.execute(f"DROP SCHEMA IF EXISTS {quote_ident(layout.catalog_schema)} CASCADE")
    finally:
        await catalog.close()


def remove(deployment: EscapeDeployment) -> None:
    """Stop the router and remove everything `deploy` made."""
    deployment.router.stop()
    asyncio.run(_remove(deployment.env, deployment.config, deployment.topology, deployment.layout))
