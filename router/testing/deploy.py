"""Deploying the router onto a PgEnvironment: config files, catalog, tenants, a shared RLS table.

Used by the integration tests, the benchmarks and `tenant-router demo`, so that all three run the
router exactly the way an operator would: from YAML files, through the same admin functions the
CLI calls.

The default is the hardened setup, the one the README's "Running it" section builds: a
`tenant.context_secret` (the tenant context is signed), the superuser as `admin`, the shared
`items` table owned by the admin and protected by `rls enable`, and schema and database tenants
with their own login roles (`tenants add` makes them, and creates their own `items` table from
`tenant.schema_sql`). The router's role owns nothing in a shard's database and can create
nothing there: DDL belongs to schema and database tenants (their own role owns their namespace)
or to the admin. `legacy_unsigned=True` writes the unsafe mode instead: no context secret, so the
tenant setting is a plain setting any client could overwrite, and a shared table with a policy on
`current_setting()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from router.admin.rls_enable import enable_rls
from router.admin.shard_access import admin_login, connect
from router.admin.tenant_admin import add_tenant, init_catalog
from router.config import RouterConfig, load_router_config
from router.core.topology import Topology, load_topology
from router.isolation import quote_ident
from router.testing.pgcluster import PgEnvironment

APP_USER = "app"
APP_PASSWORD = "app-secret"
REPORTING_USER = "reporting"
REPORTING_PASSWORD = "reporting-secret"
# A user of the admin console (the virtual database `tenant_router`), and no other.
CONSOLE_USER = "ops"
CONSOLE_PASSWORD = "ops-secret"
# The context secret of test deployments (the demo generates one per run). A shard database holds
# one key, which every `rls enable` rewrites: every deployment on the same shards must use this one,
# or the last `rls enable` makes the others' signatures "forged".
CONTEXT_SECRET: Final = "test-context-secret: known to the router and the shards only"
SHARED_TABLE: Final = "items"
SCHEMA_SQL_FILE: Final = "tenant_schema.sql"

# The shared table, created by the admin (who owns it); `rls enable` then protects it. The key
# leads with the tenant column: a publication filtering rows on it needs it in the replica identity,
# and a moved tenant's rows must not collide with the target's keys of other tenants.
SHARED_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS items (
    id bigserial,
    tenant_id text NOT NULL DEFAULT current_setting('app.tenant_id'),
    name text NOT NULL,
    PRIMARY KEY (tenant_id, id)
)
"""

# The legacy (unsigned) protection of the shared table: a policy on the plain setting, which a
# client can overwrite with set_config(). FORCE makes it apply to the table's owner too.
LEGACY_POLICY_SQL = """
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
ALTER TABLE items FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON items;
CREATE POLICY tenant_isolation ON items
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON items TO {role};
GRANT USAGE ON SEQUENCE items_id_seq TO {role};
"""

