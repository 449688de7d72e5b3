"""Online rebalancing (issue 17): what a tenant move costs the tenant being moved, and what a
rebalance costs the tenants that stay.

Owns the two figures of the issue's "Benchmark" section, each on throwaway clusters of its own
(router/testing/pgcluster.py, wal_level = logical) with the hardened deployment of
router/testing/deploy.py (context secret, the admin-owned shared `items` table protected by `rls
enable`) and the router as a `tenant-router serve` subprocess:

1. Moves under write load: one shared tenant of `--rows` rows (1 million) in `items`, loaded by
   the admin with one INSERT ... SELECT generate_series. While pgbench writes to it through the
   router as `app.<tenant>` (a custom script: BEGIN; INSERT; UPDATE; COMMIT; -c 4 -j 2, in
   back-to-back runs of `--chunk` seconds, each with its per-transaction log), the tenant is moved
   between shard_a and shard_b `--moves` times. The moves run `move_tenant`, the function
   `tenants move` runs, in this process so that its progress callback timestamps every stage:
   started, initial copy done (the first "catching up" after the copy's progress), verified,
   switched, finished. Printed: copy throughput (bytes_copied / start to verified, per move),
   catch-up (initial copy done to switched), the cutover hold p50/p99 from the moves rows
   (hold_seconds) and from the router's tenant_router_hold_seconds histogram, pgbench's failed
   transactions and max latency; then the check that no row pgbench committed is missing on the
   final shard (every INSERT carries its run, client and a per-client counter; every transaction
   in pgbench's log must have its row).
2. Rebalance time and load: `--tenants` shared tenants (2,000 rows each) placed by the ring on
   shard_a and shard_b; shards.yaml then gains shard_c and `tenant-router reload` makes the router
   pin the tenants the ring now puts on shard_c to their old shard; `rebalance apply
   --concurrency N` (the CLI, a subprocess) moves them. A fresh environment per N, so every N
   starts from the same state. pgbench writes meanwhile to `--quiet-tenants` tenants that do not
   move (same script); their throughput during the apply is printed as a ratio to before it.

The end lists the issue's bar (cutover hold p99 <= 250 ms: HOLDS or DOES NOT HOLD, which does not
change the exit code) and the correctness checks (no failed transaction, no row lost, every move
finished, every tenant's rows where the catalog places it), which do: exit 1 if one fails.

Must not: run the router in this process, edit the engine's settings beyond what router.yaml
says (defaults unless an option says otherwise), or leave a process behind (Workspace stops
everything on any exit).

    python -m benchmarks.rebalance [--rows 1000000] [--moves 20] [--tenants 100] [--tenant-rows 2000]
                                   [--concurrency 1,4,8] [--no-moves] [--no-rebalance] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # `python benchmarks/rebalance.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import (
    QUIET_LOAD,
    BenchError,
    PgbenchRun,
    Service,
    Target,
    Workspace,
    add_run_options,
    client_env,
    find_pgbouncer,
    load_average,
    machine_info,
    pgbench_run,
    router_command,
    wait_until_quiet,
)
from router.admin.tenant_admin import add_tenant
from router.catalog.moves import Move
from router.core.topology import Topology
from router.ops.reload import moved_tenants
from router.rebalance.apply import move_tenant
from router.rebalance.mover import MoveProgress
from router.testing import deploy
from router.testing.pgcluster import HOST, PgEnvironment, free_port, start_environment

BIG_TENANT: Final = "big"
ROUTER_POOL: Final = 20
HOLD_GOAL: Final = 0.250  # the issue's bar for the cutover hold's p99, seconds
READY_TIMEOUT: Final = 60.0
PIN_TIMEOUT: Final = 60.0

# Every transaction inserts a row naming its pgbench run, client and the client's own counter
# (pgbench keeps a client's variables from one transaction to the next), and updates one of the
# tenant's loaded rows. The log of a run lists each committed transaction by client and number:
# transaction k of client c must have left the row 'pgb:<run>:<c>:<k>'.
SCRIPT: Final = """\
\\set n :n + 1
\\set id random(:lo, :hi)
BEGIN;
INSERT INTO items (name) VALUES ('pgb:' || :run || ':' || :client_id || ':' || :n);
UPDATE items SET name = 'upd:' || :n WHERE id = :id;
COMMIT;
"""
ROW_NAME: Final = re.compile(r"^pgb:(\d+):(\d+):(\d+)$")
CUTOVER_LINE: Final = re.compile(
    r"cutover: acknowledged ([\d.]+) ms, caught up ([\d.]+) ms, switched ([\d.]+) ms, released ([\d.]+) ms"
)


# --- pure figures --------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank q-quantile (0 < q <= 1) of `values`; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def median(values: Iterable[float]) -> float | None:
    found = list(values)
    return statistics.median(found) if found else None


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a Prometheus histogram's cumulative (upper bound, count) buckets, by
    linear interpolation inside the bucket it falls in (as PromQL's histogram_quantile); the
    highest finite bound if it falls in +Inf; None for an empty histogram."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def histogram_delta(
    after: Sequence[tuple[float, float]], before: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The cumulative buckets of what was observed between two scrapes."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in sorted(after)]


def parse_histogram(text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of histogram `name` in a /metrics exposition."""
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == name + "_bucket":
                buckets.append((float(sample.labels["le"]), float(sample.value)))
    return sorted(buckets)


