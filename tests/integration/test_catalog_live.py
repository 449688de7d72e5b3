"""A running router sees catalog changes made with the CLI within a second, without a restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import psycopg
import pytest

from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, url


def _cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", str(deployment.directory / "router.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )


def _can_connect(router: RouterThread, tenant: str) -> bool:
    try:
        with psycopg.connect(url(router, tenant)) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def test_cli_add_suspend_resume_remove_seen_live(router: RouterThread, deployment: Deployment) -> None:
    tenant = "livecorp"
    assert not _can_connect(router, tenant)
    added = _cli(deployment, "tenants", "add", tenant, "--isolation", "shared")
    assert added.returncode == 0, added.stderr
    wait_until(
        lambda: router.router.catalog.get(tenant) is not None,
        "router.router.catalog.get(tenant) is not None",
        within=1.0,
    )
    assert _can_connect(router, tenant)

    # `tenants show` and the router agree on the shard.
    shown = _cli(deployment, "tenants", "show", tenant)
    assert shown.returncode == 0, shown.stderr
    with psycopg.connect(url(router, tenant)) as conn:
        row = conn.execute("SELECT current_setting('port')::int").fetchone()
    shard = next(name for name, c in deployment.env.shards.items() if row is not None and c.port == row[0])
    assert f"{shard} (hashed)" in shown.stdout

    # Suspend: an open session's next transaction fails; new logins fail.
    session = psycopg.connect(url(router, tenant), autocommit=True)
    try:
        assert _cli(deployment, "tenants", "suspend", tenant).returncode == 0
        wait_until(
            lambda: router.router.catalog.get(tenant),
            "the router to see tenant status suspended",
            within=1.0,
            until=lambda seen: seen is not None and seen.status == "suspended",
        )
        with pytest.raises(psycopg.OperationalError) as info:
            session.execute("SELECT 1")
        assert "suspended" in str(info.value)
        assert not _can_connect(router, tenant)
        assert _cli(deployment, "tenants", "resume", tenant).returncode == 0
        wait_until(lambda: _can_connect(router, tenant), "_can_connect(router, tenant)", within=1.0)
        assert session.execute("SELECT 1").fetchone() == (1,)  # the same session carries on
    finally:
        session.close()

    assert _cli(deployment, "tenants", "remove", tenant).returncode == 0
    wait_until(
        lambda: router.router.catalog.get(tenant) is None, "router.router.catalog.get(tenant) is None", within=1.0
    )
    assert not _can_connect(router, tenant)


def test_pin_change_moves_new_transactions(router: RouterThread, deployment: Deployment) -> None:
    from router.catalog.store import CatalogStore

    tenant = "movable"

    async def change(shard: str | None) -> None:
        async with CatalogStore(deployment.env.catalog_dsn()) as store:
            if await store.get(tenant) is None:
                await store.add(tenant, "shared", shard=shard)
            else:
                await store.set_shard(tenant, shard)

    ports = {name: c.port for name, c in deployment.env.shards.items()}
    asyncio.run(change("shard_a"))
    wait_until(lambda: _can_connect(router, tenant), "_can_connect(router, tenant)", within=1.0)
    with psycopg.connect(url(router, tenant), autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('port')::int").fetchone() == (ports["shard_a"],)
        asyncio.run(change("shard_b"))
        wait_until(
            lambda: router.router.catalog.get(tenant),
            "the router to see tenant shard shard_b",
            within=1.0,
            until=lambda seen: seen is not None and seen.shard == "shard_b",
        )
        # Routing is per transaction: the same session's next transaction goes to the new shard.
        assert conn.execute("SELECT current_setting('port')::int").fetchone() == (ports["shard_b"],)


def test_check_command(deployment: Deployment, tmp_path: object) -> None:
    ok = _cli(deployment, "check")
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout


def test_a_catalog_change_reaches_every_instance_within_a_second(make_router: object, deployment: Deployment) -> None:
    from router.catalog.store import CatalogStore

    first, second = make_router(), make_router()  # type: ignore[operator]
    tenant = "fanout"

    async def change(status: str | None) -> None:
        async with CatalogStore(deployment.env.catalog_dsn()) as store:
            if status is None:
                await store.remove(tenant)
            elif await store.get(tenant) is None:
                await store.add(tenant, "shared")
            else:
                await store.set_status(tenant, status)  # type: ignore[arg-type]

    try:
        asyncio.run(change("active"))
        for instance in (first, second):
            wait_until(
                lambda i=instance: i.router.catalog.get(tenant) is not None,
                "i.router.catalog.get(tenant) is not None",
                within=1.0,
            )
        asyncio.run(change("suspended"))
        for instance in (first, second):
            wait_until(
                lambda i=instance: i.router.catalog.get(tenant).status == "suspended",
                'i.router.catalog.get(tenant).status == "suspended"',
                within=1.0,
            )
    finally:
        asyncio.run(change(None))
    for instance in (first, second):
        wait_until(
            lambda i=instance: i.router.catalog.get(tenant) is None, "i.router.catalog.get(tenant) is None", within=1.0
        )
