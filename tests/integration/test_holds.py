"""Holds through the catalog: every live router instance must acknowledge before a cutover may
proceed; a held tenant's new transactions wait and resume on release; an instance that cannot
acknowledge (stopped mid-hold) makes the cutover abort cleanly, losing nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from router.catalog.cluster import HoldCoordinator, HoldNotAcknowledged, list_instances
from router.testing.deploy import write_configs
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
