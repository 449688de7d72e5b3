"""Read scaling: pgbench select-only through the router with 0 and 1 streaming replicas of the shard,
side by side, with the share of the statements each PostgreSQL server ran.

Owns: a streaming replica of the shard (pg_basebackup after `pgbench -i`, so it has the tables,
then waited for until it has replayed the primary's WAL), two routers with `reads: {mode: auto}`
that differ only in shards.yaml (`router-0-replicas`: the primary alone; `router-1-replica`: the
primary and the replica), and the per-server counts. pgbench -S runs one target at a time (direct,
the two routers; the order rotated per cell). Each server's share comes from
`pg_stat_user_tables.idx_scan` of pgbench_accounts, read on the primary and on the replica before and
after each run: a standby counts its own scans, and each -S statement is exactly one index scan,
whereas `pg_stat_database.xact_commit` (also counted on a standby) includes the router's health
checks and every other session. Server backends flush their counters lazily (pooled server
connections stay open, and an idle backend flushes within 10 s), so after each run the counts are
read until they add up to pgbench's transactions.

Must not: run a router in this process, write to the shard (a replica that lags gets no reads), or
leave a router or the replica behind: both are stopped at the end of the section, and the
Workspace sweeps every cluster under its temp dir on any exit.

    python -m benchmarks.read_scaling [--duration 10] [--clients 16] [--modes simple,prepared]
                                      [--workers N] [--scale 10] [--quick] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # `python benchmarks/read_scaling.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    ERROR_LINES,
    QUIET_LOAD,
    BenchError,
    Service,
    ServiceDied,
    Target,
    Workspace,
    add_run_options,
    check_alive,
    find_pgbouncer,
    load_average,
    machine_info,
    seed_catalog,
    select_only,
    start_router,
    wait_until_quiet,
    write_router_config,
)
from router.testing.pgcluster import HOST, SHARD_DB, PgCluster, PgClusterError

MODES: Final = ("simple", "extended", "prepared")
DEFAULT_MODES: Final = ("simple", "prepared")
DEFAULT_CLIENTS: Final = (16,)
NO_REPLICA: Final = "router-0-replicas"
ONE_REPLICA: Final = "router-1-replica"
READS: Final = {"reads": {"mode": "auto"}}
CATCH_UP_TIMEOUT: Final = 120.0  # seconds for a fresh replica to replay the primary's WAL
COUNT_TIMEOUT: Final = 20.0  # an idle backend flushes its counters within 10 s (PGSTAT_IDLE_INTERVAL)
COUNT_POLL: Final = 0.5
REPLICA_BAR: Final = 0.95  # share of the -S statements the 1-replica router must send to the replica
LOG_PROBLEM: Final = re.compile(r" (WARNING|ERROR|CRITICAL) ")
ACCOUNTS_SCANS: Final = "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_tables WHERE relname = 'pgbench_accounts'"
Verdict = tuple[bool | None, str]


# --- what is measured ----------------------------------------------------------------------------


@dataclass
class ReadResult:
    """One pgbench -S run against one target, and the index scans each server ran meanwhile."""

    target: str
    replicas: int | None  # replicas in the router's shards.yaml; None for `direct`
    mode: str
    clients: int
    duration: float
    exit_code: int
    tps: float | None = None
    latency_ms: float | None = None
    connect_ms: float | None = None
    transactions: int | None = None
    failed_transactions: int | None = None
    primary_scans: int | None = None  # pgbench_accounts index scans on the primary during the run
    replica_scans: int | None = None  # ...and on the replica
    counted_all: bool = False  # the scans added up to pgbench's transactions before COUNT_TIMEOUT
    router_cpu_pct: float | None = None  # the router's CPU time (all its processes), % of one core
    errors: list[str] = field(default_factory=list)
    router_log: list[str] = field(default_factory=list)  # the router's warnings and errors during the run

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.tps is not None and not self.failed_transactions

    @property
    def counted(self) -> int | None:
        if self.primary_scans is None or self.replica_scans is None:
            return None
        return self.primary_scans + self.replica_scans

    def share(self, server: str) -> float | None:
        """The fraction of the counted statements that `server` ("primary" or "replica") ran."""
        counted = self.counted
        if not counted:
            return None
        scans = self.primary_scans if server == "primary" else self.replica_scans
        assert scans is not None
        return scans / counted

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"primary_share": self.share("primary"), "replica_share": self.share("replica")}


@dataclass(frozen=True)
class Servers:
    """The shard's primary and its replica, whose index-scan counters give each one's share."""

    primary: PgCluster
    replica: PgCluster

    def scans(self) -> tuple[int, int]:
        return _scans(self.primary), _scans(self.replica)

    def settle(self, before: tuple[int, int], expected: int) -> tuple[tuple[int, int], bool]:
        """Scans per server since `before`, once they add up to `expected` and stop moving.

        Returns the deltas and whether they reached `expected` before COUNT_TIMEOUT.
        """
        deadline = time.monotonic() + COUNT_TIMEOUT
        last: tuple[int, int] | None = None
        while True:
            now = self.scans()
            delta = (now[0] - before[0], now[1] - before[1])
            enough = sum(delta) >= expected
            if (enough and delta == last) or time.monotonic() >= deadline:
                return delta, enough
            last = delta
            time.sleep(COUNT_POLL)


def _scans(cluster: PgCluster) -> int:
    return int(cluster.execute(ACCOUNTS_SCANS, dbname=SHARD_DB) or 0)


def make_replica(primary: PgCluster, name: str) -> PgCluster:
    """A streaming replica of `primary`, returned once it has replayed the primary's current WAL."""
    started = time.monotonic()
    replica = primary.make_replica(name)
    target = primary.execute("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    while replica.execute(f"SELECT coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false)") != "t":
        if time.monotonic() >= deadline:
            replica.stop()
            raise BenchError(f"replica {name} did not replay the primary's WAL up to {target} in {CATCH_UP_TIMEOUT:g}s")
        time.sleep(0.1)
    print(
        f"replica: {name} on {HOST}:{replica.port}, streaming from {primary.name}, replayed up to {target}"
        f" {time.monotonic() - started:.1f}s after pg_basebackup started",
        flush=True,
    )
    return replica


