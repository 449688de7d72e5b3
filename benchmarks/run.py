"""pgbench select-only throughput and added latency: PostgreSQL directly, the router, and PgBouncer.

Owns one whole benchmark run: a throwaway PostgreSQL environment (catalog + one shard) in a temp
dir, pgbench tables on the shard, one `shared` tenant, the router started as its own process from
the same YAML an operator would write, PgBouncer (when the binary is installed) pointed at the same
shard with the same pool size, pgbench runs interleaved across the targets, and the report.

Must not: run the router in this process (it has to compete with pgbench and PostgreSQL for the
machine's cores as it would in production), change anything outside its temp dir, or leave a
process behind: the router, PgBouncer and every cluster are stopped on any exit, Ctrl-C included.

    python -m benchmarks.run [--duration 15] [--clients 16,64] [--modes simple,extended,prepared]
                             [--quick] [--json FILE] [--no-added-latency] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.testing import deploy
from router.testing.pgcluster import (
    HOST,
    PgCluster,
    PgEnvironment,
    find_pg_bin_dir,
    free_port,
    start_environment,
    stop_clusters_under,
)

TENANT: Final = "bench"
MODES: Final = ("simple", "extended", "prepared")
BAR_MODE: Final = "simple"
BAR_CLIENTS: Final = 16
BAR_RATIO: Final = 0.5
SERVER_OS_USER: Final = "postgres"  # pgbouncer, like PostgreSQL, refuses to run as root
PGBOUNCER_MISSING: Final = "pgbouncer: not installed (apt-get install pgbouncer)"
PGBOUNCER_PREPARED: Final = "no prepared-statement tracking in transaction mode (max_prepared_statements)"
READY_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
PGBENCH_GRACE: Final = 60.0  # beyond -T: connecting, finishing; past it a run counts as hung
ERROR_LINES: Final = 6

_TPS: Final = re.compile(
    r"^tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing)\)", re.M
)
_LATENCY: Final = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_CONNECT: Final = re.compile(r"^initial connection time = ([\d.]+) ms", re.M)
_FAILED: Final = re.compile(r"^number of failed transactions: (\d+)", re.M)
_PROCESSED: Final = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


class BenchError(RuntimeError):
    """Setup failed (a server did not start, pgbench -i failed...): the run cannot go on."""


class ServiceDied(RuntimeError):
    """The router or PgBouncer exited mid-run: report what was measured so far, then stop."""


# --- what is measured ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Somewhere pgbench can connect: PostgreSQL itself, the router, or PgBouncer."""

    name: str
    port: int
    user: str
    password: str
    dbname: str


@dataclass
class Result:
    """One pgbench run against one target; `errors` holds pgbench's first error lines, if any."""

    target: str
    mode: str
    clients: int
    duration: float
    exit_code: int
    tps: float | None = None
    latency_ms: float | None = None
    connect_ms: float | None = None
    transactions: int | None = None
    failed_transactions: int | None = None
    mean_us: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    proxy_cpu_pct: float | None = None  # the router's or PgBouncer's CPU time over the run, % of one core
    proxy_cpu_us_per_txn: float | None = None  # ...and per transaction, warm-up and connecting included
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.tps is not None and not self.failed_transactions


# --- child processes -----------------------------------------------------------------------------


def _server_account() -> pwd.struct_passwd | None:
    return pwd.getpwnam(SERVER_OS_USER) if os.geteuid() == 0 else None


def _chown_for_server(*paths: Path) -> None:
    account = _server_account()
    if account is not None:
        for path in paths:
            os.chown(path, account.pw_uid, account.pw_gid)


class Service:
    """A long-running child in its own session (so Ctrl-C reaches us, and we stop it in order)."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, *, as_server_account: bool = False) -> None:
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
            env=_client_env(),
            **extra,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far (from /proc), or None once it is gone."""
        try:
            with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

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
        self._log.close()


