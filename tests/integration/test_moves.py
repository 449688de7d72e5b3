"""Online tenant moves end to end (issue 17's tests): real PostgreSQL, real routers, real clients.

This module runs on an environment of its own (a catalog and three shards with wal_level =
logical), so its moves never disturb other modules. The shards have the hardened deployment of
router/testing/deploy.py: a context secret, the admin-owned shared `items` protected by `rls
enable`, schema and database tenants with their own roles and `items`. Tenants are added with the
real admin path (`tenants add`), with fresh ids per test.

Each test is one of the issue's list:
1. a move under load, per isolation model (a writer and a reader through the router throughout;
   router/testing/moveload.py audits what they were acknowledged against both shards);
2. 100 tenants move while 1,000 others keep running traffic: only movers are ever held;
3. `tenants move` SIGKILLed in each stage, then `rebalance apply` resumes it to an end;
4. a router instance SIGSTOPped during the cutover: the hold is not acknowledged, the move retries;
5. scale out from 2 to 3 shards: the plan is exactly the ring's moves, and `apply` carries it out;
6. a shard drained by weight 0;
7. a target without wal_level = logical is refused, and nothing changes.

Tests 2, 5, 6 and 7 use a catalog schema of their own (`Site`), with a shards.yaml of their own and
their own router: a change of shards.yaml there moves no tenant of another test. Tests 1, 3 and 4
share the module's site (catalog schema tenant_router) and its router.
"""

from __future__ import annotations

import asyncio
import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest
import yaml
from psycopg.rows import dict_row

import router
from router.admin.tenant_admin import add_tenant, init_catalog
from router.core.hashing import Ring
from router.core.topology import Topology, load_topology
from router.rebalance.apply import STALE_OWNER, move_tenant
from router.testing.deploy import install_shared_table, load, write_configs
from router.testing.moveload import (
    Bystander,
    Expected,
    Isolation,
    MovedTenant,
    Reader,
    Writer,
    audit,
    replication_leftovers,
    router_rows,
    rows_on,
    running,
    seed_rows,
    tenant_url,
)
from router.testing.pgcluster import (
    SHARD_DB,
    PgCluster,
    PgEnvironment,
    free_port,
    start_cluster,
    start_environment,
    stop_clusters_under,
)
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT: Final = Path(router.__file__).resolve().parent.parent
DEFAULT_SCHEMA: Final = "tenant_router"
SHARDS: Final = ("shard_a", "shard_b", "shard_c")
MAX_HOLD: Final = 2.0
CLI_TIMEOUT: Final = 120.0
STALE_OWNER_WAIT: Final = STALE_OWNER + 10.0
PAUSE_ENV: Final = "TENANT_ROUTER_MOVE_PAUSE"
FINISHED: Final = ("cleaned", "aborted")


# --- the module's environment ------------------------------------------------------------------


@pytest.fixture(scope="module")
def env() -> Iterator[PgEnvironment]:
    """A catalog cluster and shards shard_a, shard_b, shard_c of this module alone (the harness
    starts them with what moves need: wal_level = logical, free replication slots and workers)."""
    base_dir = Path(tempfile.mkdtemp(prefix="tenant-router-moves-", dir="/tmp"))
    base_dir.chmod(0o755)

    def remove() -> None:
        stop_clusters_under(base_dir)
        shutil.rmtree(base_dir, ignore_errors=True)

    atexit.register(remove)
    try:
        environment = start_environment(base_dir, shard_count=len(SHARDS))
        try:
            yield environment
        finally:
            environment.stop()
    finally:
        remove()
        atexit.unregister(remove)


def shards_doc(clusters: dict[str, PgCluster], weights: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "ring": {"vnodes": 160},
        "shards": {
            name: {
                "weight": (weights or {}).get(name, 1),
                "primary": {"host": cluster.host, "port": cluster.port, "dbname": SHARD_DB},
            }
            for name, cluster in clusters.items()
        },
    }


