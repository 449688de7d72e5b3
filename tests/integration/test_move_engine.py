"""What an operator can do with a move in progress, on the shared deployment's real shards:
roll it back (`rebalance abort`) before it switched and nothing of it stays on either shard; not
once it switched (then `rebalance apply` finishes it); and a move another live run owns is left
to it, by `rebalance apply` and by `rebalance abort`. A move paused at a stage
(TENANT_ROUTER_MOVE_PAUSE) stands for a run that is slow there, or is killed there."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from router.admin.tenant_admin import add_tenant
from router.rebalance.mover import PAUSE_ENV
from router.testing.deploy import load, write_configs
from router.testing.pgcluster import PgCluster
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, url

ROWS = 200


def cli(deployment: Deployment, *args: str, pause: str | None = None, wait: bool = True) -> Any:
    env = {**os.environ}
    env.pop(PAUSE_ENV, None)
    if pause is not None:
        env[PAUSE_ENV] = pause
    argv = [sys.executable, "-m", "router.cli", "--config", str(deployment.directory / "router.yaml"), *args]
    if not wait:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)


def catalog_sql(deployment: Deployment, sql: str) -> str:
    return deployment.env.catalog.execute(sql, "router_catalog").strip()


def stage_of(deployment: Deployment, tenant: str) -> str:
    return catalog_sql(
        deployment, f"SELECT stage FROM tenant_router.moves WHERE tenant_id = '{tenant}' ORDER BY move_id DESC LIMIT 1"
    )


def move_id_of(deployment: Deployment, tenant: str) -> int:
    return int(catalog_sql(deployment, f"SELECT max(move_id) FROM tenant_router.moves WHERE tenant_id = '{tenant}'"))


def rows_on(shard: PgCluster, tenant: str) -> int:
    return int(shard.execute(f"SELECT count(*) FROM items WHERE tenant_id = '{tenant}'", "app").strip())


def replication_leftovers(deployment: Deployment, tenant: str) -> list[str]:
    """The slots, subscriptions and publications of the tenant's moves still on the shards."""
    ours = {f"tenant_router_move_{move_id}" for move_id in move_ids_of(deployment, tenant)}
    found = []
    for name, shard in deployment.env.shards.items():
        for sql in (
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'tenant_router_move_%'",
            "SELECT subname FROM pg_subscription WHERE subname LIKE 'tenant_router_move_%'",
            "SELECT pubname FROM pg_publication WHERE pubname LIKE 'tenant_router_move_%'",
        ):
            found += [f"{name}: {line}" for line in shard.execute(sql, "app").split() if line in ours]
    return found


def move_ids_of(deployment: Deployment, tenant: str) -> list[int]:
    listed = catalog_sql(deployment, f"SELECT move_id FROM tenant_router.moves WHERE tenant_id = '{tenant}'")
    return [int(line) for line in listed.split()]


@pytest.fixture
def tenant(request: pytest.FixtureRequest, deployment: Deployment, router: RouterThread) -> Iterator[str]:
    """A fresh shared tenant on shard_a with ROWS rows, written through the router."""
    tenant_id = f"eng-{request.node.name.split('[')[0][5:25].replace('_', '-')}"
    config, topology = load(deployment.directory / "router.yaml")
    asyncio.run(add_tenant(config, topology, tenant_id, "shared", "shard_a"))
    with psycopg.connect(url(router, tenant_id), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) SELECT 'row ' || g FROM generate_series(1, %s) g", (ROWS,))
    yield tenant_id


def kill_at(deployment: Deployment, tenant: str, stage: str, *args: str) -> None:
    """Start `tenants move` (or the given command), let it reach `stage`, and SIGKILL it there."""
    process = cli(
        deployment, *(args or ("tenants", "move", tenant, "--to", "shard_b")), pause=f"{stage}=60", wait=False
    )
    try:
        wait_until(lambda: stage_of(deployment, tenant) == stage, f"the move to reach {stage}", within=60)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)


def test_abort_before_the_switch_leaves_nothing_behind(
    deployment: Deployment, router: RouterThread, tenant: str
) -> None:
    kill_at(deployment, tenant, "catching_up")
    shard_a, shard_b = deployment.env.shards["shard_a"], deployment.env.shards["shard_b"]
    # The initial copy runs on its own once subscribed: the copy is there (or on its way) when killed.
    wait_until(lambda: rows_on(shard_b, tenant) == ROWS, "the initial copy to reach shard_b", within=30)
    assert replication_leftovers(deployment, tenant)

    aborted = cli(deployment, "rebalance", "abort", str(move_id_of(deployment, tenant)))
    assert aborted.returncode == 0, aborted.stderr
    assert "rolled back; it stays on shard_a" in aborted.stdout
    assert stage_of(deployment, tenant) == "aborted"
    assert rows_on(shard_b, tenant) == 0 and rows_on(shard_a, tenant) == ROWS
    assert replication_leftovers(deployment, tenant) == []
    with psycopg.connect(url(router, tenant), autocommit=True) as conn:
        assert conn.execute("SELECT count(*), inet_server_port() FROM items").fetchone() == (ROWS, shard_a.port)
    status = json.loads(cli(deployment, "rebalance", "status", "--json").stdout)
    assert [m for m in status["open"] if m["tenant_id"] == tenant] == []
    ours = {f"tenant_router_move_{move_id}" for move_id in move_ids_of(deployment, tenant)}
    assert [item for item in status["left_behind"] if item.split()[-1] in ours] == []


