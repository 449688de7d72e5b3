"""What every benchmark shares: child processes, targets, pgbench, the router and PgBouncer, the machine.

Owns: starting and stopping the long-running children (router, PgBouncer) in their own sessions,
reading their CPU time and memory from /proc (a router with workers is a process tree: the
supervisor and its workers), running pgbench against a target, the PgBouncer configuration, and the
description of the machine and its load printed next to every figure; and the hardened setup every
benchmark runs by default, as the README tells an operator to deploy: a router role that can log in
and do nothing else (no ownership, no CREATEDB/CREATEROLE, track_activities off), tables owned by
the admin (pgbench -i runs as the admin) with grants to the router role, and a context secret
generated for the run, so that the router signs the tenant context it sets.

Must not: run the router in the benchmark's own process (it has to compete for the machine's cores
as it would in production), touch anything outside the temp dir it is given, or decide what is
measured (run.py, idle_clients.py, catalog_scale.py and read_scaling.py do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import pwd
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from router import native
from router.admin.rls_enable import enable_rls
from router.admin.tenant_admin import add_tenant, init_catalog
from router.isolation import quote_ident, quote_literal
from router.testing import deploy
from router.testing.pgcluster import (
    HOST,
    PgEnvironment,
    find_pg_bin_dir,
    free_port,
    start_environment,
    stop_clusters_under,
)
from router.testing.processes import process_tree

SERVER_OS_USER: Final = "postgres"  # pgbouncer, like PostgreSQL, refuses to run as root
READY_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
ERROR_LINES: Final = 6
TENANT: Final = "bench"
# A table of the tenants', protected by `rls enable` (which installs router.enter_tenant on the shards).
SAMPLE_TABLE: Final = "bench_items"
QUIET_LOAD: Final = 1.5  # 1-minute load average under which the machine counts as quiet
PGBENCH_GRACE: Final = 60.0  # beyond -T: connecting, finishing; past it a run counts as hung

TPS_LINE: Final = re.compile(
    r"^tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing)\)", re.M
)
LATENCY_LINE: Final = re.compile(r"^latency average = ([\d.]+) ms", re.M)
CONNECT_LINE: Final = re.compile(r"^initial connection time = ([\d.]+) ms", re.M)
FAILED_LINE: Final = re.compile(r"^number of failed transactions: (\d+)", re.M)
PROCESSED_LINE: Final = re.compile(r"^number of transactions actually processed: (\d+)", re.M)

# The hardened setup. The router role is the benchmark's own, made LOGIN and nothing else; the
# harness's `tenant_router` (CREATEDB, CREATEROLE, owner of the shard database) stays the catalog's.
ROUTER_ROLE: Final = "bench_router"
ROUTER_PASSWORD: Final = "bench-router-secret"
SETTING: Final = "app.tenant_id"
# Generated per run: the router signs the tenant context with it, `rls enable` gives its key pads
# to the shards.
CONTEXT_SECRET: Final = secrets.token_hex(32)


class BenchError(RuntimeError):
    """Setup failed (a server did not start, pgbench -i failed...): the run cannot go on."""


class ServiceDied(RuntimeError):
    """The router or PgBouncer exited mid-run: report what was measured so far, then stop."""


@dataclass(frozen=True)
class Target:
    """Somewhere pgbench can connect: PostgreSQL itself, a router, or PgBouncer."""

    name: str
    port: int
    user: str
    password: str
    dbname: str


# --- processes -----------------------------------------------------------------------------------


def _server_account() -> pwd.struct_passwd | None:
    return pwd.getpwnam(SERVER_OS_USER) if os.geteuid() == 0 else None


def _chown_for_server(*paths: Path) -> None:
    account = _server_account()
    if account is not None:
        for path in paths:
            os.chown(path, account.pw_uid, account.pw_gid)


def rss_kib(pid: int) -> int | None:
    """VmRSS of one process in KiB, or None once it is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process so far, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def postgres_cpu_seconds(datadir: Path) -> float | None:
    """CPU time so far of a PostgreSQL server: its postmaster and every backend and helper process
    now alive (a backend that exited takes its CPU time with it: pooled sessions stay open)."""
    try:
        pid = int((datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    times = [cpu_seconds(p) for p in process_tree(pid)]
    return sum(t for t in times if t is not None) if times else None


class Service:
    """A long-running child in its own session (so Ctrl-C reaches us, and we stop it in order)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        *,
        as_server_account: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        account = _server_account() if as_server_account else None
        self._log = log_path.open("ab")
        extra: dict[str, Any] = {}
        if account is not None:
            extra = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.process = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(log_path.parent),
            env={**client_env(), **(extra_env or {})},
            **extra,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def pids(self) -> list[int]:
        """The process and its descendants (a router's supervisor and workers)."""
        return process_tree(self.process.pid) if self.alive() else []

    def cpu_seconds(self) -> float | None:
        """CPU time of the whole process tree so far, or None once the top process is gone.

        A worker that exited mid-run takes its CPU time with it: the figure is a lower bound then.
        """
        times = [cpu_seconds(pid) for pid in self.pids()]
        return sum(t for t in times if t is not None) if times and times[0] is not None else None

    def rss_kib(self) -> dict[int, int]:
        """VmRSS (KiB) of every process in the tree, by pid."""
        sizes = {pid: rss_kib(pid) for pid in self.pids()}
        return {pid: size for pid, size in sizes.items() if size is not None}

    def wait_ready(self, port: int, timeout: float = READY_TIMEOUT) -> None:
        """Until `port` accepts TCP connections; raises if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name} exited with code {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not accept connections on port {port} within {timeout:g}s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"

    def stop(self) -> None:
        """SIGTERM to its whole process group, SIGKILL after a grace period; never raises."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.alive():
                os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)
        # Workers are in the same process group; a SIGKILLed supervisor can leave them behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


def check_alive(services: Sequence[Service]) -> None:
    for service in services:
        if not service.alive():
            raise ServiceDied(
                f"{service.name} exited (code {service.process.returncode}); last lines of its log:\n{service.tail()}"
            )


def client_env(password: str | None = None) -> dict[str, str]:
    # Stray PG* variables (PGHOST, PGSSLMODE...) would silently change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the children it starts); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if new_soft > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        return new_soft
    return soft


# --- the router ----------------------------------------------------------------------------------


def router_command(config_path: Path, checkout: Path | None = None) -> list[str]:
    """`tenant-router serve`; from another `checkout` (its own, compiled or not) when given."""
    if checkout is not None:
        return [sys.executable, "-m", "router.cli", "--config", str(config_path), "serve"]
    beside_python = Path(sys.executable).parent / "tenant-router"
    found = str(beside_python) if beside_python.exists() else shutil.which("tenant-router")
    prefix = [found] if found else [sys.executable, "-m", "router.cli"]
    return [*prefix, "--config", str(config_path), "serve"]


def write_router_config(
    directory: Path,
    env: PgEnvironment,
    *,
    workers: int,
    pool: dict[str, Any],
    auth_method: str,
    replicas: dict[str, list[tuple[str, int]]] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, int]:
    """router.yaml for `workers` processes on a free port; `pool` sizes are instance totals.

    The hardened setup: server.user is the benchmark's LOGIN-only role, `admin` the superuser and
    `tenant.context_secret` the run's secret. `replicas`: (host, port) read replicas per shard
    name, written to shards.yaml. `extra`: more top-level router.yaml sections (e.g.
    `{"reads": {"mode": "auto"}}`).
    """
    port = free_port()
    hardened = {
        # The benchmark's clients only (no console user): the router.yaml also starts the router of
        # an earlier checkout (--baseline), which refuses fields it does not know.
        "auth": {"users": [{"name": deploy.APP_USER, "password": deploy.APP_PASSWORD, "tenant_switch": True}]},
        "server": {"user": ROUTER_ROLE, "password": ROUTER_PASSWORD},
        "admin": {"user": env.SUPERUSER, "password": env.SUPERUSER_PASSWORD},
        "tenant": {"resolution": ["user", "option"], "setting": SETTING, "context_secret": CONTEXT_SECRET},
    }
    path = deploy.write_configs(
        directory,
        env,
        listen_port=port,
        http_port=0,
        pool=pool,
        auth_method=auth_method,
        extra={"workers": workers, **hardened, **(extra or {})},
        replicas=replicas,
    )
    return path, port


async def seed_catalog(config_path: Path, env: PgEnvironment) -> None:
    """The catalog schema and the one `shared` tenant every router target serves; and on the shards
    what the router needs to enter a shared tenant (router.enter_tenant), which `rls enable`
    installs, as README's "Running it" deploys it: here on a small table of the tenants', owned by
    the admin (pgbench's own tables have no tenant column)."""
    config, topology = deploy.load(config_path)
    await init_catalog(config)
    await add_tenant(config, topology, TENANT, "shared", next(iter(env.shards)))
    for shard in env.shards:
        conn = await _admin(env, shard)
        try:
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {SAMPLE_TABLE} (tenant_id text NOT NULL, note text)")
        finally:
            await conn.close()
    await enable_rls(config, topology, SAMPLE_TABLE)


async def _admin(env: PgEnvironment, shard: str) -> Any:
    return await asyncpg.connect(env.shard_dsn(shard, env.SUPERUSER, env.SUPERUSER_PASSWORD))


async def make_router_role(env: PgEnvironment) -> None:
    """On every shard: the router role, LOGIN and nothing else. track_activities off, as `rls
    enable` sets it: shared tenants all act as this role and must not see each other's statement
    text (a superuser-only default, which the router accepts)."""
    role = quote_ident(ROUTER_ROLE)
    for shard in env.shards:
        conn = await _admin(env, shard)
        try:
            exists = await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", ROUTER_ROLE)
            await conn.execute(
                f"{'ALTER' if exists else 'CREATE'} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                f" NOBYPASSRLS NOREPLICATION PASSWORD {quote_literal(ROUTER_PASSWORD)}"
            )
            await conn.execute(f"ALTER ROLE {role} SET track_activities = off")
        finally:
            await conn.close()


async def grant_tables(env: PgEnvironment) -> None:
    """What the router role may do with the admin's tables in schema public: read and write rows
    (pgbench's own scripts update and insert), nothing more."""
    role = quote_ident(ROUTER_ROLE)
    for shard in env.shards:
        conn = await _admin(env, shard)
        try:
            await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        finally:
            await conn.close()


def start_router(
    name: str,
    directory: Path,
    env: PgEnvironment,
    *,
    workers: int,
    pool: dict[str, Any],
    auth_method: str = "scram-sha-256",
    seed: bool = False,
    replicas: dict[str, list[tuple[str, int]]] | None = None,
    extra: dict[str, Any] | None = None,
    checkout: Path | None = None,
) -> tuple[Service, Target]:
    """A router process (a supervisor and `workers` workers when workers > 1) for tenant `bench`;
    `replicas` and `extra` as in write_router_config; `checkout`: run the router of another checkout
    (a worktree of an earlier commit, say) instead of this one."""
    config_path, port = write_router_config(
        directory, env, workers=workers, pool=pool, auth_method=auth_method, replicas=replicas, extra=extra
    )
    if seed:
        asyncio.run(seed_catalog(config_path, env))
    service = Service(
        name,
        router_command(config_path, checkout),
        directory / "router.log",
        extra_env=None if checkout is None else {"PYTHONPATH": str(checkout)},
    )
    try:
        service.wait_ready(port)
    except BaseException:
        service.stop()
        raise
    return service, Target(name, port, f"{deploy.APP_USER}.{TENANT}", deploy.APP_PASSWORD, env.SHARD_DB)


# --- PgBouncer -----------------------------------------------------------------------------------


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    return found


def start_pgbouncer(binary: str, workdir: Path, env: PgEnvironment, pool_size: int) -> tuple[Service, Target]:
    """PgBouncer in transaction mode, SCRAM for clients, `pool_size` server connections to the shard."""
    directory = workdir / "pgbouncer"
    directory.mkdir(mode=0o755)
    shard = next(iter(env.shards.values()))
    port = free_port()
    ini = directory / "pgbouncer.ini"
    userlist = directory / "userlist.txt"
    ini.write_text(
        f"""\
[databases]
{env.SHARD_DB} = host={shard.host} port={shard.port} dbname={env.SHARD_DB}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 1000
logfile = {directory / "pgbouncer.log"}
pidfile = {directory / "pgbouncer.pid"}
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
"""
    )
    # Plain text, so PgBouncer can answer the shard's SCRAM challenge with the same password.
    userlist.write_text(f'"{ROUTER_ROLE}" "{ROUTER_PASSWORD}"\n')
    for path in (ini, userlist):
        path.chmod(0o600)
    _chown_for_server(directory, ini, userlist)
    service = Service("pgbouncer", [binary, str(ini)], directory / "stdout.log", as_server_account=True)
    service.wait_ready(port)
    return service, Target("pgbouncer", port, ROUTER_ROLE, ROUTER_PASSWORD, env.SHARD_DB)


# --- pgbench -------------------------------------------------------------------------------------


def pgbench_binary() -> str:
    candidate = find_pg_bin_dir() / "pgbench"
    found = str(candidate) if candidate.exists() else shutil.which("pgbench")
    if found is None:
        raise BenchError("pgbench not found (apt-get install postgresql-client)")
    return found


def pgbench(target: Target, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run pgbench against `target`; a run past `timeout` is killed and reported as exit code -1."""
    cmd = [pgbench_binary(), "-h", HOST, "-p", str(target.port), "-U", target.user, *args, target.dbname]
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=client_env(target.password), cwd="/"
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        err = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode(errors="replace")
        err = f"benchmark: pgbench hung: no result {timeout:g}s after it started; killed\n{err}"
        return subprocess.CompletedProcess(cmd, -1, out, err)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """pgbench's distinct error lines, at most ERROR_LINES of them."""
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    interesting = [line for line in lines if re.search(r"error|fatal|abort|hung|could not|failed", line, re.I)]
    if proc.returncode != 0 and not interesting:
        interesting = lines or [f"pgbench exited with code {proc.returncode} and printed nothing on stderr"]
    counts = Counter(interesting)  # one line per distinct message: 16 aborting clients print the same one
    return [line if counts[line] == 1 else f"{line}  (x{counts[line]})" for line in counts][:ERROR_LINES]


@dataclass
class PgbenchRun:
    """What one pgbench run printed: its figures, and its first error lines if any."""

    exit_code: int
    tps: float | None
    latency_ms: float | None
    connect_ms: float | None
    transactions: int | None
    failed_transactions: int | None
    errors: list[str]


def pgbench_run(target: Target, args: Sequence[str], duration: float) -> PgbenchRun:
    """pgbench with `args` (which hold `-T duration`) against `target`, parsed."""
    proc = pgbench(target, args, timeout=duration + PGBENCH_GRACE)
    tps = number(TPS_LINE, proc.stdout)
    processed = number(PROCESSED_LINE, proc.stdout)
    failed = number(FAILED_LINE, proc.stdout)
    errors = error_lines(proc)
    if tps is None and not errors:
        errors = ["no tps line in pgbench's output:", *proc.stdout.splitlines()[-6:]]
    return PgbenchRun(
        exit_code=proc.returncode,
        tps=tps,
        latency_ms=number(LATENCY_LINE, proc.stdout),
        connect_ms=number(CONNECT_LINE, proc.stdout),
        transactions=int(processed) if processed is not None else None,
        failed_transactions=int(failed) if failed is not None else None,
        errors=errors,
    )


def select_only(target: Target, mode: str, clients: int, duration: float, extra_args: Sequence[str] = ()) -> PgbenchRun:
    """`pgbench -S -n -T duration -c clients -M mode` against `target`, parsed."""
    args = ["-S", "-n", "-T", f"{duration:g}", "-c", str(clients), "-j", str(min(2, clients)), "-M", mode]
    return pgbench_run(target, [*args, *extra_args], duration)


def number(pattern: re.Pattern[str], text: str) -> float | None:
    match = pattern.search(text)
    return float(match.group(1)) if match else None


def transaction_latencies(prefix: Path) -> Iterator[int]:
    """Per-transaction latencies (µs, the third field) from pgbench -l files `prefix.<pid>[.<thread>]`."""
    for path in prefix.parent.glob(prefix.name + ".*"):
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():  # "failed"/"skipped" carry no latency
                    yield int(fields[2])


def percentile(ordered: Sequence[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def init_pgbench(target: Target, scale: int) -> None:
    proc = pgbench(target, ["-i", "-q", "-s", str(scale)], timeout=600)
    if proc.returncode != 0:
        raise BenchError(f"pgbench -i -s {scale} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")


# --- the workspace -------------------------------------------------------------------------------


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class Workspace:
    """A temp dir holding the clusters, configs and logs of one run, and every child to stop at the end."""

    def __init__(self, *, keep: bool = False) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_interrupt)
        self.keep = keep
        self.dir = Path(tempfile.mkdtemp(prefix="tenant-router-bench-"))
        self.dir.chmod(0o755)  # the postgres OS user must reach the clusters and pgbouncer's files inside
        self.services: list[Service] = []
        self.env: PgEnvironment | None = None

    def start_environment(self) -> PgEnvironment:
        """A catalog cluster and one shard (max_connections 300, fsync off), with the router role."""
        self.env = start_environment(self.dir / "pg", shard_count=1)
        asyncio.run(make_router_role(self.env))
        return self.env

    def direct_target(self) -> Target:
        """The shard itself, as the router role (what the routers and PgBouncer log in as)."""
        assert self.env is not None
        shard = next(iter(self.env.shards.values()))
        return Target("direct", shard.port, ROUTER_ROLE, ROUTER_PASSWORD, self.env.SHARD_DB)

    def admin_target(self) -> Target:
        """The shard as the admin (the superuser), who owns the tables."""
        assert self.env is not None
        shard = next(iter(self.env.shards.values()))
        return Target("admin", shard.port, self.env.SUPERUSER, self.env.SUPERUSER_PASSWORD, self.env.SHARD_DB)

    def init_pgbench(self, scale: int) -> None:
        """pgbench -i as the admin, who then owns pgbench's tables; the router role gets row access."""
        assert self.env is not None
        init_pgbench(self.admin_target(), scale)
        asyncio.run(grant_tables(self.env))

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def stop(self, service: Service) -> None:
        service.stop()
        with contextlib.suppress(ValueError):
            self.services.remove(service)

    def dump_logs(self) -> None:
        for service in self.services:
            print(
                f"--- last lines of the {service.name} log ({service.log_path}) ---\n{service.tail()}", file=sys.stderr
            )

    def run_alone(self, body: Callable[[], int]) -> int:
        """A section run on its own: `body`'s exit code; 130 on Ctrl-C, 1 (with the services' logs)
        on any failure; everything stopped and removed afterwards."""
        code = 1
        try:
            code = body()
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            code = 130
        except Exception as exc:
            print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            self.dump_logs()
            code = 1
        finally:
            code = self.close() or code
        return code

    def close(self) -> int:
        """Stop everything in reverse order of start; a second Ctrl-C must not cut this short."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = 0
        try:
            for service in reversed(self.services):
                service.stop()
            self.services.clear()
            if self.env is not None:
                try:
                    self.env.stop()
                except Exception as exc:
                    print(f"warning: {exc}", file=sys.stderr)
                    code = 1
            stop_clusters_under(self.dir / "pg")
            if self.keep:
                print(f"kept {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        return code


# --- the machine ---------------------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _proc_field(path: str, key: str) -> str:
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return "unknown"


def machine_info(pgbouncer: str | None) -> dict[str, str]:
    mem = _proc_field("/proc/meminfo", "MemTotal")
    with contextlib.suppress(ValueError):
        mem = f"{int(mem.split()[0]) / 1024 / 1024:.1f} GiB"
    return {
        "cores": str(len(os.sched_getaffinity(0))),
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "ram": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": _first_line([str(find_pg_bin_dir() / "postgres"), "--version"]),
        "pgbench": _first_line([pgbench_binary(), "--version"]),
        "pgbouncer": _first_line([pgbouncer, "--version"]) if pgbouncer else "not installed",
        "router": native.describe(),
        "load average at start": load_average(),
    }


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--json, --[no-]wait-quiet and --keep, which every section run on its own takes."""
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument(
        "--wait-quiet",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"wait up to 180s for the load average to fall below {QUIET_LOAD:g} first (default on)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs) afterwards")


def load_average() -> str:
    # Anything else busy on a 2-core machine skews every figure: record it next to them.
    with contextlib.suppress(OSError), open("/proc/loadavg", encoding="utf-8") as fh:
        return " ".join(fh.read().split()[:3])
    return "unknown"


def wait_until_quiet(limit: float, max_wait: float) -> str:
    """Wait (up to `max_wait` s) for the 1-minute load average to drop under `limit`; return what it was."""
    deadline = time.monotonic() + max_wait
    announced = False
    while True:
        load = load_average()
        try:
            one_minute = float(load.split()[0])
        except (ValueError, IndexError):
            return load
        if one_minute < limit or time.monotonic() >= deadline:
            if announced:
                print(f"load average now {load}", flush=True)
            return load
        if not announced:
            print(f"load average {load}: waiting up to {max_wait:g}s for it to fall below {limit:g}", flush=True)
            announced = True
        time.sleep(5)