@dataclass
class Site:
    """A deployment on the module's clusters with its own catalog schema: router.yaml and
    shards.yaml in `directory`, and the commands an operator would run."""

    env: PgEnvironment
    directory: Path
    schema: str
    clusters: dict[str, PgCluster]  # every cluster a shards.yaml of this site may name

    @property
    def config_path(self) -> Path:
        return self.directory / "router.yaml"

    @property
    def shards_path(self) -> Path:
        return self.directory / "shards.yaml"

    def load(self) -> tuple[Any, Topology]:
        return load(self.config_path)

    def topology(self) -> Topology:
        return load_topology(self.shards_path)

    def write_shards(self, doc: dict[str, Any]) -> Topology:
        tmp = self.shards_path.with_name(".shards.yaml.tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, self.shards_path)
        return self.topology()

    def cluster(self, shard: str) -> PgCluster:
        return self.clusters[shard]

    # the commands

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "router.cli", "--config", str(self.config_path), *args]

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [environ.get("PYTHONPATH")])])
        environ.update(extra or {})
        return environ

    def cli(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT) -> Done:
        started = time.monotonic()
        result = subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.process_env(extra_env),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
        )
        return Done(list(args), result.returncode, result.stdout, result.stderr, time.monotonic() - started)

    def start_cli(self, *args: str, extra_env: dict[str, str] | None = None) -> Started:
        log_path = self.directory / f"cli-{time.monotonic_ns()}.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            self.command(*args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.process_env(extra_env),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return Started(list(args), proc, log_path)

    # the catalog

    def catalog(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.env.catalog_dsn(), autocommit=True)

    def moves(self, tenant: str) -> list[dict[str, Any]]:
        with self.catalog() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"SELECT move_id, stage, source, target, pin, attempts, last_error, rows_copied, bytes_copied,"
                f" hold_seconds FROM {self.schema}.moves WHERE tenant_id = %s ORDER BY move_id",
                (tenant,),
            )
            return list(cur.fetchall())

    def stage(self, tenant: str) -> str | None:
        moves = self.moves(tenant)
        return moves[-1]["stage"] if moves else None

    def holds(self, tenant: str) -> list[str]:
        """The reasons of the tenant's holds in the catalog."""
        with self.catalog() as conn:
            return [
                r[0] for r in conn.execute(f"SELECT reason FROM {self.schema}.holds WHERE tenant_id = %s", (tenant,))
            ]

    def pins(self) -> dict[str, str | None]:
        with self.catalog() as conn:
            return {r[0]: r[1] for r in conn.execute(f"SELECT id, shard FROM {self.schema}.tenants")}

    def reload_pins(self) -> dict[str, str]:
        with self.catalog() as conn:
            return {r[0]: r[1] for r in conn.execute(f"SELECT tenant_id, shard FROM {self.schema}.reload_pins")}

    def open_moves(self) -> list[tuple[Any, ...]]:
        with self.catalog() as conn:
            finished = ", ".join(f"'{s}'" for s in FINISHED)
            return list(
                conn.execute(
                    f"SELECT move_id, tenant_id, stage, last_error FROM {self.schema}.moves"
                    f" WHERE stage NOT IN ({finished}) ORDER BY move_id"
                )
            )

    # tenants

    def add(self, tenants: list[tuple[str, Isolation]], shard: str | None = None, parallel: int = 8) -> dict[str, str]:
        """`tenants add` each (pinned to `shard` if given) through the admin path; tenant -> shard."""
        config, topology = self.load()

        async def add_all() -> dict[str, str]:
            gate = asyncio.Semaphore(parallel)

            async def one(tenant: str, isolation: Isolation) -> tuple[str, str]:
                async with gate:
                    return tenant, (await add_tenant(config, topology, tenant, isolation, shard)).shard

            return dict(await asyncio.gather(*(one(t, i) for t, i in tenants)))

        return asyncio.run(add_all())

    def leftovers(self) -> dict[str, list[str]]:
        """Replication slots, subscriptions and publications on every cluster of the site."""
        found = {name: replication_leftovers(cluster) for name, cluster in self.clusters.items()}
        return {name: items for name, items in found.items() if items}


@dataclass
class Done:
    """A finished command."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"`{' '.join(self.args)}` exited {self.returncode} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


@dataclass
class Started:
    """A command running in the background, its output in a log file."""

    args: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __str__(self) -> str:
        return f"`{' '.join(self.args)}` (pid {self.proc.pid}, exit {self.proc.poll()})\n{self.output()[-4000:]}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def make_site(env: PgEnvironment, directory: Path, schema: str, clusters: dict[str, PgCluster], **extra: Any) -> Site:
    """router.yaml and shards.yaml (every cluster of `clusters`, weight 1) for catalog schema
    `schema`, with that schema created; `extra` sections are merged into router.yaml's."""
    sections: dict[str, Any] = {
        "catalog": {"dsn": env.catalog_dsn(), "schema": schema, "refresh_interval": 5.0},
        "reload": {"watch": False},
        "rebalance": {"max_hold": MAX_HOLD},
    }
    for name, value in extra.items():
        sections[name] = {**sections.get(name, {}), **value}
    write_configs(directory, env, http_port=free_port(), extra=sections)
    site = Site(env, directory, schema, clusters)
    site.write_shards(shards_doc(clusters))
    asyncio.run(init_catalog(site.load()[0]))
    return site


