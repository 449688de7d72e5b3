"""Router fixtures for the integration tier: one seeded deployment per session, and a factory for
routers with their own settings (pool size, pooling mode, auth method) on the same clusters.

The deployment is the hardened setup (router/testing/deploy.py): a context secret, the superuser
as `admin`, the shared `items` table owned by the admin and protected by `rls enable`, and schema
and database tenants with their own roles. What that means for a test:
- DDL: the router's role can create nothing in a shard's database, so a shared tenant (acme,
  globex...) cannot CREATE TABLE/FUNCTION/TYPE there (temporary objects are fine). Run DDL as the
  schema tenant `initech` (its own role owns its schema, first in its search_path) or the database
  tenant `umbrella`; or as the admin directly on the shard (`env.shard_dsn(shard, env.SUPERUSER,
  env.SUPERUSER_PASSWORD)`), granting the router's role what the test needs.
- `items` exists for every tenant: the shared one (RLS) and each private tenant's own.
- A shared session's server session has *entered* its tenant (router/admin/rls.py): the router calls
  router.enter_tenant(tenant, signature), and the policy on `items` reads the entered tenant; a
  session that entered none (or ran RESET ALL) gets 42501 "no tenant context".
- A deployment of a test's own on these shards must sign with deploy.CONTEXT_SECRET (write_configs'
  default): a shard database holds one key, and `rls enable` with another secret would make every
  other router's entries "forged".
- `make_router(legacy_unsigned=True)` (or write_configs(..., legacy_unsigned=True)) runs the unsafe
  unsigned mode; say in a comment why a test needs it. It cannot read the shared `items`: it enters
  no tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from router.testing.deploy import APP_PASSWORD, APP_USER, load, seed, write_configs
from router.testing.pgcluster import PgEnvironment
from router.testing.routerthread import RouterThread

# (tenant, isolation, catalog-pinned shard)
TENANTS: list[tuple[str, str, str | None]] = [
    ("acme", "shared", None),
    ("globex", "shared", None),
    ("initech", "schema", None),
    ("umbrella", "database", None),
    ("bigcorp", "shared", "shard_b"),
    ("hooli", "shared", None),
]


@dataclass
class Deployment:
    env: PgEnvironment
    directory: Path
    placement: dict[str, str]  # tenant -> shard, as `tenants add` reported it

    def shard_port(self, tenant: str) -> int:
        return self.env.shards[self.placement[tenant]].port


@pytest.fixture(scope="session")
def deployment(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    directory = tmp_path_factory.mktemp("deployment")
    config, topology = load(write_configs(directory, pg_env))
    placement = asyncio.run(seed(config, topology, TENANTS))
    from router.admin.tenant_admin import suspend_tenant

    asyncio.run(suspend_tenant(config, topology, "hooli"))
    return Deployment(pg_env, directory, placement)


@pytest.fixture(scope="session")
def router(deployment: Deployment) -> Iterator[RouterThread]:
    """The shared router: transaction pooling, SCRAM, pool size 10."""
    config, topology = load(deployment.directory / "router.yaml")
    thread = RouterThread(config, topology).start()
    yield thread
    thread.stop()


RouterFactory = Callable[..., RouterThread]


@pytest.fixture
def make_router(deployment: Deployment, tmp_path: Path) -> Iterator[RouterFactory]:
    """Start a router with its own config (e.g. pool={"size": 1}; any write_configs option, such as
    legacy_unsigned=True); stopped after the test."""
    started: list[RouterThread] = []

    def factory(**overrides: Any) -> RouterThread:
        directory = tmp_path / f"router{len(started)}"
        config, topology = load(write_configs(directory, deployment.env, **overrides))
        thread = RouterThread(config, topology).start()
        started.append(thread)
        return thread

    yield factory
    for thread in started:
        thread.stop()


def url(router: RouterThread, tenant: str | None, user: str = APP_USER, password: str = APP_PASSWORD) -> str:
    """A libpq URL for `tenant` through `router` (tenant in the user name)."""
    name = f"{user}.{tenant}" if tenant else user
    return f"postgresql://{name}:{password}@127.0.0.1:{router.port}/app"
