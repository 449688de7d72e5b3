"""Deploying the router onto a PgEnvironment: config files, catalog, tenants, a shared RLS table.

Used by the integration tests, the benchmarks and `tenant-router demo`, so that all three run the
router exactly the way an operator would: from YAML files, through the same admin functions the
CLI calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import yaml

from router.config import RouterConfig, load_router_config
from router.isolation import database_name, quote_ident, schema_name
from router.tenant_admin import add_tenant, init_catalog
from router.testing.pgcluster import PgEnvironment
from router.topology import Topology, load_topology

APP_USER = "app"
APP_PASSWORD = "app-secret"
REPORTING_USER = "reporting"
REPORTING_PASSWORD = "reporting-secret"

# A shared table protected by row-level security on the configured tenant setting. FORCE makes the
# policy apply to the table's owner (the router's role) too.
SHARED_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS items (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL DEFAULT current_setting('app.tenant_id'),
    name text NOT NULL
);
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
ALTER TABLE items FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON items;
CREATE POLICY tenant_isolation ON items
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
"""

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
) -> Path:
    """Write router.yaml and shards.yaml for `env` into `directory`; return router.yaml's path.
    `replicas` lists (host, port) read replicas per shard name."""
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
            ],
        },
        "server": {"user": env.ROUTER_ROLE, "password": env.ROUTER_PASSWORD},
        "pool": {"mode": "transaction", "size": 10, "wait_timeout": 5.0, "connect_timeout": 3.0, **(pool or {})},
        "tenant": {"resolution": ["user", "option"], "setting": "app.tenant_id"},
        **(extra or {}),
    }
    path = directory / "router.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load(path: Path) -> tuple[RouterConfig, Topology]:
    config = load_router_config(path)
    return config, load_topology(config.shards_file)


async def install_shared_table(env: PgEnvironment) -> None:
    """The RLS-protected `items` table in every shard's application database."""
    for name in env.shards:
        conn = await asyncpg.connect(env.shard_dsn(name))
        try:
            await conn.execute(SHARED_TABLE_SQL)
        finally:
            await conn.close()


async def install_private_table(env: PgEnvironment, shard: str, tenant: str, isolation: str) -> None:
    """An `items` table in a schema or database tenant's own namespace."""
    if isolation == "schema":
        conn = await asyncpg.connect(env.shard_dsn(shard))
        sql = PRIVATE_TABLE_SQL.replace("items", f"{quote_ident(schema_name(tenant))}.items", 1)
    else:
        conn = await asyncpg.connect(env.shard_dsn(shard, dbname=database_name(tenant)))
        sql = PRIVATE_TABLE_SQL
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def seed(
    config: RouterConfig, topology: Topology, env: PgEnvironment, tenants: list[tuple[str, str, str | None]]
) -> dict[str, str]:
    """Initialise the catalog, add (id, isolation, pinned shard) tenants with their tables; return
    tenant -> shard."""
    await init_catalog(config)
    await install_shared_table(env)
    placed: dict[str, str] = {}
    for tenant, isolation, shard in tenants:
        view = await add_tenant(config, topology, tenant, isolation, shard)  # type: ignore[arg-type]
        placed[tenant] = view.shard
        if isolation != "shared":
            await install_private_table(env, view.shard, tenant, isolation)
    return placed