@pytest.fixture(scope="module")
def base(env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The module's site (catalog schema tenant_router, shards a, b and c), with the shared
    `items` table on every shard, protected by `rls enable`."""
    site = make_site(env, tmp_path_factory.mktemp("moves"), DEFAULT_SCHEMA, dict(env.shards))
    asyncio.run(install_shared_table(*site.load()))
    return site


@pytest.fixture(scope="module")
def base_router(base: Site) -> Iterator[RouterThread]:
    thread = RouterThread(*base.load()).start()
    yield thread
    thread.stop()


@pytest.fixture
def own_site(env: PgEnvironment, base: Site, tmp_path: Path, request: pytest.FixtureRequest) -> Site:
    """A site with a catalog schema of the test's own (named after it), on shards a, b and c."""
    schema = "mv_" + request.node.name.removeprefix("test_").split("[")[0][:40].replace("-", "_")
    return make_site(env, tmp_path / "site", schema, dict(env.shards))


@pytest.fixture
def routers() -> Iterator[list[RouterThread]]:
    """Routers a test starts (append them); stopped afterwards."""
    started: list[RouterThread] = []
    yield started
    for thread in started:
        thread.stop()


def start_router(site: Site, routers: list[RouterThread]) -> RouterThread:
    thread = RouterThread(*site.load()).start()
    routers.append(thread)
    return thread


def other_shard(shard: str) -> str:
    return SHARDS[(SHARDS.index(shard) + 1) % len(SHARDS)]


def leftover_problems(site: Site) -> list[str]:
    """Logical replication objects on any shard of the site, and moves left open."""
    problems = [f"left behind on {shard}: {items}" for shard, items in site.leftovers().items()]
    return problems + [f"move left open: {move}" for move in site.open_moves()]


def assert_no_leftovers(site: Site) -> None:
    assert leftover_problems(site) == []


def finished_move(site: Site, tenant: str) -> dict[str, Any]:
    moves = site.moves(tenant)
    assert moves, f"no move of {tenant} in the catalog"
    return moves[-1]


# --- 1. a move under load, in each isolation model ------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("isolation", ["shared", "schema", "database"])
def test_move_under_load(base: Site, base_router: RouterThread, isolation: Isolation) -> None:
    tenant = f"mv-load-{isolation}"
    source = base.add([(tenant, isolation)])[tenant]
    target = other_shard(source)
    source_cluster, target_cluster = base.cluster(source), base.cluster(target)
    url = tenant_url(base_router.port, tenant)
    writer = Writer(url)
    reader = Reader(url, writer)
    with running(writer, reader):
        writer.wait_for(40)
        moved = base.cli("tenants", "move", tenant, "--to", target)
        if moved.returncode == 0:
            writer.wait_for(40)  # and now on the target
    assert moved.returncode == 0, str(moved)
    move = finished_move(base, tenant)
    problems = [*writer.errors, *reader.errors]
    moved_tenant = MovedTenant(tenant, isolation, source_cluster, target_cluster)
    problems += audit(moved_tenant, writer.expected(), base_router.port)
    if base.pins()[tenant] != target:
        problems.append(f"the catalog pins {tenant} to {base.pins()[tenant]}, not to its target {target}")
    if (move["stage"], move["source"], move["target"]) != ("cleaned", source, target):
        problems.append(f"the move in the catalog: {move}")
    # Its traffic went to the source, then to the target, and never back.
    for client in (writer, reader):
        if client.ports.ports() != [source_cluster.port, target_cluster.port]:
            problems.append(
                f"{client.name} ran on ports {client.ports.runs}, not {source_cluster.port} then {target_cluster.port}"
            )
    if base_router.call(_held_ever(base_router)).get(tenant, 0) < 1:
        problems.append(f"the router never held {tenant} (its cutover did not go through this router's holds)")
    problems += leftover_problems(base)
    print(
        f"{tenant}: moved in {moved.seconds:.1f}s; {writer.transactions} write transactions (slowest"
        f" {writer.slowest * 1000:.0f} ms), {reader.reads} reads; {move}"
    )
    assert problems == []


# --- 2. others are not held -----------------------------------------------------------------------

MOVERS: Final = 100
BYSTANDERS: Final = 1000
BYSTANDER_THREADS: Final = 4
MOVE_CONCURRENCY: Final = 4
ROWS_PER_MOVER: Final = 3


@pytest.mark.timeout(420)
def test_only_moving_tenants_are_held(own_site: Site, routers: list[RouterThread]) -> None:
    site = own_site
    movers = [f"mv-go-{i:03d}" for i in range(MOVERS)]
    bystanders = [f"mv-by-{i:04d}" for i in range(BYSTANDERS)]
    placed = site.add([(t, "shared") for t in movers + bystanders], parallel=16)
    for tenant in movers:
        seed_rows(site.cluster(placed[tenant]), tenant, "shared", ROWS_PER_MOVER)
    thread = start_router(site, routers)
    config, topology = site.load()
    clients = [
        Bystander(thread.port, bystanders[i::BYSTANDER_THREADS], name=f"bystander{i}") for i in range(BYSTANDER_THREADS)
    ]

    async def move_all() -> list[Any]:
        gate = asyncio.Semaphore(MOVE_CONCURRENCY)

        async def one(tenant: str) -> Any:
            async with gate:
                return await move_tenant(config, topology, tenant, other_shard(placed[tenant]))

        return await asyncio.gather(*(one(t) for t in movers), return_exceptions=True)

    with running(*clients):
        wait_until(
            lambda: sum(len(c.served()) for c in clients) == BYSTANDERS,
            "every bystander to have run a transaction",
            within=60,
            interval=0.1,
        )
        before = Counter[str]()
        for client in clients:
            before.update(client.served())
        started = time.monotonic()
        outcomes = asyncio.run(move_all())
        took = time.monotonic() - started
        during = Counter[str]()
        for client in clients:
            during.update(client.served())
        during.subtract(before)
    failures = [f"{t}: {_failure(o)}" for t, o in zip(movers, outcomes, strict=True) if _failure(o)]
    print(f"{MOVERS} moves at concurrency {MOVE_CONCURRENCY}: {took:.1f}s; others' transactions {sum(during.values())}")
    assert failures == [], f"{len(failures)} of the moves failed"
    errors = [e for c in clients for e in c.errors]
    assert errors == [], f"{len(errors)} errors of the other tenants' clients"
    idle = sorted(t for t in bystanders if during[t] <= 0)
    assert idle == [], f"{len(idle)} bystanders ran no transaction while the moves ran"

    held = thread.call(_held_ever(thread))
    assert held == holds_of(thread.http_port)["held_ever"], "GET /holds disagrees with the router's records"
    assert set(held) == set(movers), (
        f"held but not moving: {sorted(set(held) - set(movers))[:10]}; moving, never held here:"
        f" {sorted(set(movers) - set(held))[:10]}"
    )
    problems = [
        p
        for t in movers
        for p in audit(
            MovedTenant(t, "shared", site.cluster(placed[t]), site.cluster(other_shard(placed[t]))),
            Expected.seeded(ROWS_PER_MOVER),
            thread.port,
        )
    ]
    assert problems == []
    assert_no_leftovers(site)


def _failure(outcome: Any) -> str:
    """Why a directed move failed ('' if it finished)."""
    if isinstance(outcome, BaseException):
        return f"raised {type(outcome).__name__}: {outcome}"
    if outcome.ok and len(outcome.finished) == 1:
        return ""
    stopped = [f"stopped at {m.stage}: {why}" for m, why in outcome.failed]
    return "; ".join(stopped + [f"rolled back: {m.last_error}" for m in outcome.aborted]) or str(outcome)


async def _held_ever(thread: RouterThread) -> dict[str, int]:
    return dict(thread.router.holds.held_ever)


def holds_of(http_port: int) -> dict[str, Any]:
    """GET /holds of a router: {"held_now": [...], "held_ever": {tenant: times}}."""
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    try:
        conn.request("GET", "/holds")
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, body
        payload: dict[str, Any] = json.loads(body)
        return payload
    finally:
        conn.close()


# --- 3. kill and resume ---------------------------------------------------------------------------

# The stages a move records; the isolation model of the tenant killed in each, so that each model's
# resumption is exercised at some stage.
KILL_STAGES: Final = [
    ("copying", "shared"),
    ("catching_up", "schema"),
    ("holding", "database"),
    ("switched", "shared"),
    ("verified", "schema"),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("stage", "isolation"), KILL_STAGES)
def test_kill_and_resume(base: Site, base_router: RouterThread, stage: str, isolation: Isolation) -> None:
    tenant = f"mv-kill-{stage.replace('_', '-')}"
    source = base.add([(tenant, isolation)])[tenant]
    target = other_shard(source)
    url = tenant_url(base_router.port, tenant)
    writer = Writer(url)
    reader = Reader(url, writer)
    problems: list[str] = []
    with running(writer, reader):
        writer.wait_for(30)
        mover = base.start_cli("tenants", "move", tenant, "--to", target, extra_env={PAUSE_ENV: f"{stage}=120"})
        try:
            wait_until(
                lambda: base.stage(tenant) == stage or mover.proc.poll() is not None,
                lambda: f"the move of {tenant} to reach stage {stage}: {base.moves(tenant)}\n{mover}",
                within=90,
                interval=0.02,
            )
            assert mover.proc.poll() is None, f"the mover ended before it was killed in {stage}:\n{mover}"
        finally:
            mover.kill()
        holds_left = base.holds(tenant)  # whether the mover died holding the tenant
        killed_in = base.moves(tenant)[-1]
        assert killed_in["stage"] == stage, killed_in
        writer.wait_for(10, within=60)  # the tenant is served with its mover dead
        resumed = base.cli("rebalance", "apply")
        if finished_move(base, tenant)["stage"] not in FINISHED:
            # The killed run's heartbeat on its move is still fresh: this run left the move alone.
            problems.append(
                f"`rebalance apply` right after the kill left the move open: {finished_move(base, tenant)}\n{resumed}"
            )
            wait_until(
                lambda: owner_stale(base, killed_in["move_id"]),
                "the killed run's heartbeat on its move to be stale",
                within=STALE_OWNER_WAIT,
                interval=0.2,
            )
            resumed = base.cli("rebalance", "apply")
        writer.wait_for(30, within=90)
    if resumed.returncode != 0:
        problems.append(str(resumed))
    problems += [*writer.errors, *reader.errors]
    move = finished_move(base, tenant)
    if move["move_id"] != killed_in["move_id"]:
        problems.append(f"the resume made another move instead of ending the killed one: {base.moves(tenant)}")
    if move["stage"] not in FINISHED:
        problems.append(f"the move is not over: {move}")
    # Finished, it lives on the target; rolled back, on the source: either way on one shard only.
    lives, gone = (target, source) if move["stage"] == "cleaned" else (source, target)
    problems += audit(
        MovedTenant(tenant, isolation, base.cluster(gone), base.cluster(lives)), writer.expected(), base_router.port
    )
    expected_ports = [base.cluster(source).port] + ([base.cluster(target).port] if lives == target else [])
    if writer.ports.ports() != expected_ports:
        problems.append(f"the writer ran on ports {writer.ports.runs}, expected {expected_ports} in that order")
    status = base.cli("rebalance", "status", "--json")
    problems += status_problems(json.loads(status.stdout)) if status.returncode == 0 else [str(status)]
    problems += leftover_problems(base)
    print(
        f"killed in {stage} (holds left in the catalog: {holds_left}): resumed in {resumed.seconds:.1f}s,"
        f" ended {move['stage']}; writer's slowest step"
        f" {writer.slowest * 1000:.0f} ms; {move}"
    )
    assert problems == []


def owner_stale(site: Site, move_id: int) -> bool:
    with site.catalog() as conn:
        row = conn.execute(
            f"SELECT owner IS NULL OR owner_seen_at < clock_timestamp() - %s * interval '1 second'"
            f" FROM {site.schema}.moves WHERE move_id = %s",
            (STALE_OWNER, move_id),
        ).fetchone()
        return bool(row and row[0])


def status_problems(status: Any) -> list[str]:
    """What `rebalance status --json` shows in progress, left behind, or could not check."""
    if not isinstance(status, dict):
        return [f"rebalance status --json printed {status!r}"]
    return [f"rebalance status --json: {key}: {status.get(key)}" for key in STATUS_EMPTY if status.get(key) != []]


STATUS_EMPTY: Final = ("open", "left_behind", "unreachable")


# --- 4. a dead router instance --------------------------------------------------------------------


class ServeProcess:
    """`tenant-router serve` (one worker) as a subprocess, on its own ports and config."""

    def __init__(self, site: Site, directory: Path) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.directory = directory
        write_configs(
            directory,
            site.env,
            listen_port=self.port,
            http_port=self.http_port,
            extra={
                "catalog": {"dsn": site.env.catalog_dsn(), "schema": site.schema, "refresh_interval": 5.0},
                "reload": {"watch": False},
                "rebalance": {"max_hold": MAX_HOLD},
            },
        )
        shutil.copy(site.shards_path, directory / "shards.yaml")
        self.log_path = directory / "serve.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "router.cli", "--config", str(directory / "router.yaml"), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=site.process_env(),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"tenant-router serve exited with {self.proc.returncode}:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def signal(self, signum: int) -> None:
        """Signal the whole instance: the supervisor and its workers (a process group of its own)."""
        os.killpg(self.proc.pid, signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def second_instance(base: Site, tmp_path: Path) -> Iterator[ServeProcess]:
    serve = ServeProcess(base, tmp_path / "second")
    try:
        wait_until(
            serve.ready, lambda: f"the second router instance to be ready\n{serve.log()}", within=30, interval=0.1
        )
        yield serve
    finally:
        serve.stop()
        print(f"--- second instance ---\n{serve.log()}")


def _failed_attempt(site: Site, tenant: str) -> dict[str, Any] | None:
    """The tenant's latest move once it has recorded an error."""
    moves = site.moves(tenant)
    return moves[-1] if moves and moves[-1]["last_error"] else None


def _live_instances(site: Site) -> set[str]:
    with site.catalog() as conn:
        return {
            r[0]
            for r in conn.execute(
                f"SELECT instance_id FROM {site.schema}.instances WHERE heartbeat_at > now() - interval '5 seconds'"
            )
        }


@pytest.mark.timeout(180)
def test_dead_instance_makes_the_cutover_retry(
    base: Site, base_router: RouterThread, second_instance: ServeProcess
) -> None:
    tenant = "mv-dead-instance"
    source = base.add([(tenant, "shared")])[tenant]
    target = other_shard(source)
    source_port = base.cluster(source).port
    wait_until(lambda: len(_live_instances(base)) >= 2, "both router instances to be live", within=15)
    writer = Writer(tenant_url(base_router.port, tenant))
    problems: list[str] = []
    with running(writer):
        writer.wait_for(20)
        # Stop the second instance just before the cutover: the move pauses a second once it is
        # verified, so the stopped instance is still live (its heartbeat fresh) when the cutover's
        # hold is requested.
        mover = base.start_cli("tenants", "move", tenant, "--to", target, extra_env={PAUSE_ENV: "verified=1"})
        try:
            wait_until(
                lambda: base.stage(tenant) == "verified" or mover.proc.poll() is not None,
                lambda: f"the move to be verified: {base.moves(tenant)}\n{mover}",
                within=60,
            )
            assert mover.proc.poll() is None, f"the mover ended before the cutover:\n{mover}"
            second_instance.signal(signal.SIGSTOP)
            try:
                first = wait_until(
                    lambda: _failed_attempt(base, tenant) or mover.proc.poll() is not None,
                    lambda: f"the move to record a failed cutover: {base.moves(tenant)}\n{mover}",
                    within=30,
                )
                # Not switched: the tenant is still served on its source, through the live router.
                names, port = router_rows(base_router.port, tenant)
                writer.wait_for(10)
            finally:
                second_instance.signal(signal.SIGCONT)
            # The move retries after rebalance.retry_interval, now that every instance answers.
            mover.proc.wait(120)
        finally:
            mover.kill()
        assert isinstance(first, dict), f"the mover ended without recording a failed cutover: {base.moves(tenant)}"
        if first["stage"] in ("holding", "switched", "cleaned") or "hold" not in first["last_error"].lower():
            problems.append(f"the failed cutover as recorded: {first}")
        if port != source_port or not names:
            problems.append(f"while the cutover failed the tenant was served on port {port} ({len(names)} rows)")
        if "retry" not in mover.output().lower():
            problems.append(f"the move does not say it will retry:\n{mover}")
        resumed = base.cli("rebalance", "apply")
        writer.wait_for(20)
    if mover.proc.returncode != 0 or resumed.returncode != 0:
        problems.append(f"{mover}\n{resumed}")
    problems += writer.errors
    move = finished_move(base, tenant)
    if move["stage"] != "cleaned" or move["move_id"] != first["move_id"] or move["attempts"] < 2:
        problems.append(f"the move as it ended: {move}")
    problems += audit(
        MovedTenant(tenant, "shared", base.cluster(source), base.cluster(target)), writer.expected(), base_router.port
    )
    # The instance that was stopped took part in the cutover that succeeded, and held nothing else.
    holds = holds_of(second_instance.http_port)
    if holds["held_now"] != [] or set(holds["held_ever"]) != {tenant}:
        problems.append(f"GET /holds of the instance that was stopped: {holds}")
    problems += leftover_problems(base)
    print(f"{mover}\n{move}")
    assert problems == []


# --- 5. scale out from 2 to 3 shards --------------------------------------------------------------

SCALE_TENANTS: Final = [
    (f"mv-scale-{i:02d}", "schema" if i % 12 == 5 else "database" if i % 12 == 11 else "shared") for i in range(60)
]
ROWS_PER_TENANT: Final = 5


def _plan_moves(plan: Any) -> dict[str, tuple[str, str]]:
    """tenant -> (source, target) from `rebalance plan --json`."""
    assert isinstance(plan, dict) and isinstance(plan.get("moves"), list), plan
    return {m["tenant"]: (m["source"], m["target"]) for m in plan["moves"]}


def _seed(site: Site, placed: dict[str, str], isolation: dict[str, Isolation]) -> None:
    for tenant, shard in placed.items():
        seed_rows(site.cluster(shard), tenant, isolation[tenant], ROWS_PER_TENANT)


def _check_placed(
    site: Site, thread: RouterThread, where: dict[str, str], isolation: dict[str, Isolation]
) -> list[str]:
    """Each tenant's rows, exactly, through the router and on the shard `where` says, from there."""
    problems: list[str] = []
    for tenant, shard in where.items():
        names, port = router_rows(thread.port, tenant)
        if port != site.cluster(shard).port:
            problems.append(f"{tenant}: served from port {port}, not {shard}")
        on_shard = rows_on(site.cluster(shard), tenant, isolation[tenant])
        expected = sorted(f"{seq}:0" for seq in range(1, ROWS_PER_TENANT + 1))
        if sorted(names) != expected or sorted(on_shard or []) != expected:
            problems.append(f"{tenant}: rows through the router {sorted(names)}, on {shard} {on_shard}")
    return problems


@pytest.mark.timeout(300)
def test_scale_out_from_two_to_three_shards(own_site: Site, routers: list[RouterThread]) -> None:
    site = own_site
    two = {name: site.cluster(name) for name in ("shard_a", "shard_b")}
    old = site.write_shards(shards_doc(two))
    placed = site.add(SCALE_TENANTS)
    isolation = dict(SCALE_TENANTS)
    _seed(site, placed, isolation)
    thread = start_router(site, routers)

    new = site.write_shards(shards_doc(site.clusters))
    assert thread.call(thread.router.reload()), "the reload adding shard_c was refused"
    ring_old, ring_new = Ring.from_topology(old), Ring.from_topology(new)
    expected = {
        t: (ring_old.shard_for(t), ring_new.shard_for(t))
        for t, _ in SCALE_TENANTS
        if ring_old.shard_for(t) != ring_new.shard_for(t)
    }
    assert 10 <= len(expected) < len(SCALE_TENANTS)  # the ring moves some, not all
    assert site.reload_pins() == {t: s for t, (s, _) in expected.items()}

    plan = site.cli("rebalance", "plan", "--json")
    assert plan.returncode == 0, str(plan)
    assert _plan_moves(json.loads(plan.stdout)) == expected

    applied = site.cli("rebalance", "apply", "--concurrency", "4", timeout=240)
    assert applied.returncode == 0, str(applied)
    assert site.pins() == dict.fromkeys(placed), "catalog pins are left"
    assert site.reload_pins() == {}, "reload pins are left"
    for tenant, (source, target) in expected.items():
        move = finished_move(site, tenant)
        assert (move["stage"], move["source"], move["target"]) == ("cleaned", source, target), move
    where = {t: ring_new.shard_for(t) for t, _ in SCALE_TENANTS}
    assert _check_placed(site, thread, where, isolation) == []
    stale = {
        t: rows_on(site.cluster(s), t, isolation[t])
        for t, (s, _) in expected.items()
        if rows_on(site.cluster(s), t, isolation[t])
    }
    assert stale == {}, "moved tenants left data on their old shard"
    assert_no_leftovers(site)
    print(f"scale out: {len(expected)} moves, apply {applied.seconds:.1f}s\n{applied.stdout[-2000:]}")


# --- 6. drain ---------------------------------------------------------------------------------------

DRAIN_TENANTS: Final = [
    (f"mv-drain-{i:02d}", "schema" if i % 8 == 3 else "database" if i % 8 == 7 else "shared") for i in range(24)
]
DRAIN_PINNED: Final = ("mv-drain-pinned", "shared")


@pytest.mark.timeout(240)
def test_drain_a_shard_by_weight_zero(own_site: Site, routers: list[RouterThread]) -> None:
    site = own_site
    placed = site.add(DRAIN_TENANTS)
    placed.update(site.add([DRAIN_PINNED], shard="shard_c"))  # an operator's pin: drained too
    isolation = dict([*DRAIN_TENANTS, DRAIN_PINNED])
    _seed(site, placed, isolation)
    on_c = {t for t, s in placed.items() if s == "shard_c"}
    assert len(on_c) >= 4
    thread = start_router(site, routers)

    drained = site.write_shards(shards_doc(site.clusters, weights={"shard_c": 0}))
    assert thread.call(thread.router.reload()), "the reload setting shard_c's weight to 0 was refused"
    plan = site.cli("rebalance", "plan", "--json")
    assert plan.returncode == 0, str(plan)
    moves = _plan_moves(json.loads(plan.stdout))
    assert set(moves) == on_c
    assert all(source == "shard_c" and target != "shard_c" for source, target in moves.values()), moves

    applied = site.cli("rebalance", "apply", "--concurrency", "4", timeout=200)
    assert applied.returncode == 0, str(applied)
    left = {t: rows_on(site.cluster("shard_c"), t, isolation[t]) for t in placed}
    assert {t: rows for t, rows in left.items() if rows is not None and (rows or isolation[t] != "shared")} == {}
    assert site.pins()[DRAIN_PINNED[0]] is None, "the drained operator pin is still there"
    ring = Ring.from_topology(drained)
    where = {t: (s if t not in on_c else ring.shard_for(t)) for t, s in placed.items()}
    assert "shard_c" not in {where[t] for t in on_c}
    assert {t: moves[t][1] for t in on_c} == {t: where[t] for t in on_c}
    assert _check_placed(site, thread, where, isolation) == []
    assert_no_leftovers(site)


# --- 7. a target without the prerequisites is refused -----------------------------------------------


@pytest.fixture
def replica_level_cluster(env: PgEnvironment) -> Iterator[PgCluster]:
    """A fourth cluster, set up like a shard but with wal_level = replica."""
    cluster = start_cluster(env.base_dir, "shard_d", settings={"wal_level": "replica"})
    try:
        assert cluster.execute("SHOW wal_level") == "replica"
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.datadir, ignore_errors=True)


@pytest.mark.timeout(120)
def test_target_without_logical_wal_is_refused(
    env: PgEnvironment, tmp_path: Path, replica_level_cluster: PgCluster
) -> None:
    site = make_site(env, tmp_path / "site", "mv_refused", {**env.shards, "shard_d": replica_level_cluster})
    asyncio.run(install_shared_table(*site.load()))  # shard_d lacks nothing else a move needs
    tenants: list[tuple[str, Isolation]] = [("mv-refused-shared", "shared"), ("mv-refused-schema", "schema")]
    site.add(tenants, shard="shard_a")
    for tenant, isolation in tenants:
        seed_rows(site.cluster("shard_a"), tenant, isolation, ROWS_PER_TENANT)
    for tenant, isolation in tenants:
        refused = site.cli("tenants", "move", tenant, "--to", "shard_d")
        assert refused.returncode != 0, str(refused)
        assert "wal_level" in refused.stderr, str(refused)
        # The refusal may be on record (a move that ended before it began), never an open move.
        for move in site.moves(tenant):
            assert move["stage"] == "aborted" and "wal_level" in move["last_error"], move
        assert site.pins()[tenant] == "shard_a"
        assert sorted(rows_on(site.cluster("shard_a"), tenant, isolation) or []) == sorted(
            f"{seq}:0" for seq in range(1, ROWS_PER_TENANT + 1)
        )
        on_d = rows_on(replica_level_cluster, tenant, isolation)
        nothing = [] if isolation == "shared" else None  # the shared table is there; a schema must not be
        assert on_d == nothing, f"{tenant}: the refused move created or wrote on shard_d: {on_d}"
        print(refused.stderr)
    assert site.leftovers() == {}
