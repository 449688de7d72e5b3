"""Live reload of shards.yaml, end to end: a running router re-reads its topology without dropping
anyone.

Every router here uses a catalog schema of its own (`rl_catalog`, dropped at the end of the
module) holding only this module's tenants (`rl_...`), so the tenants other tests rely on are never
pinned by a reload made here. The third shard and the replica of shard_a are clusters of this
module, stopped at its end; the session's clusters are only used, never stopped.

Covered: reloads under pgbench load (weights, a shard added then removed, a replica added then
removed) with no failed transaction; tenants a new shard would take are pinned to their old shard
and keep their rows; an invalid file or the removal of a shard holding tenants changes nothing and
is reported like `tenant-router check` reports it; a removed server's pool drains; the file
watcher; and `tenant-router reload` against a real `tenant-router serve`, with one and two workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
import yaml

from router.admin.tenant_admin import add_tenant, init_catalog, show_tenant
from router.catalog.store import CatalogStore
from router.config import RouterConfig
from router.core.hashing import Ring
from router.core.topology import Topology, load_topology
from router.ops.reload import pid_file_path, read_pid_file
from router.testing.deploy import APP_PASSWORD, APP_USER, install_shared_table, load, write_configs
from router.testing.pgcluster import (
    CATALOG_DB,
    SHARD_DB,
    PgCluster,
    PgEnvironment,
    _bring_up,
    find_pg_bin_dir,
    free_port,
)
from router.testing.processes import alive, process_tree
from router.testing.routerthread import RouterThread
from router.testing.waiting import WaitTimeout, wait_until

from .conftest import Deployment

pytestmark = pytest.mark.integration

SCHEMA = "rl_catalog"  # this module's own catalog: reloads here pin only tenants of this module
PREFIX = "rl_"
SERVE_READY_TIMEOUT = 30.0


# --- clusters and catalog of this module ---------------------------------------------------------


@pytest.fixture(scope="module")
def shard_c(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """A third shard: its own cluster with the router's role, the application database and the
    shared RLS table (the admin's, protected by `rls enable`), like the session's shards."""
    cluster = PgCluster(pg_env.base_dir, "rl_shard_c")
    try:
        _bring_up(cluster, SHARD_DB)
        path = write_configs(
            tmp_path_factory.mktemp("rl-shard-c"), pg_env, extra_shards={"shard_c": (cluster.host, cluster.port)}
        )
        asyncio.run(install_shared_table(*load(path)))
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.datadir, ignore_errors=True)


@pytest.fixture(scope="module")
def replica_a(pg_env: PgEnvironment) -> Iterator[PgCluster]:
    """A streaming replica of shard_a."""
    replica = pg_env.shards["shard_a"].make_replica("rl_replica_a")
    try:
        yield replica
    finally:
        replica.stop()
        shutil.rmtree(replica.datadir, ignore_errors=True)


@pytest.fixture(scope="module")
def catalog_schema(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config, _topology = load(write_configs(tmp_path_factory.mktemp("rl-catalog"), pg_env, extra=_extra(pg_env)))
    asyncio.run(init_catalog(config))
    yield SCHEMA
    pg_env.catalog.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", dbname=CATALOG_DB)


@pytest.fixture
def clean(pg_env: PgEnvironment, shard_c: PgCluster, catalog_schema: str) -> Iterator[None]:
    """No tenants in this module's catalog and none of their rows in the shards, before and after."""
    _clean(pg_env, [*pg_env.shards.values(), shard_c])
    yield
    _clean(pg_env, [*pg_env.shards.values(), shard_c])


def _clean(env: PgEnvironment, shards: list[PgCluster]) -> None:
    env.catalog.execute(f"DELETE FROM {SCHEMA}.tenants", dbname=CATALOG_DB)
    for cluster in shards:
        cluster.execute(r"DELETE FROM items WHERE tenant_id LIKE 'rl\_%'", dbname=SHARD_DB)


def _extra(env: PgEnvironment, **sections: Any) -> dict[str, Any]:
    """router.yaml sections: this module's catalog schema, no file watcher unless asked for."""
    return {
        "catalog": {"dsn": env.catalog_dsn(), "schema": SCHEMA, "refresh_interval": 5.0},
        "reload": {"watch": False},
        **sections,
    }


# --- shards.yaml -----------------------------------------------------------------------------------


def shards_doc(
    env: PgEnvironment,
    *,
    weights: dict[str, int] | None = None,
    extra: dict[str, PgCluster] | None = None,
    replicas: dict[str, list[PgCluster]] | None = None,
) -> dict[str, Any]:
    """shards.yaml as a document: the session's shards plus `extra` ones, weights 1 unless given."""
    shards: dict[str, Any] = {}
    for name, cluster in [*env.shards.items(), *(extra or {}).items()]:
        entry: dict[str, Any] = {
            "weight": (weights or {}).get(name, 1),
            "primary": {"host": cluster.host, "port": cluster.port, "dbname": SHARD_DB},
        }
        if replicas and name in replicas:
            entry["replicas"] = [{"host": r.host, "port": r.port} for r in replicas[name]]
        shards[name] = entry
    return {"ring": {"vnodes": 160}, "shards": shards}


def hashed(topology: Topology, tenant: str) -> str:
    return Ring.from_topology(topology).shard_for(tenant)


@dataclass
class Running:
    """A RouterThread on this module's catalog, and its shards.yaml."""

    thread: RouterThread
    config: RouterConfig
    clusters: list[PgCluster]  # every cluster that may be a shard's primary

    @property
    def shards_file(self) -> Path:
        return self.config.shards_file

    @property
    def topology(self) -> Topology:
        return self.thread.router.topology

    def write(self, doc: dict[str, Any], *, in_place: bool = False) -> Topology:
        """Replace shards.yaml (atomically unless `in_place`); return the topology it describes."""
        text = yaml.safe_dump(doc, sort_keys=False)
        if in_place:
            self.shards_file.write_text(text)
        else:
            tmp = self.shards_file.with_name(".shards.yaml.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.shards_file)
        return load_topology(self.shards_file)

    def reload(self) -> bool:
        return self.thread.call(self.thread.router.reload())

    def url(self, tenant: str) -> str:
        return f"postgresql://{APP_USER}.{tenant}:{APP_PASSWORD}@127.0.0.1:{self.thread.port}/app"

    def add_tenants(self, tenants: list[str], shard: str | None = None) -> dict[str, str]:
        """Add shared tenants (pinned to `shard` if given) with one row each, inserted on the shard
        placement chose; return tenant -> shard."""
        placed = asyncio.run(_add_tenants(self.config, self.topology, tenants, shard))
        by_shard: dict[str, list[str]] = {}
        for tenant, where in placed.items():
            by_shard.setdefault(where, []).append(tenant)
        for where, names in by_shard.items():
            values = ", ".join(f"('{t}', 'row of {t}')" for t in names)
            self.cluster(where).execute(f"INSERT INTO items (tenant_id, name) VALUES {values}", dbname=SHARD_DB)
        return placed

    def cluster(self, shard: str) -> PgCluster:
        port = self.topology.shards[shard].primary.port
        return next(c for c in self.clusters if c.port == port)

    def pins(self) -> dict[str, str | None]:
        return asyncio.run(_catalog_pins(self.config))

    def pools_on(self, port: int) -> list[Any]:
        async def pools() -> list[Any]:
            return [p for p in self.thread.router.iter_pools() if p.key.port == port]

        return self.thread.call(pools())


async def _add_tenants(
    config: RouterConfig, topology: Topology, tenants: list[str], shard: str | None
) -> dict[str, str]:
    return {t: (await add_tenant(config, topology, t, "shared", shard)).shard for t in tenants}


async def _catalog_pins(config: RouterConfig) -> dict[str, str | None]:
    async with CatalogStore(config.catalog.dsn, config.catalog.schema) as store:
        return {t.id: t.shard for t in await store.list()}


@pytest.fixture
def start_router(
    pg_env: PgEnvironment, deployment: Deployment, shard_c: PgCluster, clean: None, tmp_path: Path
) -> Iterator[Callable[..., Running]]:
    """start_router(shards_doc, pool=..., reads=..., reload=...): a RouterThread on this module's catalog
    (`deployment` provides the shared items table on the session's shards)."""
    started: list[RouterThread] = []

    def factory(doc: dict[str, Any], pool: dict[str, Any] | None = None, **sections: Any) -> Running:
        directory = tmp_path / f"router{len(started)}"
        path = write_configs(directory, pg_env, pool=pool, extra=_extra(pg_env, **sections))
        (directory / "shards.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        config, topology = load(path)
        thread = RouterThread(config, topology).start()
        started.append(thread)
        return Running(thread, config, [*pg_env.shards.values(), shard_c])

    yield factory
    for thread in started:
        thread.stop()


def own_rows(running: Running, tenant: str) -> tuple[list[str], int]:
    """The item names `tenant` sees through the router, and the port of the server that answered."""
    with psycopg.connect(running.url(tenant), autocommit=True) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM items ORDER BY id")]
        port = conn.execute("SELECT inet_server_port()").fetchone()
        assert port is not None
        return names, int(port[0])


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("shards.yaml reloaded")]


# --- 1. reloads under load -----------------------------------------------------------------------

BENCH_SCRIPT = """\
SELECT 1;
SELECT count(*) FROM items;
BEGIN;
INSERT INTO items (name) VALUES ('rl-bench');
SELECT count(*) FROM items;
COMMIT;
"""


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_reloads_under_pgbench_fail_no_transaction(
    start_router: Callable[..., Running],
    pg_env: PgEnvironment,
    shard_c: PgCluster,
    replica_a: PgCluster,
    tmp_path: Path,
    protocol: str,
) -> None:
    base = shards_doc(pg_env)
    heavier_a = shards_doc(pg_env, weights={"shard_a": 2})
    with_c = shards_doc(pg_env, weights={"shard_a": 2}, extra={"shard_c": shard_c})
    with_replica = shards_doc(
        pg_env, weights={"shard_a": 2}, extra={"shard_c": shard_c}, replicas={"shard_a": [replica_a]}
    )
    # Fewer server connections than clients: clients are often in line when a pool goes.
    running = start_router(base, pool={"size": 4}, reads={"mode": "auto", "read_your_writes": "off"})
    topologies = [running.topology, *(load_topology(_dump(tmp_path, d)) for d in (heavier_a, with_c))]

    # pgbench's tenant lives on shard_a and is one the third shard would take: it is pinned (to
    # shard_a) by the reload that adds shard_c while pgbench runs, and reads from shard_a's replica.
    bench_tenant = next(
        t
        for t in (f"rl_bench{i:03d}" for i in range(500))
        if [hashed(topology, t) for topology in topologies] == ["shard_a", "shard_a", "shard_c"]
    )
    others = [f"rl_t{i:03d}" for i in range(1, 31)]
    running.add_tenants([bench_tenant, *others])

    script = tmp_path / "bench.sql"
    script.write_text(BENCH_SCRIPT)
    pgbench = find_pg_bin_dir() / "pgbench"
    command = [str(pgbench), "-n", "-c", "8", "-j", "2", "-T", "9", "-M", protocol, "-f", str(script)]
    command += ["--failures-detailed", "-h", "127.0.0.1", "-p", str(running.thread.port)]
    command += ["-U", f"{APP_USER}.{bench_tenant}", "app"]
    bench = subprocess.Popen(
        command,
        env={**os.environ, "PGPASSWORD": APP_PASSWORD},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def served_by_shard_a() -> int:
        return sum(p.transactions for p in running.pools_on(pg_env.shards["shard_a"].port))

    def under_load(when: str) -> None:
        """Until pgbench has run 50 more transactions through the router: the reload just applied
        (`reload()` returns once it is) has traffic in flight on both sides of it."""
        floor = served_by_shard_a() + 50
        wait_until(served_by_shard_a, f"50 pgbench transactions {when}", within=10.0, until=lambda n: n >= floor)

    try:
        under_load("before the first reload")
        assert running.write(heavier_a).shards["shard_a"].weight == 2
        assert running.reload()
        under_load("with shard_a's weight doubled")
        running.write(with_c)
        assert running.reload()
        assert running.pins()[bench_tenant] == "shard_a"
        under_load("with shard_c added")
        running.write(with_replica)
        assert running.reload()
        # Reads reach the replica before it is taken away again.
        wait_until(
            lambda: sum(p.transactions for p in running.pools_on(replica_a.port)) > 20,
            "reads on the added replica",
            within=4.0,
        )
        running.write(with_c)
        assert running.reload()
        assert running.topology.shards["shard_a"].replicas == ()
        under_load("with the replica gone")
        # shard_c holds no tenant (those it would take are pinned): it may go again, with the weight.
        running.write(base)
        assert running.reload()
        assert bench.poll() is None, "pgbench ended before the last reload: the test proves nothing"
        out, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
    report = f"pgbench exit {bench.returncode}\n{out}\n{err}"
    assert bench.returncode == 0, report
    assert "aborted" not in err, report
    assert re.search(r"number of failed transactions: 0 \(", out), report
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    assert processed is not None and int(processed.group(1)) > 200, report
    assert running.topology.shards.keys() == {"shard_a", "shard_b"}
    # No pool is left for the removed replica or the removed shard.
    assert running.pools_on(replica_a.port) == []
    assert running.pools_on(shard_c.port) == []


def _dump(directory: Path, doc: dict[str, Any]) -> Path:
    path = directory / f"shards-{len(list(directory.glob('shards-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- 2. a shard added: moved tenants stay where their data is ------------------------------------


def test_tenants_a_new_shard_would_take_are_pinned_to_their_old_shard(
    start_router: Callable[..., Running],
    pg_env: PgEnvironment,
    shard_c: PgCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="router.ops.live_reload")
    running = start_router(shards_doc(pg_env))
    old = running.topology
    tenants = [f"rl_t{i:03d}" for i in range(1, 41)]
    placed = running.add_tenants(tenants)
    assert set(placed.values()) == {"shard_a", "shard_b"}
    for tenant in tenants[:3]:
        assert own_rows(running, tenant)[0] == [f"row of {tenant}"]

    new = running.write(shards_doc(pg_env, extra={"shard_c": shard_c}))
    moving = {t: placed[t] for t in tenants if hashed(new, t) != hashed(old, t)}
    assert 3 <= len(moving) < len(tenants)
    assert all(hashed(new, t) == "shard_c" for t in moving)  # adding a shard only takes tenants

    assert running.reload()
    assert running.topology is not old and "shard_c" in running.topology.shards

    # The catalog pins exactly the moved tenants, each to the shard that holds its data.
    assert running.pins() == {t: moving.get(t) for t in tenants}
    for tenant, shard in list(moving.items())[:3]:
        view = asyncio.run(show_tenant(running.config, new, tenant))
        assert (view.shard, view.reason) == (shard, "catalog pin")
    # ... and so does the router's own cache, at once.
    for tenant, shard in moving.items():
        record = running.thread.router.catalog.get(tenant)
        assert record is not None and record.shard == shard

    # Every tenant, moved or not, still sees its own row, served by the shard that holds it.
    ports = {name: cluster.port for name, cluster in pg_env.shards.items()}
    for tenant in tenants:
        names, port = own_rows(running, tenant)
        assert names == [f"row of {tenant}"], tenant
        assert port == ports[placed[tenant]], tenant

    summary = summaries(caplog)
    assert len(summary) == 1, caplog.text
    assert "added shard_c" in summary[0]
    assert f"{len(moving)} tenants now map to another shard" in summary[0], summary[0]

    # A tenant added now is placed on the new ring like any other: on shard_c, without a pin.
    newcomer = next(t for t in (f"rl_new{i:03d}" for i in range(200)) if hashed(new, t) == "shard_c")
    view = asyncio.run(add_tenant(running.config, new, newcomer, "shared"))
    assert (view.shard, view.reason) == ("shard_c", "hashed")
    wait_until(
        lambda: running.thread.router.catalog.get(newcomer) is not None, "the router hears of the tenant", within=3.0
    )
    with psycopg.connect(running.url(newcomer), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('newcomer row')")
        assert conn.execute("SELECT inet_server_port()").fetchone() == (shard_c.port,)
    assert shard_c.execute(f"SELECT name FROM items WHERE tenant_id = '{newcomer}'", dbname=SHARD_DB) == "newcomer row"
    assert running.pins()[newcomer] is None


# --- 3. invalid reloads change nothing ------------------------------------------------------------


def _broken_docs(env: PgEnvironment) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Broken shards.yaml documents, each with words its problem lines must contain."""
    unknown_key = shards_doc(env)
    unknown_key["shards"]["shard_a"]["wieght"] = 2
    bad_port = shards_doc(env)
    bad_port["shards"]["shard_b"]["primary"]["port"] = 70000
    unknown_pin = shards_doc(env)
    unknown_pin["pins"] = {"rl_t001": "shard_zz"}
    both = shards_doc(env)
    both["shards"]["shard_a"]["wieght"] = 2
    both["shards"]["shard_b"]["primary"]["port"] = 70000
    return {
        "unknown key": (unknown_key, ["wieght"]),
        "bad port": (bad_port, ["port"]),
        "pin to an unknown shard": (unknown_pin, ["rl_t001", "shard_zz"]),
        "two problems": (both, ["wieght", "port"]),
    }


def _check_cli(config: RouterConfig) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", str(config.path), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_invalid_reload_changes_nothing(
    start_router: Callable[..., Running], pg_env: PgEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.ops.live_reload")
    running = start_router(shards_doc(pg_env))
    before = running.topology
    tenants = [f"rl_t{i:03d}" for i in range(1, 11)]
    placed = running.add_tenants(tenants)
    placed.update(running.add_tenants(["rl_onb"], shard="shard_b"))
    original = running.shards_file.read_text()
    # A client connected before the failed reloads keeps working through them.
    with psycopg.connect(running.url("rl_t001"), autocommit=True) as conn:
        for case, (doc, words) in _broken_docs(pg_env).items():
            caplog.clear()
            running.shards_file.write_text(yaml.safe_dump(doc, sort_keys=False))
            assert running.reload() is False, case
            assert running.topology is before, case

            cli = _check_cli(running.config)
            assert cli.returncode == 2, f"{case}: {cli.stdout}{cli.stderr}"
            cli_lines = cli.stderr.splitlines()
            assert re.fullmatch(r"\d+ problem\(s\) found; nothing was started", cli_lines[-1]), cli.stderr
            problems = cli_lines[:-1]
            assert problems and all(word in "\n".join(problems) for word in words), (case, problems)

            errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "router.ops.live_reload"]
            assert len(errors) == 1, f"{case}: {caplog.text}"
            header, *logged = errors[0].getMessage().splitlines()
            assert "reload rejected" in header
            assert logged == problems, case
            assert summaries(caplog) == []

            assert conn.execute("SELECT name FROM items").fetchall() == [("row of rl_t001",)], case
            for tenant in ("rl_t002", "rl_onb"):
                assert own_rows(running, tenant)[0] == [f"row of {tenant}"], case

        # Valid, but shard_b still holds tenants (rl_onb pinned there, others hashed there).
        caplog.clear()
        running.write({"ring": {"vnodes": 160}, "shards": {"shard_a": shards_doc(pg_env)["shards"]["shard_a"]}})
        assert _check_cli(running.config).returncode == 0  # nothing wrong with the file itself
        assert running.reload() is False
        assert running.topology is before
        rejected = [
            r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "router.ops.live_reload"
        ]
        on_b = sorted(t for t, shard in placed.items() if shard == "shard_b")
        assert len(rejected) == 1, caplog.text
        assert f"shard shard_b is removed from shards.yaml but still holds {len(on_b)} tenants" in rejected[0]
        assert "rl_onb" in rejected[0] or "more" in rejected[0]
        assert summaries(caplog) == []
        assert conn.execute("SELECT name FROM items").fetchall() == [("row of rl_t001",)]
        assert own_rows(running, "rl_onb") == (["row of rl_onb"], pg_env.shards["shard_b"].port)

    # Nothing was pinned by the rejected reloads, and the original file still loads as before.
    assert running.pins() == {t: ("shard_b" if t == "rl_onb" else None) for t in placed}
    running.shards_file.write_text(original)
    assert running.reload()
    assert summaries(caplog)[-1] == "shards.yaml reloaded: no changes"


# --- 4. a removed server drains ------------------------------------------------------------------


def _router_backends(cluster: PgCluster, role: str) -> int:
    return int(cluster.execute(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"))


def test_a_removed_replica_drains(
    start_router: Callable[..., Running], pg_env: PgEnvironment, replica_a: PgCluster
) -> None:
    with_replica = shards_doc(pg_env, replicas={"shard_a": [replica_a]})
    running = start_router(with_replica, reads={"mode": "explicit"})
    running.add_tenants(["rl_reader"], shard="shard_a")
    role = pg_env.ROUTER_ROLE
    replayed = "SELECT count(*) FROM items WHERE tenant_id = 'rl_reader'"
    wait_until(
        lambda: replica_a.execute(replayed, dbname=SHARD_DB) == "1", "the replica replays the tenant's row", within=5.0
    )

    with psycopg.connect(running.url("rl_reader"), autocommit=True) as conn:

        def read_only_on_replica() -> bool:
            conn.execute("BEGIN READ ONLY")
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row == (True,):
                return True
            conn.execute("ROLLBACK")
            return False

        wait_until(read_only_on_replica, "a read-only transaction on the replica", within=5.0)
        # In a transaction on the replica: idle pooled connections beside it go at the reload.
        assert conn.execute("SELECT inet_server_port()").fetchone() == (replica_a.port,)
        assert _router_backends(replica_a, role) >= 1

        assert running.write(shards_doc(pg_env)).shards["shard_a"].replicas == ()
        assert running.reload()
        assert running.pools_on(replica_a.port) == []  # no new transaction can start there

        # The transaction in flight finishes where it began.
        assert conn.execute("SELECT name FROM items").fetchall() == [("row of rl_reader",)]
        assert conn.execute("SELECT inet_server_port()").fetchone() == (replica_a.port,)
        conn.execute("COMMIT")

        # Then the replica sees no connection of the router any more (pool and health checks).
        wait_until(
            lambda: _router_backends(replica_a, role) == 0, "the router's connections to the replica close", within=5.0
        )

        # The next read-only transaction runs on the primary.
        conn.execute("BEGIN READ ONLY")
        assert conn.execute("SELECT pg_is_in_recovery(), inet_server_port()").fetchone() == (
            False,
            pg_env.shards["shard_a"].port,
        )
        conn.execute("COMMIT")


# --- 5. the file watcher -------------------------------------------------------------------------


def test_the_file_watcher_applies_an_edit(
    start_router: Callable[..., Running], pg_env: PgEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.ops.live_reload")
    running = start_router(shards_doc(pg_env), reload={"watch": True, "watch_interval": 0.2})
    running.add_tenants([f"rl_t{i:03d}" for i in range(1, 11)])
    # The watcher's baseline is the file as written, and the edit keeps its size: it shows only in
    # the mtime, so the file system's clock must have moved past the baseline's first.
    baseline = running.shards_file.stat().st_mtime_ns
    clock_probe = running.shards_file.with_name("mtime-probe")

    def file_clock() -> int:
        clock_probe.touch()
        return clock_probe.stat().st_mtime_ns

    wait_until(file_clock, "the file system's clock to pass the baseline", within=5.0, until=lambda t: t > baseline)
    running.write(shards_doc(pg_env, weights={"shard_b": 3}), in_place=True)
    wait_until(lambda: running.topology.shards["shard_b"].weight == 3, "the watcher applies the edit", within=2.0)
    wait_until(lambda: len(summaries(caplog)) == 1, "the reload summary", within=1.0)
    assert "weights shard_b 1->3" in summaries(caplog)[0]
    # Once applied, an unchanged file is not reloaded again.
    time.sleep(0.8)  # elapsed time is the point: four more polls of the watcher (every 0.2 s) find no change
    assert len(summaries(caplog)) == 1, caplog.text


# --- 6. `tenant-router reload` against `tenant-router serve` -------------------------------------


class ServeProcess:
    """`python -m router.cli --config FILE serve`, its output in a log file; stopped by `stop`."""

    def __init__(self, config: RouterConfig, workers: int) -> None:
        self.config = config
        self.workers = workers
        self.log_path = config.path.parent / "serve.log"
        self._log: IO[str] = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "--config", str(config.path), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        self.seen: set[int] = {self.proc.pid}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def failure(self, what: str) -> str:
        return f"{what}\n--- {self.log_path} ---\n{self.log()[-6000:]}"

    def descendants(self) -> set[int]:
        found = set(process_tree(self.proc.pid)) - {self.proc.pid}
        self.seen |= found
        return found

    def wait_ready(self) -> None:
        """Until every worker logged that it listens (its SIGHUP handler follows at once) and the
        pid file names the process `tenant-router reload` must signal."""
        pid_file = pid_file_path(self.config)

        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(self.failure(f"the router exited with {self.proc.returncode} before it was ready"))
            listening = len(re.findall(r"listening on 127\.0\.0\.1:\d+", self.log()))
            return listening >= self.workers and read_pid_file(pid_file) == self.proc.pid and _accepts(self.config)

        # A worker's SIGHUP stays blocked until its handler is in place, so ready means ready.
        wait_until(
            ready,
            lambda: self.failure("the router to be ready"),
            within=SERVE_READY_TIMEOUT,
            ignoring=(ValueError,),
            interval=0.05,
        )
        self.descendants()

    def stop(self) -> list[str]:
        """SIGTERM and wait; SIGKILL whatever is left. Returns what went wrong."""
        problems: list[str] = []
        if self.proc.poll() is None:
            self.descendants()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            if self.proc.returncode != 0:
                problems.append(f"exit code {self.proc.returncode} on SIGTERM")
        else:
            problems.append(f"the router exited by itself with {self.proc.returncode}")
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: not any(alive(pid) for pid in self.seen), "the router's processes to exit", within=5)
        leftovers = sorted(pid for pid in self.seen if alive(pid))
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            problems.append(f"processes {leftovers} outlived the router")
        if pid_file_path(self.config).exists():
            problems.append(f"the pid file {pid_file_path(self.config)} was left behind")
        self._log.close()
        return problems


def _accepts(config: RouterConfig) -> bool:
    try:
        socket.create_connection((config.listen.host, config.listen.port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("workers", [1, 2])
def test_tenant_router_reload_signals_a_serving_router(
    pg_env: PgEnvironment, deployment: Deployment, clean: None, tmp_path: Path, workers: int
) -> None:
    port = free_port()
    path = write_configs(tmp_path, pg_env, listen_port=port, extra=_extra(pg_env, workers=workers))
    (tmp_path / "shards.yaml").write_text(yaml.safe_dump(shards_doc(pg_env), sort_keys=False))
    config, old = load(path)
    assert not pid_file_path(config).exists(), f"another router uses port {port}"
    tenants = [f"rl_t{i:03d}" for i in range(1, 21)]
    placed = asyncio.run(_add_tenants(config, old, tenants, None))

    serving = ServeProcess(config, workers)
    clients: list[psycopg.Connection[Any]] = []
    try:
        serving.wait_ready()
        router_url = f"postgresql://{APP_USER}.{{}}:{APP_PASSWORD}@127.0.0.1:{port}/app"
        for tenant in tenants[:6]:
            clients.append(psycopg.connect(router_url.format(tenant), autocommit=True))
            assert clients[-1].execute("SELECT current_setting('app.tenant_id')").fetchone() == (tenant,)

        (tmp_path / "shards.yaml").write_text(yaml.safe_dump(shards_doc(pg_env, weights={"shard_a": 3})))
        new = load_topology(tmp_path / "shards.yaml")
        moving = {t: placed[t] for t in tenants if hashed(new, t) != hashed(old, t)}
        assert moving

        reload = subprocess.run(
            [sys.executable, "-m", "router.cli", "--config", str(path), "reload"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert reload.returncode == 0, reload.stdout + reload.stderr
        assert f"reload signalled to pid {serving.proc.pid}" in reload.stdout, reload.stdout

        def reloaded() -> int:
            return len(
                re.findall(r"router\.ops\.live_reload: shards\.yaml reloaded: .*weights shard_a 1->3", serving.log())
            )

        wait_until(
            lambda: reloaded() >= workers, lambda: serving.failure("every worker logs the reload summary"), within=10.0
        )
        assert f"{len(moving)} tenants now map to another shard" in serving.log(), serving.failure("summary")
        assert "reload rejected" not in serving.log(), serving.failure("a rejected reload")

        # The moved tenants were pinned, once, to where their data is.
        assert asyncio.run(_catalog_pins(config)) == {t: moving.get(t) for t in tenants}

        # Clients connected before the reload are still connected, and still served.
        for tenant, conn in zip(tenants, clients, strict=False):
            assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == (tenant,)
            port_row = conn.execute("SELECT inet_server_port()").fetchone()
            assert port_row == (pg_env.shards[placed[tenant]].port,), tenant
        # And new ones too, the moved tenants on their old shard.
        for tenant in list(moving)[:3]:
            with psycopg.connect(router_url.format(tenant), autocommit=True) as conn:
                assert conn.execute("SELECT inet_server_port()").fetchone() == (pg_env.shards[placed[tenant]].port,)
    finally:
        for conn in clients:
            conn.close()
        problems = serving.stop()
    assert problems == [], serving.failure("; ".join(problems))
    assert "shutting down" in serving.log()


def test_a_reload_while_workers_start_kills_no_worker(
    pg_env: PgEnvironment, deployment: Deployment, clean: None, tmp_path: Path
) -> None:
    """The supervisor's pid file exists as soon as it has spawned its workers, before they can
    handle SIGHUP: a reload then must reach them once they can, not kill them."""
    port = free_port()
    path = write_configs(tmp_path, pg_env, listen_port=port, extra=_extra(pg_env, workers=2))
    (tmp_path / "shards.yaml").write_text(yaml.safe_dump(shards_doc(pg_env), sort_keys=False))
    config, _topology = load(path)
    assert not pid_file_path(config).exists(), f"another router uses port {port}"
    serving = ServeProcess(config, 2)
    try:
        wait_until(
            lambda: pid_file_path(config).exists(), lambda: serving.failure("pid file"), within=SERVE_READY_TIMEOUT
        )
        os.kill(serving.proc.pid, signal.SIGHUP)  # what `tenant-router reload` does
        serving.wait_ready()
        wait_until(
            lambda: len(re.findall(r"router\.ops\.live_reload: shards\.yaml reloaded", serving.log())) >= 2,
            lambda: serving.failure("both workers reload once they can"),
            within=10.0,
        )
        assert "died" not in serving.log(), serving.failure("a worker died")
    finally:
        problems = serving.stop()
    assert problems == [], serving.failure("; ".join(problems))
