"""Holds through the catalog: every live router instance must acknowledge before a cutover may
proceed; a held tenant's new transactions wait and resume on release; an instance that cannot
acknowledge (stopped mid-hold) makes the cutover abort cleanly, losing nothing. A hold whose
coordinator died expires and the router lets the tenant's transactions run again; a released hold
resumes them where the catalog places the tenant now, even before the catalog's notification of
the new placement has arrived (the catalog cache's `refresh`, which says when it cannot read the
catalog); the router's record of holds (/holds, /metrics) names only the
tenants it held."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from router.admin.tenant_admin import add_tenant, init_catalog
from router.catalog.cache import CatalogCache
from router.catalog.cluster import Hold, HoldCoordinator, HoldNotAcknowledged, list_instances
from router.catalog.store import CatalogStore
from router.errors import CatalogUnavailable
from router.testing.deploy import load, write_configs
from router.testing.pgcluster import free_port
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, RouterFactory, url


def _live_ids(deployment: Deployment) -> set[str]:
    infos = asyncio.run(list_instances(deployment.env.catalog_dsn(), "tenant_router", stale_after=5.0))
    return {i.instance_id for i in infos if i.live}


def test_routers_register_as_instances(router: RouterThread, deployment: Deployment) -> None:
    assert any(i.endswith(f":{router.port}") for i in _live_ids(deployment))


def test_hold_waits_for_running_transactions_and_blocks_new_ones(router: RouterThread, deployment: Deployment) -> None:
    coordinator = HoldCoordinator(deployment.env.catalog_dsn(), "tenant_router")
    busy = psycopg.connect(url(router, "globex"))
    busy.execute("SELECT 1")  # a transaction is open on globex
    result: dict[str, object] = {}

    def hold() -> None:
        result["hold"] = asyncio.run(coordinator.request_hold("globex", "test cutover", timeout=10))

    holder = threading.Thread(target=hold)
    holder.start()
    # The router has entered the hold: it now waits for globex's running transaction to end.
    wait_until(lambda: "globex" in router.router.held, "the router to enter the hold on globex", within=10)
    assert "hold" not in result and holder.is_alive()  # so it cannot have acknowledged
    busy.commit()  # the transaction ends: the router drains and acknowledges
    holder.join(10)
    assert "hold" in result
    # While held, a new globex transaction waits; other tenants are not affected.
    with psycopg.connect(url(router, "acme"), autocommit=True) as other:
        assert other.execute("SELECT 1").fetchone() == (1,)
    waiter_done: dict[str, object] = {}

    def query() -> None:
        waiter_done["row"] = busy.execute("SELECT current_setting('app.tenant_id')").fetchone()

    thread = threading.Thread(target=query)
    thread.start()
    # The router has queued the transaction until the release: the query has not run.
    wait_until(lambda: len(router.router.held["globex"]), "globex's transaction to wait for the release", within=10)
    assert "row" not in waiter_done and thread.is_alive()
    hold_obj = result["hold"]
    asyncio.run(coordinator.release_hold(hold_obj.hold_id))  # type: ignore[attr-defined]
    thread.join(5)
    assert waiter_done["row"] == ("globex",)
    busy.close()


@pytest.fixture
def stoppable_router(deployment: Deployment, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    config = write_configs(tmp_path / "stoppable", deployment.env, listen_port=port, extra={"workers": 1})
    log = (tmp_path / "stoppable.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "--config", str(config), "serve"], stderr=log)

    def registered() -> bool:
        assert proc.poll() is None, (tmp_path / "stoppable.log").read_text()
        return any(i.endswith(f":{port}") for i in _live_ids(deployment))

    wait_until(registered, "the router to register as an instance", within=20, interval=0.1)
    proc.port = port  # type: ignore[attr-defined]
    yield proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)
    log.close()


def test_instance_stopped_mid_hold_aborts_the_cutover_cleanly(
    router: RouterThread, deployment: Deployment, stoppable_router: subprocess.Popen[bytes]
) -> None:
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('survives-the-abort')")
        before = conn.execute("SELECT count(*) FROM items").fetchone()
    os.kill(stoppable_router.pid, signal.SIGSTOP)  # alive as far as its heartbeat says, but mute
    coordinator = HoldCoordinator(deployment.env.catalog_dsn(), "tenant_router", stale_after=30)
    try:
        with pytest.raises(HoldNotAcknowledged) as info:
            asyncio.run(coordinator.request_hold("acme", "cutover", timeout=2.0))
        assert any(m.endswith(f":{stoppable_router.port}") for m in info.value.missing)  # type: ignore[attr-defined]
    finally:
        os.kill(stoppable_router.pid, signal.SIGCONT)
    # Aborted cleanly: no hold remains, acme is served at once, nothing was lost.
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        started = time.monotonic()
        assert conn.execute("SELECT count(*) FROM items").fetchone() == before
        assert time.monotonic() - started < 1.0
    assert "acme" not in router.router.held


def test_two_instances_both_acknowledge(make_router: RouterFactory, deployment: Deployment) -> None:
    first, second = make_router(), make_router()
    coordinator = HoldCoordinator(deployment.env.catalog_dsn(), "tenant_router")
    try:
        hold = asyncio.run(coordinator.request_hold("initech", "cutover", timeout=10))
    except HoldNotAcknowledged as exc:
        # A router another test stopped without deregistering (killed) is still asked to
        # acknowledge until it turns stale; ours must not be among the missing. Then once more.
        missing = exc.missing  # type: ignore[attr-defined]
        assert not any(m.endswith((f":{first.port}", f":{second.port}")) for m in missing), missing
        hold = asyncio.run(coordinator.request_hold("initech", "cutover", timeout=10))
    acked = set(hold.acknowledged_by)
    assert any(a.endswith(f":{first.port}") for a in acked)
    assert any(a.endswith(f":{second.port}") for a in acked)
    assert "initech" in first.router.held and "initech" in second.router.held
    asyncio.run(coordinator.release_hold(hold.hold_id))
    wait_until(
        lambda: "initech" not in first.router.held and "initech" not in second.router.held,
        "both routers to release initech",
        within=5,
    )


def _hold(deployment: Deployment, ours: tuple[RouterThread, ...], tenant: str, reason: str, **kwargs: float) -> Hold:
    """A hold on `tenant` acknowledged by our routers. A router another test killed without
    deregistering is still asked to acknowledge until it turns stale: then once more."""
    coordinator = HoldCoordinator(deployment.env.catalog_dsn(), "tenant_router")
    try:
        return asyncio.run(coordinator.request_hold(tenant, reason, **kwargs))
    except HoldNotAcknowledged as exc:
        missing = exc.missing  # type: ignore[attr-defined]
        assert not any(m.endswith(tuple(f":{r.port}" for r in ours)) for m in missing), missing
        return asyncio.run(coordinator.request_hold(tenant, reason, **kwargs))


def test_hold_of_a_coordinator_that_died_expires_and_the_tenant_runs_again(
    router: RouterThread, deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    # The coordinator holds globex with a short ttl, then "dies": nobody ever releases the hold.
    dead = _hold(deployment, (router,), "globex", "cutover by a coordinator that dies", timeout=2.0, ttl=3.0)
    assert "globex" in router.router.held
    client = psycopg.connect(url(router, "globex"), autocommit=True)
    result: dict[str, object] = {}

    def query() -> None:
        result["row"] = client.execute("SELECT current_setting('app.tenant_id')").fetchone()

    waiter = threading.Thread(target=query)
    waiter.start()
    wait_until(lambda: len(router.router.held.get("globex", ())), "globex's transaction to wait", within=5)
    assert "row" not in result
    # Within the router's wait timeout (5 s) the hold expires, and the waiting transaction runs.
    waiter.join(10)
    assert result.get("row") == ("globex",)
    assert "globex" not in router.router.held
    assert any(
        "expired" in r.getMessage() and "'globex'" in r.getMessage() and "coordinator that dies" in r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING"
    )
    # The dead coordinator's row is in nobody's way: a new hold on globex succeeds.
    again = _hold(deployment, (router,), "globex", "cutover, second attempt", timeout=5.0)
    assert again.hold_id != dead.hold_id and "globex" in router.router.held
    coordinator = HoldCoordinator(deployment.env.catalog_dsn(), "tenant_router")
    assert asyncio.run(coordinator.release_hold(again.hold_id))
    wait_until(lambda: "globex" not in router.router.held, "globex released", within=5)
    assert client.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("globex",)
    client.close()


MOVED = "holds_moved1"  # a shared tenant of this test's own, moved from shard_a to shard_b


async def _switch_placement_unannounced(deployment: Deployment, tenant: str, shard: str) -> None:
    """Change the tenant's shard in the catalog with the catalog's trigger (its NOTIFY) off for
    that statement: the notification a running router's cache would act on never comes, which is
    a notification arriving arbitrarily late taken to its limit."""
    env = deployment.env
    conn = await asyncpg.connect(env.catalog_dsn(env.SUPERUSER, env.SUPERUSER_PASSWORD))
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")  # no user triggers
            await conn.execute("UPDATE tenant_router.tenants SET shard = $2 WHERE id = $1", tenant, shard)
    finally:
        await conn.close()


def test_released_hold_resumes_on_the_new_placement_before_its_notification(
    make_router: RouterFactory, deployment: Deployment
) -> None:
    env = deployment.env
    dsn = env.catalog_dsn()

    async def catalog(action: str) -> None:
        async with CatalogStore(dsn, "tenant_router") as store:
            await store.remove(MOVED)
            if action == "add":
                await store.add(MOVED, "shared", shard="shard_a")

    asyncio.run(catalog("add"))
    try:
        # The full catalog reload (the fallback that would notice the change) is far away.
        ours = make_router(http_port=free_port(), extra={"catalog": {"refresh_interval": 600.0}})
        client = psycopg.connect(url(ours, MOVED), autocommit=True)
        port = "SELECT inet_server_port()"
        assert client.execute(port).fetchone() == (env.shards["shard_a"].port,)
        hold = _hold(deployment, (ours,), MOVED, "move to shard_b", timeout=5.0)
        result: dict[str, object] = {}

        def query() -> None:
            result["row"] = client.execute(port).fetchone()

        waiter = threading.Thread(target=query)
        waiter.start()
        wait_until(lambda: len(ours.router.held.get(MOVED, ())), "the transaction to wait for the release", within=5)
        # The move: the data is on shard_b now; the catalog switches the placement, unannounced.
        asyncio.run(_switch_placement_unannounced(deployment, MOVED, "shard_b"))
        time.sleep(0.5)
        cached = ours.router.catalog.get(MOVED)
        assert cached is not None and cached.shard == "shard_a"  # the router has not heard of it
        assert "row" not in result
        asyncio.run(HoldCoordinator(dsn, "tenant_router").release_hold(hold.hold_id))
        waiter.join(10)
        # The waiting transaction ran where the catalog places the tenant now; so does the next.
        assert result.get("row") == (env.shards["shard_b"].port,)
        assert client.execute(port).fetchone() == (env.shards["shard_b"].port,)
        client.close()
        # The router's record of holds: this tenant, once, and nobody held now.
        assert _http_json(ours, "/holds") == {"held_now": [], "held_ever": {MOVED: 1}}
        metrics = _http(ours, "/metrics")
        assert "tenant_router_holds_total 1.0" in metrics and "tenant_router_held_tenants 0.0" in metrics
        assert 'tenant_router_hold_seconds_bucket{le="10.0"} 1.0' in metrics
    finally:
        asyncio.run(catalog("remove"))


def _http(router: RouterThread, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", router.http_port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def _http_json(router: RouterThread, path: str) -> object:
    return json.loads(_http(router, path))


class CutOff:
    """A TCP relay to the catalog that can be cut (every connection dropped, new ones refused) and
    restored on the same port: the catalog as one process sees it across an outage."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.timeout(60)