# What `tenants add` applies in a schema or database tenant's own namespace, as its own role.
PRIVATE_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS items (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL DEFAULT current_setting('app.tenant_id'),
    name text NOT NULL
);
"""


def write_configs(
    directory: Path,
    env: PgEnvironment,
    *,
    listen_port: int = 0,
    http_port: int = 0,
    pool: dict[str, Any] | None = None,
    auth_method: str = "scram-sha-256",
    pins: dict[str, str] | None = None,
    extra_shards: dict[str, tuple[str, int]] | None = None,
    extra: dict[str, Any] | None = None,
    replicas: dict[str, list[tuple[str, int]]] | None = None,
    context_secret: str = CONTEXT_SECRET,
    legacy_unsigned: bool = False,
) -> Path:
    """Write router.yaml and shards.yaml (and the tenants' schema file) for `env` into `directory`;
    return router.yaml's path. `replicas` lists (host, port) read replicas per shard name.

    The hardened setup unless `legacy_unsigned`: `tenant.context_secret` and the superuser as
    `admin` (kept in legacy mode too: the router's role cannot create schemas or databases).
    A section of `extra` that is a mapping is merged into the default section of that name
    (`extra={"tenant": {"max_connections": 5}}` keeps the context secret); other values replace it,
    and None removes the section (`extra={"admin": None}`: a router.yaml without an admin).
    """
    directory.mkdir(parents=True, exist_ok=True)
    shards: dict[str, Any] = {
        name: {
            "weight": 1,
            "primary": {"host": cluster.host, "port": cluster.port, "dbname": env.SHARD_DB},
        }
        for name, cluster in env.shards.items()
    }
    for name, (host, port) in (extra_shards or {}).items():
        shards[name] = {"weight": 1, "primary": {"host": host, "port": port, "dbname": env.SHARD_DB}}
    for name, servers in (replicas or {}).items():
        shards[name]["replicas"] = [{"host": host, "port": port} for host, port in servers]
    topology: dict[str, Any] = {"ring": {"vnodes": 160}, "shards": shards}
    if pins:
        topology["pins"] = pins
    (directory / "shards.yaml").write_text(yaml.safe_dump(topology, sort_keys=False))
    (directory / SCHEMA_SQL_FILE).write_text(PRIVATE_TABLE_SQL)
    tenant: dict[str, Any] = {
        "resolution": ["user", "option"],
        "setting": "app.tenant_id",
        "schema_sql": SCHEMA_SQL_FILE,
    }
    if not legacy_unsigned:
        tenant["context_secret"] = context_secret
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": listen_port},
        "http": {"host": "127.0.0.1", "port": http_port},
        "catalog": {"dsn": env.catalog_dsn(), "refresh_interval": 5.0},
        "shards_file": "shards.yaml",
        "auth": {
            "method": auth_method,
            "users": [
                {"name": APP_USER, "password": APP_PASSWORD, "tenant_switch": True},
                {"name": REPORTING_USER, "password": REPORTING_PASSWORD, "tenant_switch": False},
                {"name": CONSOLE_USER, "password": CONSOLE_PASSWORD, "console": True},
            ],
        },
        "server": {"user": env.ROUTER_ROLE, "password": env.ROUTER_PASSWORD},
        "admin": {"user": env.SUPERUSER, "password": env.SUPERUSER_PASSWORD},
        "pool": {"mode": "transaction", "size": 10, "wait_timeout": 5.0, "connect_timeout": 3.0, **(pool or {})},
        "tenant": tenant,
    }
    for section, value in (extra or {}).items():
        default = config.get(section)
        if value is None:
            config.pop(section, None)
        elif isinstance(default, dict) and isinstance(value, dict):
            config[section] = {**default, **value}
        else:
            config[section] = value
    path = directory / "router.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)  # it holds the context secret and the admin's password
    return path


def load(path: Path) -> tuple[RouterConfig, Topology]:
    config = load_router_config(path)
    return config, load_topology(config.shards_file)


async def install_shared_table(config: RouterConfig, topology: Topology) -> None:
    """The shared `items` table on every shard of `topology`, created by and owned by the admin;
    then protected as `config` says: `rls enable` (signed context) or, without a context secret,
    the legacy policy on the plain setting."""
    admin = admin_login(config, "creating the shared table")
    for shard in topology.shards.values():
        conn = await connect(shard.primary, admin)
        try:
            await conn.execute(SHARED_TABLE_SQL)
            if config.tenant.context_secret is None:
                await conn.execute(LEGACY_POLICY_SQL.format(role=quote_ident(config.server.user)))
        finally:
            await conn.close()
    if config.tenant.context_secret is not None:
        await enable_rls(config, topology, SHARED_TABLE)


async def seed(config: RouterConfig, topology: Topology, tenants: list[tuple[str, str, str | None]]) -> dict[str, str]:
    """Initialise the catalog, protect the shared table, add (id, isolation, pinned shard) tenants
    (schema and database tenants get their `items` from `tenant.schema_sql`); return tenant -> shard."""
    await init_catalog(config)
    await install_shared_table(config, topology)
    placed: dict[str, str] = {}
    for tenant, isolation, shard in tenants:
        view = await add_tenant(config, topology, tenant, isolation, shard)  # type: ignore[arg-type]
        placed[tenant] = view.shard
    return placed