def _select_only(target: Target, replicas: int | None, mode: str, clients: int, duration: float) -> ReadResult:
    run = select_only(target, mode, clients, duration)
    return ReadResult(
        target=target.name, replicas=replicas, mode=mode, clients=clients, duration=duration, **asdict(run)
    )


def measure(
    servers: Servers,
    target: Target,
    service: Service | None,
    replicas: int | None,
    mode: str,
    clients: int,
    duration: float,
) -> ReadResult:
    """pgbench -S against `target`; the router's CPU time and log over it; then each server's index scans."""
    before = servers.scans()
    log_offset = _log_size(service)
    cpu_before, started = (service.cpu_seconds() if service else None), time.monotonic()
    result = _select_only(target, replicas, mode, clients, duration)
    cpu_after, elapsed = (service.cpu_seconds() if service else None), time.monotonic() - started
    if cpu_before is not None and cpu_after is not None and elapsed > 0:
        result.router_cpu_pct = 100 * (cpu_after - cpu_before) / elapsed
    (result.primary_scans, result.replica_scans), result.counted_all = servers.settle(before, result.transactions or 0)
    result.router_log = _log_problems(service, log_offset)
    return result


def _log_size(service: Service | None) -> int:
    try:
        return service.log_path.stat().st_size if service is not None else 0
    except OSError:
        return 0


def _log_problems(service: Service | None, offset: int) -> list[str]:
    """The router's distinct WARNING/ERROR lines logged since `offset` (e.g. a replica marked down)."""
    if service is None:
        return []
    try:
        with service.log_path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line.strip() for line in text.splitlines() if LOG_PROBLEM.search(line)]
    counts = Counter(line.split(" ", 2)[-1] for line in lines)  # without the timestamp
    return [line if n == 1 else f"{line}  (x{n})" for line, n in counts.items()][:ERROR_LINES]


# --- the section ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A target of this section: where pgbench connects, the router behind it, its replica count."""

    target: Target
    service: Service | None  # None for `direct`
    replicas: int | None  # None for `direct`