async def test_cache_refresh_reads_the_catalog_now_or_says_it_cannot(deployment: Deployment) -> None:
    env = deployment.env
    relay = CutOff("127.0.0.1", env.catalog.port)
    await relay.restore()
    dsn = env.catalog_dsn().replace(f":{env.catalog.port}/", f":{relay.port}/")
    tenant = "holds_refresh1"
    async with CatalogStore(env.catalog_dsn(), "tenant_router") as store:
        await store.remove(tenant)
        await store.add(tenant, "shared", shard="shard_a")
    changed: list[str] = []
    cache = CatalogCache(dsn, "tenant_router", refresh_interval=600.0, on_change=changed.append, connect_timeout=2.0)
    try:
        async with cache:
            before = cache.get(tenant)
            assert before is not None and before.shard == "shard_a"
            # Unchanged, but whatever was resolved from it is dropped all the same.
            await cache.refresh([tenant])
            assert changed == [tenant]
            await _switch_placement_unannounced(deployment, tenant, "shard_b")
            await asyncio.sleep(0.3)
            assert cache.get(tenant) == before  # no notification, no change
            await cache.refresh([tenant])
            after = cache.get(tenant)
            assert after is not None and after.shard == "shard_b" and changed.count(tenant) >= 2
            # The catalog out of reach: refresh says so, and the cache keeps serving what it had.
            await relay.cut()
            await _switch_placement_unannounced(deployment, tenant, "shard_a")
            for _ in range(2):
                with pytest.raises(CatalogUnavailable, match=f"127.0.0.1:{relay.port} is unavailable"):
                    await cache.refresh([tenant])
            assert cache.get(tenant) == after
            # Back: the next refresh reconnects at once (no waiting for the refresh tick).
            await relay.restore()
            await cache.refresh([tenant])
            again = cache.get(tenant)
            assert again is not None and again.shard == "shard_a" and cache.connected
    finally:
        await relay.cut()
        async with CatalogStore(env.catalog_dsn(), "tenant_router") as store:
            await store.remove(tenant)


