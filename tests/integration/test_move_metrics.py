"""A tenant move as the operator watches it: the router's /metrics reads the catalog's moves
(started, finished, bytes copied, the cutover hold histogram) and its own holds; `rebalance status`
reports nothing left behind. The move itself runs against the shared deployment's real shards,
on a tenant of its own, with a client connected to it through the router throughout."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from router.admin.tenant_admin import add_tenant
from router.testing.pgcluster import free_port
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, RouterFactory, url


def metrics(router: RouterThread) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{router.http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels or s.name.endswith("_count")
    }


def cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    config = str(deployment.directory / "router.yaml")
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", config, *args], capture_output=True, text=True, timeout=120
    )


def test_a_move_shows_in_metrics_and_status(make_router: RouterFactory, deployment: Deployment) -> None:
    from router.testing.deploy import load

    router = make_router(http_port=free_port())
    config, topology = load(deployment.directory / "router.yaml")
    asyncio.run(add_tenant(config, topology, "metered", "shared", "shard_a"))
    before = metrics(router)
    with psycopg.connect(url(router, "metered"), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) SELECT 'row ' || g FROM generate_series(1, 500) g")
        shard_a_port = conn.execute("SELECT inet_server_port()").fetchone()
        moved = cli(deployment, "tenants", "move", "metered", "--to", "shard_b")
        assert moved.returncode == 0, moved.stderr
        assert "moved tenant metered (shared) from shard_a to shard_b: 500 rows, verified" in moved.stdout
        # The same client connection goes on, now served by shard_b, with all its rows.
        row = conn.execute("SELECT inet_server_port(), count(*) FROM items").fetchone()
        assert row is not None and row[1] == 500 and (row[0],) != shard_a_port

    def moves_finished() -> float:
        return metrics(router).get("tenant_router_moves_finished_total", 0.0)

    wait_until(moves_finished, "the router's move readings to see the move", within=15, until=lambda n: n >= 1)
    after = metrics(router)
    assert after["tenant_router_moves_started_total"] >= 1
    assert after["tenant_router_move_bytes_copied_total"] > 0
    assert after["tenant_router_move_cutover_hold_seconds_count"] >= 1
    # The router entered the verification hold and the cutover hold.
    assert after["tenant_router_holds_total"] - before.get("tenant_router_holds_total", 0) == 2
    assert after["tenant_router_hold_seconds_count"] - before.get("tenant_router_hold_seconds_count", 0) == 2

    status = cli(deployment, "rebalance", "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    metered = [m for m in report["open"] + report["recent"] if m["tenant_id"] == "metered"]
    assert [m["stage"] for m in metered] == ["cleaned"]
    assert [item for item in report["left_behind"] if item.endswith(f"_{metered[0]['move_id']}")] == []
    assert any(m["tenant_id"] == "metered" and m["stage"] == "cleaned" for m in report["recent"])