@dataclass(frozen=True)
class LoggedTransaction:
    """One line of a pgbench -l log: client, its transaction number (from 0), latency (None: the
    transaction failed), and when it ended (epoch seconds)."""

    client: int
    number: int
    latency_us: int | None
    ended: float


def parse_pgbench_log(lines: Iterable[str]) -> Iterator[LoggedTransaction]:
    """pgbench -l lines: `client_id transaction_no time script_no time_epoch time_us [...]`,
    `time` being "failed" (or "skipped") for a transaction that did not commit."""
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or not fields[0].isdigit() or not fields[1].isdigit():
            continue
        ended = int(fields[4]) + int(fields[5]) / 1e6
        latency = int(fields[2]) if fields[2].isdigit() else None
        yield LoggedTransaction(int(fields[0]), int(fields[1]), latency, ended)


def missing_rows(committed: dict[tuple[int, int], int], present: dict[tuple[int, int], set[int]]) -> int:
    """Rows pgbench committed that are not there: (run, client) -> transactions it logged as
    committed (numbered 1..k in the rows), against (run, client) -> the numbers found."""
    lost = 0
    for key, count in committed.items():
        found = present.get(key, set())
        lost += sum(1 for n in range(1, count + 1) if n not in found)
    return lost


def throughput(ends: Sequence[float], start: float, stop: float) -> float | None:
    """Transactions per second that ended within [start, stop)."""
    if stop <= start:
        return None
    return sum(1 for t in ends if start <= t < stop) / (stop - start)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.0f} ms"


@dataclass(frozen=True)
class Check:
    """A verdict printed at the end: a correctness check (a failure fails the run) or a bar of the
    issue (printed HOLDS or DOES NOT HOLD; it does not change the exit code, as in run.py)."""

    ok: bool
    text: str
    bar: bool = False

    def render(self) -> str:
        if self.bar:
            return f"{'HOLDS' if self.ok else 'DOES NOT HOLD'}: {self.text}"
        return f"{'ok' if self.ok else 'FAILED'}: {self.text}"


def fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


# --- pgbench in back-to-back runs ----------------------------------------------------------------


@dataclass
class ChunkRun:
    run: int
    result: PgbenchRun
    transactions: list[LoggedTransaction]


class PgbenchLoop:
    """pgbench with SCRIPT against one tenant, in runs of `chunk` seconds one after the other
    until stopped (a move's length is not known beforehand, and a killed pgbench prints nothing);
    the gap between runs is a reconnect, a few milliseconds."""

    def __init__(
        self,
        target: Target,
        workdir: Path,
        *,
        lo: int,
        hi: int,
        clients: int,
        threads: int,
        chunk: float,
        first_run: int = 1,
    ) -> None:
        self.target = target
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.script = workdir / "script.sql"
        self.script.write_text(SCRIPT)
        self.lo, self.hi = lo, hi
        self.clients, self.threads, self.chunk = clients, threads, chunk
        self.next_run = first_run
        self.runs: list[ChunkRun] = []
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"pgbench-{target.user}", daemon=True)

    def start(self) -> PgbenchLoop:
        self.started = time.time()
        self._thread.start()
        return self

    def stop(self) -> list[ChunkRun]:
        """Let the current run end (at most `chunk` seconds), then return every run."""
        self._stop.set()
        self._thread.join()
        return self.runs

    def _loop(self) -> None:
        while not self._stop.is_set():
            run = self.next_run
            self.next_run += 1
            prefix = self.workdir / f"log{run}"
            args = [
                "-n",
                "-f",
                str(self.script),
                "-c",
                str(self.clients),
                "-j",
                str(self.threads),
                "-T",
                f"{self.chunk:g}",
                "-l",
                "--log-prefix",
                str(prefix),
                "-D",
                "n=0",
                "-D",
                f"run={run}",
                "-D",
                f"lo={self.lo}",
                "-D",
                f"hi={self.hi}",
            ]
            result = pgbench_run(self.target, args, self.chunk)
            logged: list[LoggedTransaction] = []
            for path in sorted(prefix.parent.glob(prefix.name + ".*")):
                with path.open(encoding="utf-8", errors="replace") as fh:
                    logged.extend(parse_pgbench_log(fh))
            self.runs.append(ChunkRun(run, result, logged))
            if result.exit_code != 0 and not result.transactions:
                break  # the router is gone or refuses: the caller sees the errors


def tenant_target(port: int, tenant: str) -> Target:
    return Target(f"router as {tenant}", port, f"{deploy.APP_USER}.{tenant}", deploy.APP_PASSWORD, "app")


