"""`tenant-router rebalance plan` against real shards, and what moves need of a shard (`check`,
`require_move_prerequisites`).

The module starts an environment of its own, so its tenants, reload pins and extra shards touch
no other test: a catalog, shard_a and shard_b (where the tenants start), shard_c (added by the
"reload"), and shard_r, a cluster started with wal_level = replica, which moves cannot use.

The scenario: shards.yaml places the tenants on shard_a and shard_b; rows are written for tenants
of each isolation model; then shards.yaml adds shard_c and drains shard_b (weight 0), and the
reload's pins are recorded as router/ops/reload.py records them. The plan must list exactly the
tenants on shard_b (drained) and those the ring now places on shard_c (reload pins), with their
row counts and sizes read from the shards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.admin.shard_access import admin_login, close, connect
from router.catalog.access import connection
from router.config import RouterConfig
from router.core.hashing import Ring
from router.core.routing import place_tenant
from router.core.topology import Topology, load_topology
from router.errors import MovePrerequisiteMissing
from router.isolation import database_name, quote_ident, schema_name
from router.ops.reload import moved_tenants, pin_moved_tenants
from router.rebalance.prereq import move_prerequisites, require_move_prerequisites
from router.rebalance.sizes import load_plan
from router.testing.deploy import install_shared_table, load, seed, write_configs
from router.testing.pgcluster import (
    PgCluster,
    PgEnvironment,
    free_port,
    start_cluster,
    start_environment,
    stop_clusters_under,
)

pytestmark = pytest.mark.integration

CLI_TIMEOUT = 60
# Rows written per tenant: tenant i of a kind gets ROWS + i, so every count is its own.
ROWS = 40


@dataclass
class Scenario:
    env: PgEnvironment
    replica_level: PgCluster  # wal_level = replica: moves cannot use it
    config: RouterConfig
    before: Topology  # shard_a, shard_b
    after: Topology  # shard_a, shard_b (weight 0), shard_c
    rows: dict[str, int]  # tenant -> rows written
    expected: dict[str, tuple[str, str, str]]  # moving tenant -> (source, target, reason)
    staying: list[str]


def _shards_doc(env: PgEnvironment, weights: dict[str, int]) -> dict[str, Any]:
    return {
        "ring": {"vnodes": 160},
        "shards": {
            name: {
                "weight": weight,
                "primary": {"host": env.shards[name].host, "port": env.shards[name].port, "dbname": "app"},
            }
            for name, weight in weights.items()
        },
    }


def _pick(before: Topology, after: Topology, isolation_prefix: str) -> dict[str, str]:
    """Three tenant ids of one kind: one on shard_b (to be drained), one the ring moves from shard_a
    to shard_c, one that stays on shard_a."""
    old, new = Ring.from_topology(before), Ring.from_topology(after)
    wanted: dict[str, str] = {}
    for i in range(1000):
        tenant = f"{isolation_prefix}{i}"
        src, dst = old.shard_for(tenant), new.shard_for(tenant)
        kind = "drained" if src == "shard_b" else "rehashed" if dst == "shard_c" else "stays" if src == dst else None
        if kind is not None and kind not in wanted:
            wanted[kind] = tenant
        if len(wanted) == 3:
            return wanted
    raise AssertionError("no tenant ids found for every case")


async def _write_rows(
    config: RouterConfig, topology: Topology, tenant: str, isolation: str, shard: str, n: int
) -> None:
    admin = admin_login(config, "test rows")
    address = topology.shards[shard].primary
    if isolation == "database":
        conn = await connect(address, admin, database=database_name(tenant))
        table = "items"
    else:
        conn = await connect(address, admin)
        table = "items" if isolation == "shared" else f"{quote_ident(schema_name(tenant))}.items"
    try:
        await conn.execute(
            f"INSERT INTO {table} (tenant_id, name) SELECT $1, repeat('x', 100) || g FROM generate_series(1, $2) g",
            tenant,
            n,
        )
        await conn.execute(f"ANALYZE {table}")  # reltuples: the estimate schema and database tenants get
    finally:
        await close(conn)


async def _record_reload(config: RouterConfig, before: Topology, after: Topology) -> None:
    """What a reload from `before` to `after` leaves in the catalog: moved tenants pinned to their
    old shard, and those pins recorded as the reload's."""
    async with connection(config.catalog.dsn, config.catalog.schema, 10, "test") as conn:
        rows = await conn.fetch(f"SELECT id, shard FROM {config.catalog.schema}.tenants")
    moves = moved_tenants([(r["id"], r["shard"]) for r in rows], before, after)
    await pin_moved_tenants(config, moves)
    async with connection(config.catalog.dsn, config.catalog.schema, 10, "test") as conn:
        await conn.executemany(
            f"INSERT INTO {config.catalog.schema}.reload_pins (tenant_id, shard) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING",
            [(m.tenant, m.old_shard) for m in moves],
        )


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    base = Path(tempfile.mkdtemp(prefix="tenant-router-rebalance-", dir="/tmp"))
    base.chmod(0o755)
    try:
        env = start_environment(base, shard_count=3)
        replica_level = start_cluster(base, "shard_r", settings={"wal_level": "replica"})
        directory = base / "config"
        path = write_configs(directory, env)
        shards_file = directory / "shards.yaml"
        shards_file.write_text(yaml.safe_dump(_shards_doc(env, {"shard_a": 1, "shard_b": 1})))
        config, before = load(path)
        after_doc = _shards_doc(env, {"shard_a": 1, "shard_b": 0, "shard_c": 1})
        (directory / "after.yaml").write_text(yaml.safe_dump(after_doc))
        after = load_topology(directory / "after.yaml")

        expected: dict[str, tuple[str, str, str]] = {}
        staying: list[str] = []
        tenants: list[tuple[str, str, str | None]] = []
        for isolation, prefix in (("shared", "rp_s"), ("schema", "rp_c"), ("database", "rp_d")):
            picked = _pick(before, after, prefix)
            tenants += [(tenant, isolation, None) for tenant in picked.values()]
            drained, rehashed = picked["drained"], picked["rehashed"]
            expected[drained] = ("shard_b", Ring.from_topology(after).shard_for(drained), "drained (weight 0)")
            expected[rehashed] = ("shard_a", "shard_c", "reload pin")
            staying.append(picked["stays"])
        # Operators' pins: the one on the drained shard moves (and ends unpinned), the other stays.
        tenants += [("rp_op_b", "shared", "shard_b"), ("rp_op_a", "shared", "shard_a")]
        expected["rp_op_b"] = (
            "shard_b",
            place_tenant("rp_op_b", None, after, Ring.from_topology(after)).shard,
            "drained (weight 0)",
        )
        staying.append("rp_op_a")

        placed = asyncio.run(seed(config, before, tenants))
        rows: dict[str, int] = {}

        async def write_all() -> None:
            for i, (tenant, isolation, _pin) in enumerate(tenants):
                rows[tenant] = ROWS + i
                await _write_rows(config, before, tenant, isolation, placed[tenant], rows[tenant])
            await _record_reload(config, before, after)

        asyncio.run(write_all())
        shards_file.write_text(yaml.safe_dump(after_doc))  # the reload, as far as the CLI can see
        yield Scenario(env, replica_level, config, before, after, rows, expected, staying)
    finally:
        stop_clusters_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _cli(config: RouterConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", str(config.path), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def test_the_harness_gives_every_cluster_what_moves_need(scenario: Scenario) -> None:
    config, topology = scenario.config, scenario.after
    found = {shard: asyncio.run(move_prerequisites(config, topology, shard)) for shard in topology.shards}
    assert found == {"shard_a": [], "shard_b": [], "shard_c": []}
    for cluster in scenario.env.clusters:
        settings = cluster.execute(
            "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings WHERE name IN"
            " ('wal_level', 'max_replication_slots', 'max_wal_senders', 'max_logical_replication_workers',"
            " 'max_worker_processes', 'max_sync_workers_per_subscription')"
        )
        assert settings == (
            "max_logical_replication_workers=40,max_replication_slots=40,max_sync_workers_per_subscription=4,"
            "max_wal_senders=40,max_worker_processes=64,wal_level=logical"
        ), cluster


def test_plan_json_lists_the_moves_with_their_sizes(scenario: Scenario) -> None:
    result = _cli(scenario.config, "rebalance", "plan", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["problems"] == [] and plan["in_progress"] == [] and plan["unpins"] == []
    moves = {m["tenant"]: m for m in plan["moves"]}
    assert {t: (m["source"], m["target"], m["reason"]) for t, m in moves.items()} == scenario.expected
    assert all(m["pin"] is None for m in moves.values())
    assert not set(scenario.staying) & set(moves)
    for tenant, move in moves.items():
        # count(*) for shared tenants; reltuples (analysed) for the others: exact here either way.
        assert move["rows"] == scenario.rows[tenant], move
        assert move["bytes"] > 100 * move["rows"], move  # each row holds 100+ bytes of text
    kinds = {m["isolation"] for m in moves.values()}
    assert kinds == {"shared", "schema", "database"}
    totals = plan["totals"]
    assert (totals["tenants"], totals["moving"]) == (len(scenario.rows), len(scenario.expected))
    assert totals["rows"] == sum(scenario.rows[t] for t in scenario.expected)
    assert totals["bytes"] == sum(m["bytes"] for m in moves.values()) and totals["unsized"] == 0
    pairs = {(p["source"], p["target"]): p["moves"] for p in totals["pairs"]}
    assert sum(pairs.values()) == len(scenario.expected) and ("shard_a", "shard_c") in pairs


def test_plan_text_has_a_line_per_move_and_the_totals(scenario: Scenario) -> None:
    result = _cli(scenario.config, "rebalance", "plan")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for tenant, (source, target, reason) in scenario.expected.items():
        (line,) = [line for line in lines if line.split()[0] == tenant]
        assert f"{source} -> {target}" in line and line.endswith(reason) and f"{scenario.rows[tenant]:,}" in line
    moving, total = len(scenario.expected), len(scenario.rows)
    share = f"{moving / total:.1%}"
    rows = sum(scenario.rows[t] for t in scenario.expected)
    (totals,) = [line for line in lines if line.startswith("total: ")]
    assert totals.startswith(f"total: {moving} of {total} tenants move ({share}); {rows:,} rows, "), totals
    assert any(line.startswith("  shard_a -> shard_c: ") for line in lines), lines


def test_plan_changes_nothing(scenario: Scenario) -> None:
    async def catalog() -> list[Any]:
        s = scenario.config.catalog.schema
        async with connection(scenario.config.catalog.dsn, s, 10, "test") as conn:
            tenants = await conn.fetch(f"SELECT id, shard FROM {s}.tenants ORDER BY id")
            pins = await conn.fetch(f"SELECT tenant_id, shard FROM {s}.reload_pins ORDER BY 1")
            moves = await conn.fetch(f"SELECT count(*) FROM {s}.moves")
        return [[tuple(r) for r in tenants], [tuple(r) for r in pins], [tuple(r) for r in moves]]

    before = asyncio.run(catalog())
    plan = asyncio.run(load_plan(scenario.config, scenario.after))
    assert asyncio.run(catalog()) == before
    assert {m.tenant for m in plan.moves} == set(scenario.expected)
    # The same plan without sizes reads only the catalog.
    unsized = asyncio.run(load_plan(scenario.config, scenario.after, sizes=False))
    assert [m.rows for m in unsized.moves] == [None] * len(scenario.expected)


def test_a_shard_without_logical_wal_is_reported_and_refused(scenario: Scenario) -> None:
    cluster = scenario.replica_level
    doc = _shards_doc(scenario.env, {"shard_a": 1, "shard_b": 1})
    doc["shards"]["shard_r"] = {"weight": 1, "primary": {"host": cluster.host, "port": cluster.port, "dbname": "app"}}
    directory = Path(tempfile.mkdtemp(prefix="rebalance-r-", dir=scenario.env.base_dir))
    path = write_configs(directory, scenario.env)
    (directory / "shards.yaml").write_text(yaml.safe_dump(doc))
    config, topology = load(path)

    where = f"shard shard_r ({cluster.host}:{cluster.port}/app)"
    problems = asyncio.run(move_prerequisites(config, topology, "shard_r"))
    assert problems == [
        f"{where}: wal_level is replica; moves need wal_level = logical (set it in postgresql.conf and restart)"
    ]
    with pytest.raises(MovePrerequisiteMissing) as refused:
        asyncio.run(require_move_prerequisites(config, topology, "shard_a", "shard_r"))
    assert refused.value.problems == tuple(problems)
    assert "shard_r" in refused.value.message and "wal_level is replica" in refused.value.message
    asyncio.run(require_move_prerequisites(config, topology, "shard_a", "shard_b"))  # both fine: no error

    # `check` says so as a warning, and still passes (once shard_r is protected like the others).
    asyncio.run(install_shared_table(config, topology))
    result = _cli(config, "check")
    assert result.returncode == 0, result.stderr
    assert f"warning: {problems[0]}" in result.stderr.splitlines()
    for shard in ("shard_a", "shard_b"):
        address = topology.shards[shard].primary
        assert f"shard {shard} ({address.host}:{address.port}/app): moves: ok" in result.stdout.splitlines()
    assert not [line for line in result.stdout.splitlines() if line.startswith("shard shard_r") and "moves" in line]


def test_an_admin_without_the_privileges_moves_need_is_named(scenario: Scenario) -> None:
    shard_a = scenario.env.shards["shard_a"]
    shard_a.execute("CREATE ROLE rp_weak_admin LOGIN NOSUPERUSER NOREPLICATION PASSWORD 'weak-secret'")
    try:
        directory = Path(tempfile.mkdtemp(prefix="rebalance-weak-", dir=scenario.env.base_dir))
        path = write_configs(
            directory, scenario.env, extra={"admin": {"user": "rp_weak_admin", "password": "weak-secret"}}
        )
        config, topology = load(path)
        problems = asyncio.run(move_prerequisites(config, topology, "shard_a"))
        where = f"shard shard_a ({shard_a.host}:{shard_a.port}/app)"
        assert problems == [
            f"{where}: the admin role rp_weak_admin is not a superuser: PostgreSQL 15 lets only superusers create"
            " subscriptions, so tenants cannot move to this shard (ALTER ROLE rp_weak_admin SUPERUSER)",
            f"{where}: the admin role rp_weak_admin has neither SUPERUSER nor REPLICATION, so it cannot stream a"
            " publication: tenants cannot move off this shard (ALTER ROLE rp_weak_admin REPLICATION)",
        ]
        # On shard_b the role does not exist: the admin cannot connect, which is named too.
        (unreachable,) = asyncio.run(move_prerequisites(config, topology, "shard_b"))
        assert "the admin role rp_weak_admin cannot connect" in unreachable
    finally:
        shard_a.execute("DROP ROLE rp_weak_admin")


def test_a_shard_that_cannot_be_read_leaves_its_tenants_unsized_and_says_why(scenario: Scenario) -> None:
    port = free_port()
    shard_b = scenario.after.shards["shard_b"]
    offline = dataclasses.replace(shard_b, primary=dataclasses.replace(shard_b.primary, port=port))
    topology = dataclasses.replace(scenario.after, shards={**scenario.after.shards, "shard_b": offline})
    plan = asyncio.run(load_plan(scenario.config, topology))
    on_b = sorted(t for t, (source, _target, _reason) in scenario.expected.items() if source == "shard_b")
    assert sorted(m.tenant for m in plan.moves if m.rows is None) == on_b
    assert all(m.rows == scenario.rows[m.tenant] for m in plan.moves if m.source != "shard_b")
    assert plan.problems == [
        f"sizes of {len(on_b)} tenants on shard shard_b (127.0.0.1:{port}/app) unknown: connection refused"
    ]
    assert plan.totals().unsized == len(on_b)