def test_a_router_that_could_not_join_keeps_trying_and_then_acknowledges(
    make_router: RouterFactory, deployment: Deployment
) -> None:
    """A router that cannot register among the instances when it starts serves anyway, but a
    hold cannot know of it: it keeps trying, and once registered its holds are acknowledged."""
    schema = "late_join"
    config, topology = load(
        write_configs(deployment.directory / "late", deployment.env, extra={"catalog": {"schema": schema}})
    )
    asyncio.run(init_catalog(config))
    asyncio.run(add_tenant(config, topology, "latecomer", "shared", "shard_a"))
    catalog = deployment.env.catalog
    catalog.execute(f"ALTER TABLE {schema}.instances RENAME TO instances_away", "router_catalog")
    try:
        router = make_router(extra={"catalog": {"schema": schema}})
        assert catalog.execute(f"SELECT count(*) FROM {schema}.instances_away", "router_catalog").strip() == "0"
    finally:
        catalog.execute(f"ALTER TABLE {schema}.instances_away RENAME TO instances", "router_catalog")
    wait_until(
        lambda: any(
            i.instance_id.endswith(f":{router.port}")
            for i in asyncio.run(list_instances(deployment.env.catalog_dsn(), schema))
        ),
        "the router to register once it can",
        within=15,
    )
    coordinator = HoldCoordinator(deployment.env.catalog_dsn(), schema)
    hold = asyncio.run(coordinator.request_hold("latecomer", "test", timeout=10))
    assert any(a.endswith(f":{router.port}") for a in hold.acknowledged_by)
    assert "latecomer" in router.router.held
    asyncio.run(coordinator.release_hold(hold.hold_id))