def _client_env(password: str | None = None) -> dict[str, str]:
    # Stray PG* variables (PGHOST, PGSSLMODE...) would silently change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def _router_command(config_path: Path) -> list[str]:
    beside_python = Path(sys.executable).parent / "tenant-router"
    found = str(beside_python) if beside_python.exists() else shutil.which("tenant-router")
    prefix = [found] if found else [sys.executable, "-m", "router.cli"]
    return [*prefix, "--config", str(config_path), "serve"]


def start_router(workdir: Path, env: PgEnvironment, pool_size: int) -> tuple[Service, Target]:
    directory = workdir / "router"
    port = free_port()
    config_path = deploy.write_configs(
        directory, env, listen_port=port, http_port=0, pool={"size": pool_size}, auth_method="scram-sha-256"
    )
    config, topology = deploy.load(config_path)
    shard = next(iter(env.shards))
    asyncio.run(deploy.seed(config, topology, env, [(TENANT, "shared", shard)]))
    service = Service("router", _router_command(config_path), directory / "router.log")
    service.wait_ready(port)
    return service, Target("router", port, f"{deploy.APP_USER}.{TENANT}", deploy.APP_PASSWORD, env.SHARD_DB)


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
    userlist.write_text(f'"{env.ROUTER_ROLE}" "{env.ROUTER_PASSWORD}"\n')
    for path in (ini, userlist):
        path.chmod(0o600)
    _chown_for_server(directory, ini, userlist)
    service = Service("pgbouncer", [binary, str(ini)], directory / "stdout.log", as_server_account=True)
    service.wait_ready(port)
    return service, Target("pgbouncer", port, env.ROUTER_ROLE, env.ROUTER_PASSWORD, env.SHARD_DB)


# --- pgbench -------------------------------------------------------------------------------------


def _pgbench_binary() -> str:
    candidate = find_pg_bin_dir() / "pgbench"
    found = str(candidate) if candidate.exists() else shutil.which("pgbench")
    if found is None:
        raise BenchError("pgbench not found (apt-get install postgresql-client)")
    return found