def _progress(result: ReadResult, label: str = "") -> None:
    status = "ok" if result.ok else f"FAILED (exit {result.exit_code})"
    cpu = "" if result.router_cpu_pct is None else f"router cpu {result.router_cpu_pct:3.0f}%  "
    counted = "" if result.counted_all else "  (counts incomplete)"
    print(
        f"  {label}{result.mode:<9} -c {result.clients:<4} {result.target:<17} "
        f"tps {_fmt(result.tps, ',.0f'):>9}  avg {_fmt(result.latency_ms, '.3f'):>7} ms  {cpu}"
        f"primary {_pct(result.share('primary')):>6}  replica {_pct(result.share('replica')):>6}  {status}{counted}",
        flush=True,
    )
    for line in [*result.errors[:3], *(f"router log: {line}" for line in result.router_log[:3])]:
        print(f"      {line}", flush=True)


def _rotated(items: list[Entry], by: int) -> list[Entry]:
    # Rotating the order per cell keeps any drift (cache warming, a noisy neighbour) off one target.
    by %= len(items)
    return items[by:] + items[:by]


def start_targets(ws: Workspace, shard: str, replica: PgCluster, workers: int, pool_size: int) -> list[Entry]:
    """direct, and two routers with `reads: auto` whose shards.yaml differ only in the replica."""
    assert ws.env is not None
    entries = [Entry(ws.direct_target(), None, None)]
    for name, count in ((NO_REPLICA, 0), (ONE_REPLICA, 1)):
        replicas = {shard: [(replica.host, replica.port)]} if count else None
        service, target = start_router(
            name, ws.dir / name, ws.env, workers=workers, pool={"size": pool_size}, replicas=replicas, extra=READS
        )
        ws.add(service)
        entries.append(Entry(target, service, count))
        print(
            f"{name}: {HOST}:{target.port}, {workers} worker(s), pool size {pool_size} per server for the instance,"
            f" reads: auto, {count} replica(s) in shards.yaml, pids {service.pids()}",
            flush=True,
        )
    return entries


def run(
    ws: Workspace, *, modes: list[str], clients: list[int], duration: float, workers: int, pool_size: int, warmup: float
) -> list[ReadResult]:
    """The section on a Workspace whose shard already holds the pgbench tables and whose catalog
    has the benchmark's tenant (run.py and main() do that); stops its routers and replica after."""
    assert ws.env is not None
    shard, primary = next(iter(ws.env.shards.items()))
    section_started = time.monotonic()
    print(
        f"\nread scaling: pgbench -S -n -T {duration:g} -j 2 through routers with reads: auto and 0 or 1 replicas"
        f" of {shard}; shares from pgbench_accounts index scans on each server",
        flush=True,
    )
    try:
        replica = make_replica(primary, f"{shard}_replica")
    except (BenchError, PgClusterError) as exc:  # the sections before this one still report
        print(f"read scaling: no replica: {exc}", flush=True)
        return [_broken("(replica)", str(exc))]
    servers = Servers(primary, replica)
    results: list[ReadResult] = []
    entries: list[Entry] = []
    try:
        try:
            entries = start_targets(ws, shard, replica, workers, pool_size)
        except BenchError as exc:
            print(f"read scaling: a router did not start: {exc}", flush=True)
            return [_broken("(routers)", str(exc))]
        routers = [e.service for e in entries if e.service is not None]
        # Also gives the router's health monitor time to measure the replica's lag: until it has,
        # reads go to the primary.
        print(f"warm-up: {warmup:g}s per target at -c {max(clients)}", flush=True)
        for e in entries:
            _progress(measure(servers, e.target, e.service, e.replicas, "simple", max(clients), warmup), "warm-up ")
        cell = 0
        for mode in modes:
            for count in clients:
                for e in _rotated(entries, cell):
                    result = measure(servers, e.target, e.service, e.replicas, mode, count, duration)
                    results.append(result)
                    _progress(result)
                    check_alive(routers)
                cell += 1
    except ServiceDied as exc:
        print(f"\nstopping early: {exc}", flush=True)
        results.append(_broken("(run)", str(exc)))
    finally:
        for e in entries:
            if e.service is not None:
                ws.stop(e.service)
        try:
            replica.stop()
        except PgClusterError as exc:  # the Workspace's sweep crash-stops it at the end anyway
            print(f"warning: could not stop the replica: {exc}", file=sys.stderr)
    print(f"read scaling: done in {time.monotonic() - section_started:.0f}s", flush=True)
    return results


