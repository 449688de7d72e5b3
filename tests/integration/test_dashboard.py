"""The shipped Grafana dashboard (docker/grafana/tenant-router.json) against a real Prometheus
(Debian's package, which setup.sh installs) scraping a running router under load: every PromQL
expression of every panel is evaluated by Prometheus and must return data. A metric the router
renames or drops then fails this test instead of leaving a panel empty.

The load gives every panel something to show: pgbench through the router on two tenants of two
shards, a login refused (errors by class), a tenant move finished (holds, the cutover histogram)
and another one paused while open (moves in progress, catch-up lag)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from router.admin.tenant_admin import add_tenant
from router.rebalance.mover import PAUSE_ENV
from router.testing.deploy import load
from router.testing.pgcluster import free_port
from router.testing.prometheus import PrometheusServer, prometheus_binary
from router.testing.waiting import wait_until

from .conftest import APP_PASSWORD, Deployment, RouterFactory, url

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "tenant-router.json"

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None, reason="Debian's prometheus is not installed here (setup.sh installs it)"
)


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def cli(deployment: Deployment, *args: str, pause: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
    if pause:
        env[PAUSE_ENV] = pause
    config = str(deployment.directory / "router.yaml")
    return subprocess.Popen(
        [sys.executable, "-m", "router.cli", "--config", config, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_every_panel_of_the_dashboard_has_data(
    make_router: RouterFactory, deployment: Deployment, tmp_path: Path
) -> None:
    queries = panel_queries()
    assert len(queries) >= 16
    router = make_router(http_port=free_port())
    config, topology = load(deployment.directory / "router.yaml")
    for tenant, shard in (
        ("dash-a", "shard_a"),
        ("dash-b", "shard_b"),
        ("dash-moved", "shard_a"),
        ("dash-open", "shard_a"),
    ):
        asyncio.run(add_tenant(config, topology, tenant, "shared", shard))
    prometheus = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{router.http_port}"]).wait_ready()
    paused: subprocess.Popen[str] | None = None
    try:
        script = tmp_path / "load.sql"
        script.write_text(
            "BEGIN;\nINSERT INTO items (name) VALUES ('pgbench');\nSELECT count(*) FROM items;\nCOMMIT;\n"
        )
        env = {**os.environ, "PGPASSWORD": APP_PASSWORD}
        bench = [
            subprocess.Popen(
                [
                    "pgbench",
                    "-n",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(router.port),
                    "-U",
                    f"app.{tenant}",
                    "-c",
                    "2",
                    "-T",
                    "12",
                    "-f",
                    str(script),
                    "app",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for tenant in ("dash-a", "dash-b")
        ]
        with pytest.raises(psycopg.OperationalError):  # an error the router sends: a class to show
            psycopg.connect(url(router, "dash-nobody")).close()
        with psycopg.connect(url(router, "dash-moved"), autocommit=True) as conn:
            conn.execute("INSERT INTO items (name) SELECT 'row' FROM generate_series(1, 50)")
        moved = cli(deployment, "tenants", "move", "dash-moved", "--to", "shard_b")
        assert moved.wait(120) == 0, moved.stderr.read() if moved.stderr else ""
        paused = cli(deployment, "tenants", "move", "dash-open", "--to", "shard_b", pause="verified=120")
        wait_until(
            lambda: prometheus.query("max(tenant_router_move_lag_bytes)") != [],
            "an open move's lag to be scraped",
            within=30,
        )
        for process in bench:
            assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
        time.sleep(2)  # a scrape after the load, so rates over the last minute include it
        empty = []
        for title, expr in queries:
            if not prometheus.query(expr):
                empty.append(f"{title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
    finally:
        if paused is not None:
            paused.send_signal(signal.SIGKILL)
            paused.wait(10)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "router.cli",
                    "--config",
                    str(deployment.directory / "router.yaml"),
                    "rebalance",
                    "apply",
                    "--tenant",
                    "dash-open",
                ],
                capture_output=True,
                timeout=120,
            )
        prometheus.stop()