def failed_transactions(runs: Sequence[ChunkRun]) -> int:
    """Failed transactions over the runs: what pgbench printed, or its log when that says more."""
    printed = sum(r.result.failed_transactions or 0 for r in runs)
    logged = sum(1 for r in runs for t in r.transactions if t.latency_us is None)
    return max(printed, logged)


# --- environment ---------------------------------------------------------------------------------


def write_configs(ws: Workspace, env: PgEnvironment, workers: int) -> tuple[Path, int, int]:
    port, http_port = free_port(), free_port()
    path = deploy.write_configs(
        ws.dir / "router",
        env,
        listen_port=port,
        http_port=http_port,
        pool={"size": ROUTER_POOL},
        extra={"workers": workers},
    )
    return path, port, http_port


def start_router(ws: Workspace, config_path: Path, port: int) -> Service:
    service = ws.add(Service("router", router_command(config_path), config_path.parent / "router.log"))
    service.wait_ready(port, READY_TIMEOUT)
    return service


async def admin_conn(env: PgEnvironment, shard: str) -> Any:
    return await asyncpg.connect(env.shard_dsn(shard, env.SUPERUSER, env.SUPERUSER_PASSWORD))


def scrape(http_port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{http_port}/metrics", timeout=10) as response:
        return str(response.read().decode("utf-8"))


def cli(config_path: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    command = [*router_command(config_path)[:-1], *args]  # [..., "--config", FILE, "serve"]: not serve
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=client_env())


async def rows_by_name(env: PgEnvironment, shard: str, tenant: str) -> dict[tuple[int, int], set[int]]:
    """(run, client) -> the counters of pgbench's rows of `tenant` on `shard`."""
    conn = await admin_conn(env, shard)
    try:
        names = await conn.fetch("SELECT name FROM items WHERE tenant_id = $1 AND name LIKE 'pgb:%'", tenant)
    finally:
        await conn.close()
    found: dict[tuple[int, int], set[int]] = defaultdict(set)
    for record in names:
        match = ROW_NAME.match(record["name"])
        if match:
            found[(int(match.group(1)), int(match.group(2)))].add(int(match.group(3)))
    return found


def committed_counts(runs: Sequence[ChunkRun]) -> dict[tuple[int, int], int]:
    """(run, client) -> transactions pgbench logged as committed: its counter went 1..k."""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for run in runs:
        for txn in run.transactions:
            if txn.latency_us is not None:
                counts[(run.run, txn.client)] += 1
    return counts


# --- figure 1: moves under write load ------------------------------------------------------------


@dataclass
class MoveTiming:
    """One move: its catalog row's figures and the stage times its progress reported."""

    move_id: int
    source: str
    target: str
    bytes_copied: int
    rows_copied: int
    hold_seconds: float | None
    attempts: int
    seconds_to_copied: float | None  # started -> initial copy done
    seconds_to_verified: float | None  # started -> verified
    catch_up_seconds: float | None  # initial copy done -> switched
    cutover_seconds: float | None  # verified -> switched
    verify_seconds: float | None  # the comparison after the verification hold: "verifying" -> verified
    total_seconds: float  # started -> cleaned
    load: str  # the load average when it ended
    cutover_parts_ms: list[float] = field(default_factory=list)  # acknowledged, caught up, switched, released

    @property
    def copy_mb_per_s(self) -> float | None:
        """The issue's figure: bytes_copied over the time from the start to verified."""
        if not self.seconds_to_verified:
            return None
        return self.bytes_copied / 1e6 / self.seconds_to_verified

    @property
    def initial_copy_mb_per_s(self) -> float | None:
        """bytes_copied over the time from the start to the initial copy's end."""
        if not self.seconds_to_copied:
            return None
        return self.bytes_copied / 1e6 / self.seconds_to_copied


class StageClock:
    """Timestamps of a move's progress reports: the first time each activity was seen."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seen: dict[str, float] = {}
        self.copying_seen = False
        self.copy_done: float | None = None
        self._catching_up_reports = 0

    def progress(self, report: MoveProgress) -> None:
        now = time.monotonic()
        activity = report.activity
        self.seen.setdefault(activity, now)
        if activity.startswith("copying ("):
            self.copying_seen = True
        elif activity == "catching up" and self.copy_done is None:
            # The stage's own report comes first (the subscription was just made); the copy is
            # done at the first "catching up" of the wait loop: after its copy progress, or the
            # second such report when the copy ended before the first poll.
            self._catching_up_reports += 1
            if self.copying_seen or self._catching_up_reports >= 2:
                self.copy_done = now

    def since_start(self, at: float | None) -> float | None:
        return None if at is None else at - self.started


class CutoverLog(logging.Handler):
    """Collects the mover's debug line that splits each cutover hold into its parts."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.parts: dict[int, list[float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = CUTOVER_LINE.search(record.getMessage())
        if match and record.args and isinstance(record.args, tuple):
            self.parts[int(str(record.args[0]))] = [float(g) for g in match.groups()]


async def run_one_move(config_path: Path, tenant: str, to_shard: str, cutovers: CutoverLog) -> MoveTiming:
    config, topology = deploy.load(config_path)
    clock = StageClock()
    report = await move_tenant(config, topology, tenant, to_shard, on_progress=clock.progress)
    ended = time.monotonic()
    if not report.ok or len(report.finished) != 1:
        problems = [why for _m, why in report.failed] + [m.last_error or "rolled back" for m in report.aborted]
        raise BenchError(f"the move of {tenant} to {to_shard} did not finish: {'; '.join(problems)}")
    move: Move = report.finished[0]
    verified = clock.seen.get("verified")
    switched = clock.seen.get("switched")
    verifying = clock.seen.get("verifying")
    return MoveTiming(
        move_id=move.move_id,
        source=move.source,
        target=move.target,
        bytes_copied=move.bytes_copied,
        rows_copied=move.rows_copied,
        hold_seconds=move.hold_seconds,
        attempts=move.attempts,
        seconds_to_copied=clock.since_start(clock.copy_done),
        seconds_to_verified=clock.since_start(verified),
        catch_up_seconds=None if clock.copy_done is None or switched is None else switched - clock.copy_done,
        cutover_seconds=None if verified is None or switched is None else switched - verified,
        verify_seconds=None if verified is None or verifying is None else verified - verifying,
        total_seconds=ended - clock.started,
        load=load_average(),
        cutover_parts_ms=cutovers.parts.get(move.move_id, []),
    )


async def load_big_tenant(env: PgEnvironment, shard: str, rows: int) -> tuple[int, int]:
    conn = await admin_conn(env, shard)
    try:
        await conn.execute(
            "INSERT INTO items (tenant_id, name) SELECT $1, 'row ' || g FROM generate_series(1, $2::int) g",
            BIG_TENANT,
            rows,
        )
        await conn.execute("VACUUM ANALYZE items")
        lo, hi = await conn.fetchrow("SELECT min(id), max(id) FROM items WHERE tenant_id = $1", BIG_TENANT)
    finally:
        await conn.close()
    return int(lo), int(hi)


def figure_moves(ws: Workspace, args: argparse.Namespace) -> dict[str, Any]:
    env = start_environment(ws.dir / "pg", shard_count=2)
    ws.env = env
    config_path, port, http_port = write_configs(ws, env, args.workers)
    config, topology = deploy.load(config_path)
    asyncio.run(deploy.seed(config, topology, [(BIG_TENANT, "shared", "shard_a")]))
    loaded = time.monotonic()
    lo, hi = asyncio.run(load_big_tenant(env, "shard_a", args.rows))
    print(
        f"loaded {args.rows:,} rows of tenant {BIG_TENANT} on shard_a in {time.monotonic() - loaded:.1f}s", flush=True
    )
    router = start_router(ws, config_path, port)
    metrics_before = parse_histogram(scrape(http_port), "tenant_router_hold_seconds")
    cutovers = CutoverLog()
    mover_log = logging.getLogger("router.rebalance.mover")
    mover_log.setLevel(logging.DEBUG)
    mover_log.addHandler(cutovers)
    loop = PgbenchLoop(
        tenant_target(port, BIG_TENANT),
        ws.dir / "pgbench-big",
        lo=lo,
        hi=hi,
        clients=args.clients,
        threads=2,
        chunk=args.chunk,
    ).start()
    timings: list[MoveTiming] = []
    shards = ["shard_b", "shard_a"]
    try:
        time.sleep(min(5.0, args.chunk))  # the load runs before the first move starts
        for i in range(args.moves):
            timing = asyncio.run(run_one_move(config_path, BIG_TENANT, shards[i % 2], cutovers))
            timings.append(timing)
            print(
                f"move {i + 1:2}/{args.moves}: {timing.source} -> {timing.target}: {timing.rows_copied:,} rows,"
                f" {timing.bytes_copied / 1e6:.0f} MB, copy {fmt(timing.copy_mb_per_s)} MB/s,"
                f" catch-up {fmt(timing.catch_up_seconds, '.1f', 's')}, hold {ms(timing.hold_seconds)}"
                f" (parts {'/'.join(f'{p:.0f}' for p in timing.cutover_parts_ms)} ms), attempts {timing.attempts},"
                f" total {timing.total_seconds:.1f}s, load {timing.load}",
                flush=True,
            )
            if not router.alive():
                raise BenchError(f"the router exited:\n{router.tail()}")
    finally:
        runs = loop.stop()
        mover_log.removeHandler(cutovers)
    metrics_after = parse_histogram(scrape(http_port), "tenant_router_hold_seconds")
    final = shards[(args.moves - 1) % 2] if args.moves else "shard_a"
    other = "shard_a" if final == "shard_b" else "shard_b"
    present = asyncio.run(rows_by_name(env, final, BIG_TENANT))
    left_behind = asyncio.run(rows_by_name(env, other, BIG_TENANT))
    committed = committed_counts(runs)
    return moves_summary(args, timings, runs, committed, present, left_behind, metrics_before, metrics_after)


def moves_summary(
    args: argparse.Namespace,
    timings: list[MoveTiming],
    runs: list[ChunkRun],
    committed: dict[tuple[int, int], int],
    present: dict[tuple[int, int], set[int]],
    left_behind: dict[tuple[int, int], set[int]],
    metrics_before: list[tuple[float, float]],
    metrics_after: list[tuple[float, float]],
) -> dict[str, Any]:
    holds = [t.hold_seconds for t in timings if t.hold_seconds is not None]
    router_holds = histogram_delta(metrics_after, metrics_before)
    latencies = [t.latency_us for r in runs for t in r.transactions if t.latency_us is not None]
    errors = sorted({e for r in runs for e in r.result.errors})
    part_names = ("acknowledged", "caught_up", "switched", "released")
    parts = {
        name: median(t.cutover_parts_ms[i] for t in timings if len(t.cutover_parts_ms) == 4)
        for i, name in enumerate(part_names)
    }
    return {
        "rows": args.rows,
        "moves": len(timings),
        "pgbench": {
            "clients": args.clients,
            "runs": len(runs),
            "transactions": len(latencies),
            "failed": failed_transactions(runs),
            "errors": errors[:6],
            "max_latency_ms": max(latencies) / 1e3 if latencies else None,
            "p99_latency_ms": (percentile(latencies, 0.99) or 0) / 1e3 if latencies else None,
        },
        "copy_mb_per_s_median": median(t.copy_mb_per_s for t in timings if t.copy_mb_per_s is not None),
        "bytes_copied_median": median(t.bytes_copied for t in timings),
        "initial_copy_mb_per_s_median": median(
            t.initial_copy_mb_per_s for t in timings if t.initial_copy_mb_per_s is not None
        ),
        "verify_seconds_median": median(t.verify_seconds for t in timings if t.verify_seconds is not None),
        "copy_seconds_median": median(t.seconds_to_copied for t in timings if t.seconds_to_copied is not None),
        "catch_up_seconds_median": median(t.catch_up_seconds for t in timings if t.catch_up_seconds is not None),
        "catch_up_seconds_max": max(
            (t.catch_up_seconds for t in timings if t.catch_up_seconds is not None), default=None
        ),
        "cutover_seconds_median": median(t.cutover_seconds for t in timings if t.cutover_seconds is not None),
        "move_seconds_median": median(t.total_seconds for t in timings),
        "hold_p50_s": percentile(holds, 0.5),
        "hold_p99_s": percentile(holds, 0.99),
        "hold_max_s": max(holds, default=None),
        "cutover_parts_ms_median": parts,
        "cutover_attempts": sum(t.attempts for t in timings),
        "router_holds": int(router_holds[-1][1]) if router_holds else 0,
        "router_hold_p50_s": histogram_quantile(router_holds, 0.5),
        "router_hold_p99_s": histogram_quantile(router_holds, 0.99),
        "router_hold_buckets": router_holds,
        "rows_committed": sum(committed.values()),
        "rows_missing": missing_rows(committed, present),
        "rows_on_final_shard": sum(len(v) for v in present.values()),
        "rows_left_on_other_shard": sum(len(v) for v in left_behind.values()),
        "per_move": [
            asdict(t) | {"copy_mb_per_s": t.copy_mb_per_s, "initial_copy_mb_per_s": t.initial_copy_mb_per_s}
            for t in timings
        ],
    }


def print_moves(result: dict[str, Any]) -> list[Check]:
    pg = result["pgbench"]
    parts = result["cutover_parts_ms_median"]
    print(f"\n== Moves under write load: 1 shared tenant of {result['rows']:,} rows, {result['moves']} moves ==")
    print(
        f"copy throughput (bytes_copied / start to verified), median: {fmt(result['copy_mb_per_s_median'])} MB/s"
        f" ({fmt(result['bytes_copied_median'] and result['bytes_copied_median'] / 1e6, '.0f')} MB per move;"
        f" initial copy done after {fmt(result['copy_seconds_median'], '.1f', 's')}:"
        f" {fmt(result['initial_copy_mb_per_s_median'])} MB/s up to there)"
    )
    print(
        f"catch-up (initial copy done to switched), median: {fmt(result['catch_up_seconds_median'], '.1f', 's')},"
        f" max {fmt(result['catch_up_seconds_max'], '.1f', 's')}; of which the comparison after the"
        f" verification hold {fmt(result['verify_seconds_median'], '.1f', 's')}, verified to switched"
        f" {fmt(result['cutover_seconds_median'], '.2f', 's')}"
    )
    print(f"whole move (started to cleaned), median: {fmt(result['move_seconds_median'], '.1f', 's')}")
    print(
        f"cutover hold (moves.hold_seconds): p50 {ms(result['hold_p50_s'])}, p99 {ms(result['hold_p99_s'])},"
        f" max {ms(result['hold_max_s'])}; {result['cutover_attempts']} cutover attempts for {result['moves']} moves"
    )
    print(
        "  its parts (mover's debug log), median: " + ", ".join(f"{k} {fmt(v, '.0f', ' ms')}" for k, v in parts.items())
    )
    print(
        f"router's tenant_router_hold_seconds ({result['router_holds']} holds: verification and cutover,"
        f" per worker): p50 {ms(result['router_hold_p50_s'])}, p99 {ms(result['router_hold_p99_s'])}"
        " (interpolated in the histogram's buckets)"
    )
    print(
        f"pgbench (-c {pg['clients']}, {pg['runs']} runs): {pg['transactions']:,} transactions,"
        f" failed {pg['failed']}, max latency {fmt(pg['max_latency_ms'], '.0f', ' ms')},"
        f" p99 {fmt(pg['p99_latency_ms'], '.1f', ' ms')}"
    )
    for line in pg["errors"]:
        print(f"  pgbench: {line}")
    print(
        f"rows: {result['rows_committed']:,} committed by pgbench, {result['rows_missing']} of them missing on the"
        f" final shard ({result['rows_on_final_shard']:,} there), {result['rows_left_on_other_shard']} left on"
        " the other shard"
    )
    p99 = result["hold_p99_s"]
    return [
        Check(
            p99 is not None and p99 <= HOLD_GOAL,
            f"issue 17: cutover hold p99 {ms(p99)} <= {HOLD_GOAL * 1e3:.0f} ms",
            bar=True,
        ),
        Check(pg["failed"] == 0 and not pg["errors"], f"pgbench failed transactions: {pg['failed']} (must be 0)"),
        Check(result["rows_missing"] == 0, f"rows pgbench committed and missing: {result['rows_missing']} (must be 0)"),
        Check(result["moves"] == result.get("moves_asked", result["moves"]), f"{result['moves']} moves finished"),
    ]


# --- figure 2: rebalance time and load -----------------------------------------------------------


def tenant_ids(count: int) -> list[str]:
    return [f"t{i:03d}" for i in range(count)]


async def load_tenants(env: PgEnvironment, placed: dict[str, str], rows: int) -> dict[str, tuple[int, int]]:
    """`rows` rows per tenant on its shard, ids contiguous per tenant; tenant -> (min id, max id)."""
    ranges: dict[str, tuple[int, int]] = {}
    for shard in sorted(set(placed.values())):
        tenants = sorted(t for t, s in placed.items() if s == shard)
        conn = await admin_conn(env, shard)
        try:
            await conn.execute(
                "INSERT INTO items (tenant_id, name) SELECT t, 'row ' || g"
                " FROM unnest($1::text[]) t, generate_series(1, $2::int) g ORDER BY t, g",
                tenants,
                rows,
            )
            await conn.execute("VACUUM ANALYZE items")
            for record in await conn.fetch("SELECT tenant_id, min(id) lo, max(id) hi FROM items GROUP BY tenant_id"):
                ranges[record["tenant_id"]] = (int(record["lo"]), int(record["hi"]))
        finally:
            await conn.close()
    return ranges


async def wait_for_pins(env: PgEnvironment, schema: str, expected: int) -> int:
    deadline = time.monotonic() + PIN_TIMEOUT
    conn = await asyncpg.connect(env.catalog_dsn())
    try:
        while True:
            pins = int(await conn.fetchval(f"SELECT count(*) FROM {schema}.reload_pins"))
            if pins >= expected or time.monotonic() > deadline:
                return pins
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def rows_per_shard(env: PgEnvironment) -> dict[str, dict[str, int]]:
    """shard -> tenant -> rows of `items` there."""
    found: dict[str, dict[str, int]] = {}
    for shard in env.shards:
        conn = await admin_conn(env, shard)
        try:
            records = await conn.fetch("SELECT tenant_id, count(*) n FROM items GROUP BY tenant_id")
            found[shard] = {r["tenant_id"]: int(r["n"]) for r in records}
        finally:
            await conn.close()
    return found


async def add_tenants(config_path: Path, tenants: list[str]) -> dict[str, str]:
    config, topology = deploy.load(config_path)
    placed = await deploy.seed(config, topology, [])  # catalog and the protected `items`: every shard
    two = _without(topology, "shard_c", config_path.parent / "shards.yaml")
    for tenant in tenants:
        placed[tenant] = (await add_tenant(config, two, tenant, "shared")).shard
    return placed


def _without(topology: Topology, shard: str, path: Path) -> Topology:
    """Rewrite shards.yaml without `shard`; the full text stays in `<path>.full`."""
    text = path.read_text()
    path.with_suffix(".yaml.full").write_text(text)
    doc = yaml.safe_load(text)
    del doc["shards"][shard]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    config_dir = path.parent
    _config, smaller = deploy.load(config_dir / "router.yaml")
    return smaller


def figure_rebalance(ws: Workspace, args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    env = start_environment(ws.dir / "pg", shard_count=3)
    ws.env = env
    config_path, port, _http = write_configs(ws, env, args.workers)
    config, full = deploy.load(config_path)
    tenants = tenant_ids(args.tenants)
    placed = asyncio.run(add_tenants(config_path, tenants))
    ranges = asyncio.run(load_tenants(env, placed, args.tenant_rows))
    _config, two = deploy.load(config_path)
    moving = {m.tenant: m for m in moved_tenants(((t, None) for t in tenants), two, full)}
    quiet = _spread([t for t in tenants if t not in moving], placed, args.quiet_tenants)
    router = start_router(ws, config_path, port)
    shards_file = config_path.parent / "shards.yaml"
    shards_file.write_text(shards_file.with_suffix(".yaml.full").read_text())
    reload = cli(config_path, "reload", timeout=60)
    if reload.returncode != 0:
        raise BenchError(f"tenant-router reload failed:\n{reload.stdout}{reload.stderr}")
    pins = asyncio.run(wait_for_pins(env, config.catalog.schema, len(moving)))
    print(
        f"N={concurrency}: {len(tenants)} tenants, {len(moving)} pinned by the reload ({pins} pins), quiet: "
        + ", ".join(f"{t} ({placed[t]})" for t in quiet),
        flush=True,
    )
    loops = [
        PgbenchLoop(
            tenant_target(port, tenant),
            ws.dir / f"pgbench-{tenant}",
            lo=ranges[tenant][0],
            hi=ranges[tenant][1],
            clients=args.quiet_clients,
            threads=1,
            chunk=args.chunk,
        ).start()
        for tenant in quiet
    ]
    try:
        time.sleep(args.before)
        before_start = loops[0].started + args.warmup if loops else time.time()
        apply_start = time.time()
        applied = cli(config_path, "rebalance", "apply", "--concurrency", str(concurrency))
        apply_end = time.time()
    finally:
        runs = [run for loop in loops for run in loop.stop()]
    if not router.alive():
        raise BenchError(f"the router exited:\n{router.tail()}")
    wall = apply_end - apply_start
    ends = [t.ended for r in runs for t in r.transactions if t.latency_us is not None]
    before = throughput(ends, before_start, apply_start)
    during = throughput(ends, apply_start, apply_end)
    counts = asyncio.run(rows_per_shard(env))
    misplaced = _misplaced(asyncio.run(_placements(config_path, tenants)), counts, tenants)
    moved_line = next((line for line in applied.stdout.splitlines() if " moved, " in line), "")
    holds = asyncio.run(_hold_seconds(config_path))
    failed = failed_transactions(runs)
    return {
        "concurrency": concurrency,
        "tenants": len(tenants),
        "moving": len(moving),
        "pins": pins,
        "exit_code": applied.returncode,
        "apply_summary": moved_line,
        "apply_errors": []
        if applied.returncode == 0
        else [ln for ln in applied.stderr.splitlines() if ln.strip()][-6:],
        "apply_seconds": _apply_seconds(moved_line),
        "wall_seconds": wall,
        "quiet_tenants": quiet,
        "quiet_tps_before": before,
        "quiet_tps_during": during,
        "ratio": during / before if during is not None and before else None,
        "pgbench_failed": failed,
        "pgbench_errors": sorted({e for r in runs for e in r.result.errors})[:6],
        "hold_p50_s": percentile(holds, 0.5),
        "hold_p99_s": percentile(holds, 0.99),
        "misplaced": misplaced,
        "load_average_after": load_average(),
    }


def _apply_seconds(summary: str) -> float | None:
    """The seconds `rebalance apply` reports itself ("... in 12.3s"): without the CLI's start."""
    match = re.search(r" in ([\d.]+)s$", summary)
    return float(match.group(1)) if match else None


def _spread(staying: list[str], placed: dict[str, str], count: int) -> list[str]:
    """`count` tenants that stay, alternating between their shards."""
    by_shard: dict[str, list[str]] = defaultdict(list)
    for tenant in staying:
        by_shard[placed[tenant]].append(tenant)
    chosen: list[str] = []
    queues = [by_shard[s] for s in sorted(by_shard)]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


async def _placements(config_path: Path, tenants: list[str]) -> dict[str, str]:
    from router.admin.tenant_admin import list_tenants

    config, topology = deploy.load(config_path)
    return {view.tenant.id: view.shard for view in await list_tenants(config, topology) if view.tenant.id in tenants}


async def _hold_seconds(config_path: Path) -> list[float]:
    from router.catalog.moves import MoveStore

    config, _topology = deploy.load(config_path)
    store = MoveStore(config.catalog.dsn, config.catalog.schema)
    return [m.hold_seconds for m in await store.list() if m.hold_seconds is not None]


def _misplaced(placement: dict[str, str], counts: dict[str, dict[str, int]], tenants: list[str]) -> list[str]:
    """Tenants whose rows are not all, and only, on the shard the catalog places them on."""
    wrong = []
    for tenant in tenants:
        where = [shard for shard, rows in counts.items() if rows.get(tenant)]
        if where != [placement.get(tenant)]:
            wrong.append(f"{tenant}: placed on {placement.get(tenant)}, rows on {', '.join(where) or 'no shard'}")
    return wrong


def print_rebalance(results: list[dict[str, Any]]) -> list[Check]:
    if not results:
        return []
    first = results[0]
    print(
        f"\n== Rebalance: {first['tenants']} shared tenants on shard_a, shard_b; shard_c added; "
        f"{first['moving']} tenants move (fresh environment per N) =="
    )
    print(
        "| N | wall time (apply's own) | moves | quiet tps before | during | during/before"
        " | hold p50 | hold p99 | pgbench failed |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    checks: list[Check] = []
    for r in results:
        moves = (r["apply_summary"] or f"exit {r['exit_code']}").split(" in ")[0]
        print(
            f"| {r['concurrency']} | {r['wall_seconds']:.1f}s ({fmt(r['apply_seconds'], '.1f', 's')}) | {moves}"
            f" | {fmt(r['quiet_tps_before'], '.0f')} | {fmt(r['quiet_tps_during'], '.0f')}"
            f" | {fmt(r['ratio'], '.2f', 'x')} | {ms(r['hold_p50_s'])} | {ms(r['hold_p99_s'])}"
            f" | {r['pgbench_failed']} |"
        )
        for line in r["apply_errors"] + r["pgbench_errors"] + r["misplaced"][:5]:
            print(f"  N={r['concurrency']}: {line}")
        checks.append(
            Check(r["exit_code"] == 0 and not r["misplaced"], f"N={r['concurrency']}: every tenant's rows on its shard")
        )
        checks.append(
            Check(
                r["pgbench_failed"] == 0,
                f"N={r['concurrency']}: quiet tenants' failed transactions {r['pgbench_failed']}",
            )
        )
    return checks


# --- the command ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rebalance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the moved tenant (%(default)s)")
    parser.add_argument("--moves", type=int, default=20, help="moves back and forth (%(default)s)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients on the moved tenant (%(default)s)")
    parser.add_argument("--tenants", type=int, default=100, help="tenants of the rebalance (%(default)s)")
    parser.add_argument("--tenant-rows", type=int, default=2000, help="rows per tenant (%(default)s)")
    parser.add_argument("--concurrency", default="1,4,8", help="`rebalance apply --concurrency` values (%(default)s)")
    parser.add_argument("--quiet-tenants", type=int, default=4, help="tenants that stay, under pgbench (%(default)s)")
    parser.add_argument("--quiet-clients", type=int, default=1, help="pgbench clients per quiet tenant (%(default)s)")
    parser.add_argument("--before", type=float, default=20.0, help="seconds of load before the apply (%(default)s)")
    parser.add_argument("--warmup", type=float, default=3.0, help="first seconds of load not counted (%(default)s)")
    parser.add_argument("--chunk", type=float, default=10.0, help="seconds per pgbench run (%(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="router worker processes (%(default)s)")
    parser.add_argument("--no-moves", dest="moves_figure", action="store_false", help="skip figure 1")
    parser.add_argument("--no-rebalance", dest="rebalance_figure", action="store_false", help="skip figure 2")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 rows, 2 moves, 12 tenants, N=2")
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.moves, args.tenants, args.tenant_rows, args.concurrency = 20_000, 2, 12, 200, "2"
        args.before, args.chunk, args.quiet_tenants, args.warmup = 5.0, 4.0, 2, 1.0
    args.concurrency_values = [int(v) for v in str(args.concurrency).split(",") if v.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rows < 1 or args.moves < 0 or args.tenants < 2 or any(n < 1 for n in args.concurrency_values):
        print("error: --rows, --tenants and --concurrency must be positive", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.monotonic()
    if args.wait_quiet:
        wait_until_quiet(QUIET_LOAD, 180)
    info = machine_info(find_pgbouncer())
    info.pop("pgbouncer", None)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    payload: dict[str, Any] = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "json"}}
    checks: list[Check] = []
    codes: list[int] = []
    if args.moves_figure:
        ws = Workspace(keep=args.keep)

        def moves_body() -> int:
            result = figure_moves(ws, args)
            result["moves_asked"] = args.moves
            payload["moves"] = result
            checks.extend(print_moves(result))
            return 0

        codes.append(ws.run_alone(moves_body))
    if args.rebalance_figure:
        results: list[dict[str, Any]] = []
        for n in args.concurrency_values:
            ws = Workspace(keep=args.keep)

            def rebalance_body(ws: Workspace = ws, n: int = n) -> int:
                result = figure_rebalance(ws, args, n)
                results.append(result)
                print(
                    f"N={n}: {result['apply_summary']} (wall {result['wall_seconds']:.1f}s), quiet tps"
                    f" {fmt(result['quiet_tps_before'], '.0f')} -> {fmt(result['quiet_tps_during'], '.0f')}",
                    flush=True,
                )
                return 0

            codes.append(ws.run_alone(rebalance_body))
        payload["rebalance"] = results
        checks.extend(print_rebalance(results))
    print(
        f"\nload average at start {info.get('load average at start')}, at end {load_average()};"
        f" run took {time.monotonic() - started:.0f}s"
    )
    for check in checks:
        print(check.render())
    code = max(codes, default=0) or (0 if all(c.ok for c in checks if not c.bar) else 1)
    payload["checks"] = [asdict(c) for c in checks]
    payload["exit_code"] = code
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
        print(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