def pgbench(target: Target, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run pgbench against `target`; a run past `timeout` is killed and reported as exit code -1."""
    cmd = [_pgbench_binary(), "-h", HOST, "-p", str(target.port), "-U", target.user, *args, target.dbname]
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_client_env(target.password), cwd="/"
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        err = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode(errors="replace")
        err = f"benchmark: pgbench hung: no result {timeout:g}s after it started; killed\n{err}"
        return subprocess.CompletedProcess(cmd, -1, out, err)


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    interesting = [line for line in lines if re.search(r"error|fatal|abort|hung|could not|failed", line, re.I)]
    if proc.returncode != 0 and not interesting:
        interesting = lines or [f"pgbench exited with code {proc.returncode} and printed nothing on stderr"]
    counts = Counter(interesting)  # one line per distinct message: 16 aborting clients print the same one
    return [line if counts[line] == 1 else f"{line}  (x{counts[line]})" for line in counts][:ERROR_LINES]


def _number(pattern: re.Pattern[str], text: str) -> float | None:
    match = pattern.search(text)
    return float(match.group(1)) if match else None


def run_select_only(target: Target, mode: str, clients: int, duration: float, log_prefix: Path | None = None) -> Result:
    args = ["-S", "-n", "-T", f"{duration:g}", "-c", str(clients), "-j", str(min(2, clients)), "-M", mode]
    if log_prefix is not None:
        args += ["-l", f"--log-prefix={log_prefix}"]
    proc = pgbench(target, args, timeout=duration + PGBENCH_GRACE)
    processed = _number(_PROCESSED, proc.stdout)
    failed = _number(_FAILED, proc.stdout)
    result = Result(
        target=target.name,
        mode=mode,
        clients=clients,
        duration=duration,
        exit_code=proc.returncode,
        tps=_number(_TPS, proc.stdout),
        latency_ms=_number(_LATENCY, proc.stdout),
        connect_ms=_number(_CONNECT, proc.stdout),
        transactions=int(processed) if processed is not None else None,
        failed_transactions=int(failed) if failed is not None else None,
        errors=_error_lines(proc),
    )
    if result.tps is None and not result.errors:
        result.errors = ["no tps line in pgbench's output:", *proc.stdout.splitlines()[-ERROR_LINES:]]
    if log_prefix is not None:
        latencies = sorted(_transaction_latencies(log_prefix))
        if latencies:
            result.mean_us = sum(latencies) / len(latencies)
            result.p50_us = _percentile(latencies, 0.50)
            result.p99_us = _percentile(latencies, 0.99)
    return result


def _transaction_latencies(prefix: Path) -> Iterator[int]:
    """Per-transaction latencies (µs, the third field) from pgbench -l files `prefix.<pid>[.<thread>]`."""
    for path in prefix.parent.glob(prefix.name + ".*"):
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():  # "failed"/"skipped" carry no latency
                    yield int(fields[2])


def _percentile(ordered: list[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


# --- the machine ---------------------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr).strip() else "unknown"


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
        "pgbench": _first_line([_pgbench_binary(), "--version"]),
        "pgbouncer": _first_line([pgbouncer, "--version"]) if pgbouncer else "not installed",
        "load average at start": _load_average(),
    }


def _load_average() -> str:
    # Anything else busy on a 2-core machine skews every figure: record it next to them.
    with contextlib.suppress(OSError), open("/proc/loadavg", encoding="utf-8") as fh:
        return " ".join(fh.read().split()[:3])
    return "unknown"


# --- the report ----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: Result | None, b: Result | None) -> str:
    if a is None or b is None or not (a.ok and b.ok) or not b.tps:
        return "-"
    assert a.tps is not None
    return f"{a.tps / b.tps:.2f}x"


def _tps_cell(result: Result | None) -> str:
    if result is None:
        return "-"
    return _fmt(result.tps, ",.0f") if result.ok else "FAILED"


def _cpu_cell(result: Result | None) -> str:
    if result is None or result.proxy_cpu_pct is None:
        return "-"
    per_txn = "" if result.proxy_cpu_us_per_txn is None else f" ({result.proxy_cpu_us_per_txn:.0f} µs/txn)"
    return f"{result.proxy_cpu_pct:.0f}%{per_txn}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def throughput_table(results: list[Result], targets: list[str]) -> str:
    by_key = {(r.target, r.mode, r.clients): r for r in results}
    cells = sorted({(r.mode, r.clients) for r in results}, key=lambda mc: (MODES.index(mc[0]), mc[1]))
    has_bouncer = "pgbouncer" in targets
    header = ["mode", "clients", *(f"{t} tps" for t in targets), "router/direct"]
    header += ["router/pgbouncer"] if has_bouncer else []
    header += [f"{t} ms" for t in targets]
    proxies = [t for t in targets if t != "direct"]
    header += [f"{t} cpu" for t in proxies]
    rows = [header]
    for mode, clients in cells:
        get = {t: by_key.get((t, mode, clients)) for t in targets}
        row = [mode, str(clients), *(_tps_cell(get[t]) for t in targets), _ratio(get["router"], get["direct"])]
        row += [_ratio(get["router"], get["pgbouncer"])] if has_bouncer else []
        row += [_fmt(r.latency_ms if (r := get[t]) else None, ".3f") for t in targets]
        row += [_cpu_cell(get[t]) for t in proxies]
        rows.append(row)
    return _table(rows)


def latency_table(results: list[Result]) -> str:
    direct = next((r for r in results if r.target == "direct"), None)
    rows = [["target", "mean µs", "p50 µs", "p99 µs", "tps", "mean added µs", "p50 added µs", "p99 added µs"]]
    for r in results:
        avg, base_avg = r.mean_us, direct.mean_us if direct else None
        row = [r.target, _fmt(avg, ".0f"), _fmt(r.p50_us, ".0f"), _fmt(r.p99_us, ".0f"), _fmt(r.tps, ",.0f")]
        if r.target == "direct" or direct is None or not r.ok:
            row += ["-", "-", "-"] if r.ok else ["FAILED", "-", "-"]
        else:
            row += [
                _fmt(None if avg is None or base_avg is None else avg - base_avg, "+.0f"),
                _fmt(None if r.p50_us is None or direct.p50_us is None else r.p50_us - direct.p50_us, "+.0f"),
                _fmt(None if r.p99_us is None or direct.p99_us is None else r.p99_us - direct.p99_us, "+.0f"),
            ]
        rows.append(row)
    return _table(rows)


def bar_verdict(results: list[Result]) -> tuple[bool | None, str]:
    def find(target: str) -> Result | None:
        return next((r for r in results if (r.target, r.mode, r.clients) == (target, BAR_MODE, BAR_CLIENTS)), None)

    router, direct = find("router"), find("direct")
    bar = f"router >= {BAR_RATIO}x direct for pgbench -S -c {BAR_CLIENTS} -M {BAR_MODE}"
    if router is None or direct is None:
        return None, f"bar ({bar}): NOT EVALUATED (needs --modes {BAR_MODE} and --clients {BAR_CLIENTS})"
    if not direct.ok or direct.tps is None:
        return None, f"bar ({bar}): NOT EVALUATED (the direct run failed)"
    if not router.ok or router.tps is None:
        return False, f"bar ({bar}): DOES NOT HOLD (the router run failed)"
    ratio = router.tps / direct.tps
    verdict = "HOLDS" if ratio >= BAR_RATIO else "DOES NOT HOLD"
    return ratio >= BAR_RATIO, (
        f"bar ({bar}): {verdict}: router {router.tps:,.0f} tps = {ratio:.2f}x direct {direct.tps:,.0f} tps"
    )


def failures(results: list[Result]) -> str:
    lines = []
    for r in results:
        if not r.ok:
            lines.append(f"{r.target} -M {r.mode} -c {r.clients}: exit code {r.exit_code}")
            if (r.target, r.mode) == ("pgbouncer", "prepared"):
                lines.append(f"    (expected below PgBouncer 1.21: {PGBOUNCER_PREPARED})")
            if r.failed_transactions:
                lines.append(f"    failed transactions: {r.failed_transactions}")
            lines += ["    " + e for e in r.errors]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    duration: float
    clients: list[int]
    modes: list[str]
    scale: int
    pool_size: int
    warmup: float
    latency_duration: float | None  # None: no added-latency section
    pgbouncer: bool


def _progress(result: Result) -> None:
    status = "ok" if result.ok else f"FAILED (exit {result.exit_code})"
    cpu = "" if result.proxy_cpu_pct is None else f"proxy cpu {result.proxy_cpu_pct:3.0f}%  "
    print(
        f"  {result.mode:<9} -c {result.clients:<4} {result.target:<10} "
        f"tps {_fmt(result.tps, ',.0f'):>9}  avg {_fmt(result.latency_ms, '.3f'):>7} ms  "
        f"{cpu}{status}",
        flush=True,
    )
    for line in result.errors[:3]:
        print(f"      {line}", flush=True)


def _rotated(items: list[Target], by: int) -> list[Target]:
    # Rotating the order per cell keeps any drift (cache warming, a noisy neighbour) off one target.
    by %= len(items)
    return items[by:] + items[:by]


def benchmark(plan: Plan, workdir: Path, services: list[Service], report: dict[str, Any]) -> int:
    """Everything between an empty temp dir and the printed report; `services` collects what to stop."""
    bouncer_bin = find_pgbouncer() if plan.pgbouncer else None
    info = machine_info(bouncer_bin)
    report["machine"] = info
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)

    started = time.monotonic()
    env = start_environment(workdir / "pg", shard_count=1)
    report["_env"] = env
    shard: PgCluster = next(iter(env.shards.values()))
    direct = Target("direct", shard.port, env.ROUTER_ROLE, env.ROUTER_PASSWORD, env.SHARD_DB)
    init = pgbench(direct, ["-i", "-q", "-s", str(plan.scale)], timeout=600)
    if init.returncode != 0:
        raise BenchError(f"pgbench -i -s {plan.scale} failed (exit {init.returncode}):\n{init.stderr.strip()}")
    print(f"postgresql: catalog + 1 shard up, pgbench -i -s {plan.scale} done in {time.monotonic() - started:.0f}s")

    router_service, router = start_router(workdir, env, plan.pool_size)
    services.append(router_service)
    print(f"router: listening on {HOST}:{router.port} as a separate process (pid {router_service.process.pid})")
    targets = [direct, router]
    if bouncer_bin is None:
        print(PGBOUNCER_MISSING if plan.pgbouncer else "pgbouncer: skipped (--no-pgbouncer)")
    else:
        bouncer_service, bouncer = start_pgbouncer(bouncer_bin, workdir, env, plan.pool_size)
        services.append(bouncer_service)
        targets.append(bouncer)
        print(f"pgbouncer: listening on {HOST}:{bouncer.port} (transaction mode, pool size {plan.pool_size})")
    names = [t.name for t in targets]
    report["targets"] = names

    print(f"warm-up: {plan.warmup:g}s per target", flush=True)
    for target in targets:
        warm = run_select_only(target, "simple", min(4, max(plan.clients)), plan.warmup)
        if not warm.ok:
            _progress(warm)

    print(
        f"\nthroughput: pgbench -S -n -T {plan.duration:g} -j 2, scale {plan.scale}, pool size {plan.pool_size}",
        flush=True,
    )
    results: list[Result] = []
    latency: list[Result] = []
    try:
        cell = 0
        for mode in plan.modes:
            for clients in plan.clients:
                for target in _rotated(targets, cell):
                    result = measure(services, target, mode, clients, plan.duration)
                    results.append(result)
                    _progress(result)
                    _check_alive(services, result)
                cell += 1
        if plan.latency_duration is not None:
            print(f"\nadded latency: pgbench -S -n -M simple -c 1 -j 1 -T {plan.latency_duration:g} -l", flush=True)
            logs = workdir / "latency-logs"
            logs.mkdir()
            for target in targets:
                result = measure(services, target, "simple", 1, plan.latency_duration, logs / target.name)
                latency.append(result)
                _progress(result)
                _check_alive(services, result)
    except ServiceDied as exc:
        print(f"\nstopping early: {exc}", flush=True)
    report["throughput"] = [asdict(r) for r in results]
    report["added_latency"] = [asdict(r) for r in latency]

    print("\n## Throughput (tps excluding connection time; ms = average latency)\n")
    print("cpu: the proxy process's CPU time during the run, as % of one core and per transaction\n")
    print(throughput_table(results, names))
    if bouncer_bin is None and plan.pgbouncer:
        print(f"\n{PGBOUNCER_MISSING}")
    if latency:
        print("\n## Added latency (-c 1, simple; µs from pgbench's per-transaction log)\n")
        print(latency_table(latency))
    problems = failures(results + latency)
    if problems:
        print("\n## Failures (pgbench's first error lines)\n")
        print(problems)
    report["machine"]["load average at end"] = _load_average()
    print(f"\nload average: {info['load average at start']} at start, {_load_average()} at end")
    holds, verdict = bar_verdict(results)
    report["bar"] = {"holds": holds, "verdict": verdict}
    print(f"\n{verdict}")
    # PgBouncer is the yardstick, not the subject: its failures are reported but do not fail the run.
    return 1 if any(not r.ok for r in results + latency if r.target != "pgbouncer") else 0


def measure(
    services: list[Service],
    target: Target,
    mode: str,
    clients: int,
    duration: float,
    log_prefix: Path | None = None,
) -> Result:
    """One pgbench run, noting how much CPU the proxy behind `target` (if any) used meanwhile."""
    service = next((s for s in services if s.name == target.name), None)
    before, started = (service.cpu_seconds() if service else None), time.monotonic()
    result = run_select_only(target, mode, clients, duration, log_prefix)
    after, elapsed = (service.cpu_seconds() if service else None), time.monotonic() - started
    if before is not None and after is not None and elapsed > 0:
        result.proxy_cpu_pct = 100 * (after - before) / elapsed
        if result.transactions:
            result.proxy_cpu_us_per_txn = 1e6 * (after - before) / result.transactions
    return result


def _check_alive(services: list[Service], result: Result) -> None:
    for service in services:
        if not service.alive():
            result.errors.append(f"{service.name} process exited (code {service.process.returncode})")
            result.exit_code = result.exit_code or -2
            raise ServiceDied(f"{service.name} exited during the run; last lines of its log:\n{service.tail()}")


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)

    workdir = Path(tempfile.mkdtemp(prefix="tenant-router-bench-"))
    workdir.chmod(0o755)  # the postgres OS user must reach the clusters and pgbouncer's files inside
    services: list[Service] = []
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": asdict(plan),
    }
    code = 1
    try:
        code = benchmark(plan, workdir, services, report)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        code = 130
    except Exception as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        for service in services:
            print(
                f"--- last lines of the {service.name} log ({service.log_path}) ---\n{service.tail()}", file=sys.stderr
            )
        code = 1
    finally:
        code = _cleanup(workdir, services, report, keep=args.keep) or code
    if args.json:
        report.pop("_env", None)
        report["exit_code"] = code
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    return code


def _cleanup(workdir: Path, services: list[Service], report: dict[str, Any], *, keep: bool) -> int:
    """Stop everything in reverse order of start; a second Ctrl-C must not cut this short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = 0
    try:
        for service in reversed(services):
            service.stop()
        env: PgEnvironment | None = report.pop("_env", None)
        if env is not None:
            try:
                env.stop()
            except Exception as exc:
                print(f"warning: {exc}", file=sys.stderr)
                code = 1
        stop_clusters_under(workdir / "pg")
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    return code


def _client_counts(values: list[str] | None) -> list[int]:
    counts = [int(part) for value in (values or ["16"]) for part in value.split(",") if part.strip()]
    if not counts or any(c < 1 for c in counts):
        raise ValueError("--clients takes positive integers")
    return list(dict.fromkeys(counts))


def make_plan(args: argparse.Namespace) -> Plan:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"--modes takes a comma list of {', '.join(MODES)}; got {args.modes!r}")
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 15.0)
    if duration <= 0:
        raise ValueError("--duration must be positive")
    latency = args.latency_duration if args.latency_duration is not None else (3.0 if args.quick else 10.0)
    return Plan(
        duration=duration,
        clients=_client_counts(args.clients),
        modes=modes,
        scale=args.scale if args.scale is not None else (1 if args.quick else 10),
        pool_size=args.pool_size,
        warmup=1.0 if args.quick else 3.0,
        latency_duration=latency if args.added_latency else None,
        pgbouncer=args.pgbouncer,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="pgbench -S against PostgreSQL directly, the tenant router and PgBouncer (if installed).",
    )
    parser.add_argument("--duration", type=float, help="seconds per pgbench run (default 15; 3 with --quick)")
    parser.add_argument(
        "--clients", action="append", metavar="N[,N...]", help="client counts, repeatable or a comma list (default 16)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="pgbench -M modes (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (3 s runs, scale 1)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure and the machine to FILE")
    parser.add_argument(
        "--added-latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="-c 1 latency section: average, p50, p99 per target and the router's addition (default on)",
    )
    parser.add_argument("--latency-duration", type=float, help="seconds for each -c 1 latency run (default 10)")
    parser.add_argument("--scale", type=int, help="pgbench -i scale factor (default 10; 1 with --quick)")
    parser.add_argument("--pool-size", type=int, default=20, help="server pool size, router and PgBouncer (20)")
    parser.add_argument(
        "--pgbouncer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include PgBouncer when its binary is installed (default on)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs) afterwards")
    return parser


if __name__ == "__main__":
    sys.exit(main())
