"""A per-tenant connection limit is global: each live router process enforces its share of it, as
counted through the catalog's instance registry."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from router.admin.tenant_admin import init_catalog
from router.catalog.store import CatalogStore
from router.testing.deploy import load, write_configs
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, url

SCHEMA = "limits_it"  # a catalog of its own: only the two routers below are live in it


@pytest.fixture
def two_routers(deployment: Deployment, tmp_path: Path) -> Iterator[tuple[RouterThread, RouterThread]]:
    catalog = {"dsn": deployment.env.catalog_dsn(), "schema": SCHEMA, "refresh_interval": 5.0}
    tenant = {"resolution": ["user", "option"], "setting": "app.tenant_id", "max_connections": 4}
    routers: list[RouterThread] = []
    for name in ("a", "b"):
        config, topology = load(
            write_configs(tmp_path / name, deployment.env, extra={"catalog": catalog, "tenant": tenant})
        )
        if not routers:
            asyncio.run(init_catalog(config))

            async def seed() -> None:
                async with CatalogStore(deployment.env.catalog_dsn(), SCHEMA) as store:
                    if await store.get("acme") is None:
                        await store.add("acme", "shared")

            asyncio.run(seed())
        routers.append(RouterThread(config, topology).start())
    try:
        wait_until(
            lambda: [r.router.live_members for r in routers],
            "both routers to count 2 live members",
            within=10,
            until=lambda members: members == [2, 2],
        )
        yield routers[0], routers[1]
    finally:
        for router in routers:
            router.stop()


def test_each_instance_enforces_its_share_of_the_global_limit(two_routers: tuple[RouterThread, RouterThread]) -> None:
    a, b = two_routers
    held = [psycopg.connect(url(a, "acme")) for _ in range(2)]  # a's share: 4 // 2 live = 2
    try:
        with pytest.raises(psycopg.OperationalError, match=r'tenant "acme" has reached its connection limit \(4'):
            psycopg.connect(url(a, "acme"))
        held += [psycopg.connect(url(b, "acme")) for _ in range(2)]  # b has a share of its own
        with pytest.raises(psycopg.OperationalError, match="connection limit"):
            psycopg.connect(url(b, "acme"))
        held.pop(0).close()  # a slot on a frees up
        connect = functools.partial(psycopg.connect, url(a, "acme"))
        held.append(
            wait_until(connect, "a connection in the freed slot", within=5, ignoring=(psycopg.OperationalError,))
        )
    finally:
        for conn in held:
            conn.close()