def test_a_switched_move_cannot_be_aborted_only_finished(
    deployment: Deployment, router: RouterThread, tenant: str
) -> None:
    kill_at(deployment, tenant, "switched")
    shard_a, shard_b = deployment.env.shards["shard_a"], deployment.env.shards["shard_b"]
    with psycopg.connect(url(router, tenant), autocommit=True) as conn:  # served by the target already
        assert conn.execute("SELECT count(*), inet_server_port() FROM items").fetchone() == (ROWS, shard_b.port)
    refused = cli(deployment, "rebalance", "abort", str(move_id_of(deployment, tenant)))
    assert refused.returncode != 0 and "has switched to shard_b already" in refused.stderr

    finished = cli(deployment, "rebalance", "apply", "--tenant", tenant)
    assert finished.returncode == 0, finished.stderr
    assert stage_of(deployment, tenant) == "cleaned"
    assert rows_on(shard_a, tenant) == 0 and rows_on(shard_b, tenant) == ROWS
    assert replication_leftovers(deployment, tenant) == []


def test_a_move_a_live_run_owns_is_left_to_it(deployment: Deployment, router: RouterThread, tenant: str) -> None:
    running = cli(deployment, "tenants", "move", tenant, "--to", "shard_b", pause="catching_up=60", wait=False)
    try:
        wait_until(lambda: stage_of(deployment, tenant) == "catching_up", "the move to reach catching up", within=60)
        move_id = move_id_of(deployment, tenant)
        refused = cli(deployment, "rebalance", "abort", str(move_id))
        assert refused.returncode != 0 and "is being run by" in refused.stderr
        skipped = cli(deployment, "rebalance", "apply", "--tenant", tenant)
        assert "skipped" in skipped.stdout + skipped.stderr
        assert stage_of(deployment, tenant) == "catching_up"
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait(10)
    # Its owner killed, the next run takes the move over at once (the owner was a process on this
    # host that is gone) and finishes it.
    finished = cli(deployment, "rebalance", "apply", "--tenant", tenant)
    assert finished.returncode == 0, finished.stderr
    assert stage_of(deployment, tenant) == "cleaned"
    assert rows_on(deployment.env.shards["shard_b"], tenant) == ROWS


def test_a_mover_killed_holding_its_tenant_delays_clients_without_failing_them(
    deployment: Deployment, router: RouterThread, tenant: str
) -> None:
    process = cli(deployment, "tenants", "move", tenant, "--to", "shard_b", pause="held=60", wait=False)
    try:
        wait_until(
            lambda: (
                catalog_sql(deployment, f"SELECT count(*) FROM tenant_router.holds WHERE tenant_id = '{tenant}'") == "1"
                and tenant in router.router.held
            ),
            "the cutover to hold the tenant",
            within=60,
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    # The dead mover's hold expires (rebalance.max_hold + 1 s), before the held client's own wait
    # (pool.wait_timeout) would fail it: the client sees a delay, and its rows on the source.
    shard_a = deployment.env.shards["shard_a"]
    with psycopg.connect(url(router, tenant), autocommit=True) as conn:
        assert conn.execute("SELECT count(*), inet_server_port() FROM items").fetchone() == (ROWS, shard_a.port)
    assert tenant not in router.router.held
    # The next run finds the move at "holding", tries the cutover again and finishes.
    finished = cli(deployment, "rebalance", "apply", "--tenant", tenant)
    assert finished.returncode == 0, finished.stderr
    assert stage_of(deployment, tenant) == "cleaned"
    assert rows_on(deployment.env.shards["shard_b"], tenant) == ROWS
    assert replication_leftovers(deployment, tenant) == []


def test_ddl_during_a_move_rolls_it_back_with_the_reason(
    deployment: Deployment, router: RouterThread, tmp_path: Path
) -> None:
    """DDL is not replicated: a column added on the source while the tenant moves makes the
    target's replication fail. The move stops after rebalance.failing_for, rolls back, and says why."""
    path = write_configs(tmp_path / "impatient", deployment.env, extra={"rebalance": {"failing_for": 3.0}})
    config, topology = load(path)
    tenant = "eng-ddl"
    asyncio.run(add_tenant(config, topology, tenant, "schema", "shard_a"))
    with psycopg.connect(url(router, tenant), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) SELECT 'row ' || g FROM generate_series(1, 20) g")
    env = {**os.environ, PAUSE_ENV: "catching_up=3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "--config", str(path), "tenants", "move", tenant, "--to", "shard_b"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: stage_of(deployment, tenant) == "catching_up", "the move to reach catching up", within=60)
    with psycopg.connect(url(router, tenant), autocommit=True) as conn:
        conn.execute("ALTER TABLE items ADD COLUMN extra int NOT NULL DEFAULT 1")
        conn.execute("INSERT INTO items (name, extra) VALUES ('after the ddl', 2)")
    _out, err = process.communicate(timeout=180)
    assert process.returncode == 1, err
    assert "kept failing" in err and "rolled back" in err and "DDL" in err, err
    assert stage_of(deployment, tenant) == "aborted"
    shard_b = deployment.env.shards["shard_b"]
    assert shard_b.execute(f"SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_{tenant}'", "app").strip() == "0"
    assert replication_leftovers(deployment, tenant) == []
    with psycopg.connect(url(router, tenant), autocommit=True) as conn:
        assert conn.execute("SELECT count(*), sum(extra), inet_server_port() FROM items").fetchone() == (
            21,
            22,
            deployment.env.shards["shard_a"].port,
        )