def _broken(what: str, error: str) -> ReadResult:
    """A stand-in result for a section that could not run (reported as a failure)."""
    return ReadResult(target=what, replicas=None, mode="-", clients=0, duration=0, exit_code=-2, errors=[error])


# --- the report ----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _ratio(a: ReadResult | None, b: ReadResult | None) -> str:
    if a is None or b is None or not (a.ok and b.ok) or not b.tps or a is b:
        return "-"
    assert a.tps is not None
    return f"{a.tps / b.tps:.2f}x"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def _counted_cell(r: ReadResult) -> str:
    if r.counted is None or not r.transactions:
        return "-"
    return f"{r.counted / r.transactions:.3f}" + ("" if r.counted_all else " (incomplete)")


def table(results: list[ReadResult]) -> str:
    by_key = {(r.target, r.mode, r.clients): r for r in results}
    cells = sorted(
        {(r.mode, r.clients) for r in results if r.mode in MODES}, key=lambda mc: (MODES.index(mc[0]), mc[1])
    )
    rows = [
        [
            "mode",
            "clients",
            "target",
            "replicas",
            "tps",
            f"/{NO_REPLICA}",
            "/direct",
            "avg ms",
            "router cpu",
            "primary share",
            "replica share",
            "scans / pgbench txns",
        ]
    ]
    for mode, clients in cells:
        base, direct = by_key.get((NO_REPLICA, mode, clients)), by_key.get(("direct", mode, clients))
        for name in ("direct", NO_REPLICA, ONE_REPLICA):
            r = by_key.get((name, mode, clients))
            if r is None:
                continue
            rows.append(
                [
                    mode,
                    str(clients),
                    name,
                    "-" if r.replicas is None else str(r.replicas),
                    _fmt(r.tps, ",.0f") if r.ok else "FAILED",
                    _ratio(r, base),
                    _ratio(r, direct),
                    _fmt(r.latency_ms, ".3f"),
                    "-" if r.router_cpu_pct is None else f"{r.router_cpu_pct:.0f}%",
                    _pct(r.share("primary")),
                    _pct(r.share("replica")),
                    _counted_cell(r),
                ]
            )
    return _table(rows)


def failures(results: list[ReadResult]) -> list[str]:
    lines = []
    for r in results:
        if not r.ok:
            lines.append(f"{r.target} -M {r.mode} -c {r.clients}: exit code {r.exit_code}")
            if r.failed_transactions:
                lines.append(f"    failed transactions: {r.failed_transactions}")
            lines += ["    " + e for e in r.errors]
        elif r.router_log:
            lines.append(f"{r.target} -M {r.mode} -c {r.clients}: the router logged")
        lines += ["    router log: " + line for line in r.router_log]
    return lines


def report(results: list[ReadResult]) -> None:
    if not results:
        return
    print("\n## Read scaling: pgbench -S through the router with reads: auto, 0 and 1 replicas of the shard\n")
    print("tps excludes connection time. Shares: pgbench_accounts index scans (one per -S statement) on the primary")
    print("and on the replica during the run. scans / pgbench txns: both servers' scans over pgbench's transactions.")
    print("router cpu: the router's CPU time (supervisor and workers) during pgbench, as % of one core.\n")
    print(table(results))
    problems = failures(results)
    if problems:
        print("\nfailures (pgbench's first error lines) and the routers' warnings:")
        for line in problems:
            print(f"  {line}")


def verdicts(results: list[ReadResult]) -> list[Verdict]:
    """The routing checks: a 1-replica router sends the reads to the replica, a 0-replica one to the primary."""
    out: list[Verdict] = []
    checks = (
        (ONE_REPLICA, f"reads: auto sends >= {REPLICA_BAR:.0%} of pgbench -S statements to the replica", "replica"),
        (NO_REPLICA, "reads: auto with no replica runs every pgbench -S statement on the primary", "primary"),
    )
    for name, bar, server in checks:
        runs = [r for r in results if r.target == name]
        if not runs:
            out.append((None, f"check ({bar}): NOT EVALUATED (no {name} run)"))
            continue
        failed = [f"-M {r.mode} -c {r.clients}" for r in runs if not r.ok]
        uncounted = [f"-M {r.mode} -c {r.clients}" for r in runs if r.ok and (not r.counted_all or not r.counted)]
        if failed:
            out.append((False, f"check ({bar}): DOES NOT HOLD: the {name} run failed: {', '.join(failed)}"))
            continue
        if uncounted:
            out.append((None, f"check ({bar}): NOT EVALUATED (incomplete server counts: {', '.join(uncounted)})"))
            continue
        minimum = REPLICA_BAR if server == "replica" else 1.0
        holds = all((r.share(server) or 0.0) >= minimum for r in runs)
        detail = ", ".join(f"-M {r.mode} -c {r.clients} {_pct(r.share(server))} on the {server}" for r in runs)
        out.append((holds, f"check ({bar}): {'HOLDS' if holds else 'DOES NOT HOLD'}: {detail}"))
    return out


# --- on its own ----------------------------------------------------------------------------------


def _int_list(values: list[str] | None, default: tuple[int, ...], option: str) -> list[int]:
    counts = [int(part) for value in (values or []) for part in value.split(",") if part.strip()] or list(default)
    if any(c < 1 for c in counts):
        raise ValueError(f"{option} takes positive integers")
    return list(dict.fromkeys(counts))


def parse_modes(text: str) -> list[str]:
    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"--modes takes a comma list of {', '.join(MODES)}; got {text!r}")
    return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.read_scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="seconds per pgbench run (default 10; 3 with --quick)")
    parser.add_argument(
        "--clients", action="append", metavar="N[,N...]", help="client counts, repeatable or a comma list (16)"
    )
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help="pgbench -M modes (default %(default)s)")
    parser.add_argument("--workers", type=int, help="worker processes of each router (default: cores)")
    parser.add_argument("--scale", type=int, help="pgbench -i scale factor (default 10; 1 with --quick)")
    parser.add_argument("--pool-size", type=int, default=20, help="router server pool size, instance total (20)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 s runs, 1 s warm-up, scale 1")
    add_run_options(parser)
    args = parser.parse_args(argv)
    try:
        modes = parse_modes(args.modes)
        clients = _int_list(args.clients, DEFAULT_CLIENTS, "--clients")
        duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
        workers = args.workers if args.workers is not None else max(1, len(os.sched_getaffinity(0)))
        scale = args.scale if args.scale is not None else (1 if args.quick else 10)
        if duration <= 0 or workers < 1 or scale < 1 or args.pool_size < 1:
            raise ValueError("--duration, --workers, --scale and --pool-size must be positive")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ws = Workspace(keep=args.keep)
    results: list[ReadResult] = []
    started = time.monotonic()

    def body() -> int:
        if args.wait_quiet:
            wait_until_quiet(QUIET_LOAD, 180)
        print("machine: " + ", ".join(f"{k} {v}" for k, v in machine_info(find_pgbouncer()).items()), flush=True)
        env = ws.start_environment()
        ws.init_pgbench(scale)
        print(f"postgresql: catalog + 1 shard up, pgbench -i -s {scale} done in {time.monotonic() - started:.0f}s")
        config_path, _port = write_router_config(ws.dir / "seed", env, workers=1, pool={}, auth_method="scram-sha-256")
        asyncio.run(seed_catalog(config_path, env))
        results.extend(
            run(
                ws,
                modes=modes,
                clients=clients,
                duration=duration,
                workers=workers,
                pool_size=args.pool_size,
                warmup=1.0 if args.quick else 3.0,
            )
        )
        report(results)
        print(f"\nload average at end: {load_average()}\n")
        for _holds, line in verdicts(results):
            print(line)
        return 0 if results and all(r.ok for r in results) else 1

    code = ws.run_alone(body)
    print(f"run took {time.monotonic() - started:.0f}s")
    if args.json:
        payload: dict[str, Any] = {
            "read_scaling": [r.as_json() for r in results],
            "checks": [{"holds": holds, "verdict": line} for holds, line in verdicts(results)],
            "exit_code": code,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
