"""The cost of the entered tenant (router/admin/rls.py): point selects on a protected table, a legacy-policy table
and an unprotected one, through the same hardened router, in one run.

Owns: three identical tables on the shard, owned by the admin, each with 1,000 rows of the
benchmark's tenant and SELECT granted to the router role:
- `items` (`protected`): `tenant-router rls enable items`, the policy comparing with the tenant the
  router entered with its signature (router.enter_tenant, once per tenant switch);
- `items_legacy` (`legacy`): row-level security with the policy of the unsigned setup,
  `tenant_id = current_setting('app.tenant_id', true)`. UNSAFE: a client can set that setting to
  another tenant's id; measured only as the yardstick of a check that costs nothing;
- `items_plain` (`unprotected`): no row-level security.
Then one router (hardened: context secret, LOGIN-only role) and pgbench with the custom script
`SELECT name FROM <table> WHERE id = :id` (`-M simple`, `-c 4` by default) against each table in turn,
in rounds (the order rotated per round); each table's median run counts. Prints tps, the ratios
protected/unprotected and legacy/unprotected, and the bar: protected >= 0.9x unprotected.

Must not: run a router in this process, or leave anything behind (the Workspace stops the router
and every cluster on any exit).

    python -m benchmarks.rls_cost [--duration 10] [--rounds 5] [--clients 4] [--workers 1] [--quick]
                                  [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

if __package__ in (None, ""):  # `python benchmarks/rls_cost.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    QUIET_LOAD,
    ROUTER_ROLE,
    SETTING,
    TENANT,
    PgbenchRun,
    Service,
    ServiceDied,
    Target,
    Workspace,
    add_run_options,
    check_alive,
    find_pgbouncer,
    load_average,
    machine_info,
    pgbench_run,
    postgres_cpu_seconds,
    seed_catalog,
    start_router,
    wait_until_quiet,
    write_router_config,
)
from router.admin.rls_enable import enable_rls
from router.isolation import quote_ident, quote_literal
from router.testing import deploy
from router.testing.pgcluster import PgEnvironment

ROWS: Final = 1_000
CLIENTS: Final = 4  # as the issue measured
BAR: Final = 0.9  # protected >= 0.9x unprotected (issue 15, item 2)
Verdict = tuple[bool | None, str]


@dataclass(frozen=True)
class Table:
    name: str
    label: str
    what: str
    unsafe: bool = False


PROTECTED: Final = Table("items", "protected", "rls enable: policy on the tenant entered with its signature")
LEGACY: Final = Table(
    "items_legacy",
    "legacy",
    "policy on plain current_setting('app.tenant_id'): UNSAFE, a client can forge it",
    unsafe=True,
)
UNPROTECTED: Final = Table("items_plain", "unprotected", "no row-level security")
TABLES: Final = (PROTECTED, LEGACY, UNPROTECTED)


@dataclass
class CostRun(PgbenchRun):
    """One pgbench run on one table; `round` 0 is the warm-up."""

    table: str = ""
    round: int = 0
    # CPU per transaction, in µs, over the run: less sensitive than tps to what else the machine runs.
    postgres_us_per_txn: float | None = None
    router_us_per_txn: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.tps is not None and not self.failed_transactions


# --- the tables ----------------------------------------------------------------------------------


def _table_sql(table: Table) -> list[str]:
    name, role = quote_ident(table.name), quote_ident(ROUTER_ROLE)
    statements = [
        f"DROP TABLE IF EXISTS {name}",
        f"CREATE TABLE {name} (id bigint PRIMARY KEY, tenant_id text NOT NULL, name text NOT NULL)",
        f"INSERT INTO {name} SELECT g, {quote_literal(TENANT)}, 'name ' || g FROM generate_series(1, {ROWS}) AS g",
        f"ANALYZE {name}",
        f"GRANT SELECT ON {name} TO {role}",
    ]
    if table is LEGACY:
        condition = f"tenant_id = current_setting({quote_literal(SETTING)}, true)"
        statements += [
            f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY",
            f"CREATE POLICY legacy_isolation ON {name} USING ({condition}) WITH CHECK ({condition})",
        ]
    return statements


async def create_tables(env: PgEnvironment, config_path: Path) -> list[str]:
    """The three tables as the admin on every shard, then `rls enable items`; returns its report."""
    for shard in env.shards:
        conn = await asyncpg.connect(env.shard_dsn(shard, env.SUPERUSER, env.SUPERUSER_PASSWORD))
        try:
            for table in TABLES:
                for statement in _table_sql(table):
                    await conn.execute(statement)
        finally:
            await conn.close()
    config, topology = deploy.load(config_path)
    return await enable_rls(config, topology, PROTECTED.name, "tenant_id")


def write_scripts(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    scripts = {}
    for table in TABLES:
        path = scripts[table.name] = directory / f"{table.name}.sql"
        path.write_text(f"\\set id random(1, {ROWS})\nSELECT name FROM {table.name} WHERE id = :id;\n")
    return scripts


# --- the runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """Where the runs happen: the router pgbench goes through, and the shard's data directory."""

    target: Target
    router: Service
    datadir: Path
    clients: int
    duration: float


def measure(stage: Stage, script: Path, table: Table, round_number: int, duration: float) -> CostRun:
    args = ["-n", "-T", f"{duration:g}", "-c", str(stage.clients), "-j", str(min(2, stage.clients)), "-M", "simple"]
    postgres_before, router_before = postgres_cpu_seconds(stage.datadir), stage.router.cpu_seconds()
    run = pgbench_run(stage.target, [*args, "-f", str(script)], duration)
    result = CostRun(table=table.label, round=round_number, **asdict(run))
    postgres_after, router_after = postgres_cpu_seconds(stage.datadir), stage.router.cpu_seconds()
    if result.transactions:
        if postgres_before is not None and postgres_after is not None:
            result.postgres_us_per_txn = (postgres_after - postgres_before) * 1e6 / result.transactions
        if router_before is not None and router_after is not None:
            result.router_us_per_txn = (router_after - router_before) * 1e6 / result.transactions
    return result


def run(ws: Workspace, *, rounds: int, clients: int, duration: float, workers: int, warmup: float) -> list[CostRun]:
    """The section on a running environment whose catalog holds tenant `bench`: tables, `rls
    enable`, a router of its own (stopped at the end) and `rounds` interleaved rounds."""
    assert ws.env is not None
    directory = ws.dir / "rls-cost"
    service, target = start_router("router-rls", directory / "router", ws.env, workers=workers, pool={"size": 20})
    ws.add(service)
    stage = Stage(target, service, next(iter(ws.env.shards.values())).datadir, clients, duration)
    results: list[CostRun] = []
    try:
        for line in asyncio.run(create_tables(ws.env, directory / "router" / "router.yaml")):
            print(f"rls enable: {line}", flush=True)
        scripts = write_scripts(directory / "scripts")
        print(
            f"\nrls cost: pgbench -n -M simple -c {clients} -T {duration:g}, custom script"
            f" `SELECT name FROM <table> WHERE id = :id` over {ROWS:,} rows, through {target.name}"
            f" ({workers} worker(s), hardened), {rounds} rounds",
            flush=True,
        )
        for table in TABLES:  # warm-up: server sessions, plan and function caches
            measure(stage, scripts[table.name], table, 0, warmup)
        for round_number in range(1, rounds + 1):
            shift = (round_number - 1) % len(TABLES)
            for table in TABLES[shift:] + TABLES[:shift]:
                result = measure(stage, scripts[table.name], table, round_number, duration)
                results.append(result)
                _progress(result)
                check_alive([service])
    except ServiceDied as exc:
        print(f"\nstopping early: {exc}", flush=True)
        results.append(CostRun(-2, None, None, None, None, None, [str(exc)], table="(run)"))
    finally:
        ws.stop(service)
    return results


def _progress(result: CostRun) -> None:
    status = "ok" if result.ok else f"FAILED (exit {result.exit_code})"
    tps = "-" if result.tps is None else f"{result.tps:,.0f}"
    cpu = f"postgres {_us(result.postgres_us_per_txn)}, router {_us(result.router_us_per_txn)} µs/txn"
    print(f"  round {result.round}  {result.table:<12} tps {tps:>9}  {cpu}  {status}", flush=True)
    for line in result.errors[:3]:
        print(f"      {line}", flush=True)


# --- the report ----------------------------------------------------------------------------------


def medians(results: list[CostRun]) -> dict[str, float | None]:
    """Each table's median tps over its rounds (the upper middle for an even count); None when a
    run failed, so that a failure is not hidden."""
    chosen: dict[str, float | None] = {}
    for table in TABLES:
        runs = [r for r in results if r.table == table.label]
        if not runs or any(not r.ok for r in runs):
            chosen[table.label] = None
            continue
        ordered = sorted(r.tps or 0.0 for r in runs)
        chosen[table.label] = ordered[len(ordered) // 2]
    return chosen


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def report(results: list[CostRun]) -> None:
    if not results:
        return
    mid = medians(results)
    print("\n## The cost of the entered tenant (pgbench point selects through the hardened router)\n")
    rows = [["table", "median tps", "min-max tps", "vs unprotected", "postgres µs/txn", "router µs/txn", "what"]]
    for table in TABLES:
        runs = [r for r in results if r.table == table.label and r.ok]
        tps = [r.tps for r in runs if r.tps is not None]
        spread = f"{min(tps):,.0f}-{max(tps):,.0f}" if tps else "-"
        median = mid[table.label]
        rows.append(
            [
                table.label + (" (UNSAFE)" if table.unsafe else ""),
                "FAILED" if median is None else f"{median:,.0f}",
                spread,
                _ratio(median, mid[UNPROTECTED.label]),
                _us(_median([r.postgres_us_per_txn for r in runs if r.postgres_us_per_txn is not None])),
                _us(_median([r.router_us_per_txn for r in runs if r.router_us_per_txn is not None])),
                table.what,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    failed = [r for r in results if not r.ok]
    for r in failed[:6]:
        print(f"\n{r.table} round {r.round}: exit code {r.exit_code}")
        for line in r.errors:
            print(f"    {line}")


def verdicts(results: list[CostRun]) -> list[Verdict]:
    bar = f"rls cost: protected >= {BAR:g}x unprotected (point selects through the hardened router)"
    if not results:
        return [(None, f"bar ({bar}): NOT EVALUATED (the section did not run)")]
    mid = medians(results)
    protected, unprotected, legacy = mid[PROTECTED.label], mid[UNPROTECTED.label], mid[LEGACY.label]
    if unprotected is None:
        return [(None, f"bar ({bar}): NOT EVALUATED (an unprotected run failed)")]
    if protected is None:
        return [(False, f"bar ({bar}): DOES NOT HOLD (a protected run failed)")]
    ratio = protected / unprotected
    line = f"bar ({bar}): {'HOLDS' if ratio >= BAR else 'DOES NOT HOLD'}: {protected:,.0f} / {unprotected:,.0f} tps"
    line += f" = {ratio:.2f}x (legacy, UNSAFE: {_ratio(legacy, unprotected)})"
    return [(ratio >= BAR, line)]


def as_json(results: list[CostRun]) -> dict[str, Any]:
    return {"runs": [asdict(r) for r in results], "median_tps": medians(results)}


# --- alone ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rls_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="seconds per pgbench run (default 10; 3 with --quick)")
    parser.add_argument("--rounds", type=int, help="runs per table, interleaved; the median counts (5; 1 --quick)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="pgbench clients (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the router (default 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 s runs, 1 round")
    add_run_options(parser)
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    if duration <= 0 or rounds < 1 or args.clients < 1 or args.workers < 1:
        print("error: --duration, --rounds, --clients and --workers must be positive", file=sys.stderr)
        return 2
    ws = Workspace(keep=args.keep)
    results: list[CostRun] = []
    info: dict[str, str] = {}
    started = time.monotonic()

    def body() -> int:
        if args.wait_quiet:
            wait_until_quiet(QUIET_LOAD, 180)
        info.update(machine_info(find_pgbouncer()))
        print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
        env = ws.start_environment()
        config_path, _port = write_router_config(ws.dir / "seed", env, workers=1, pool={}, auth_method="scram-sha-256")
        asyncio.run(seed_catalog(config_path, env))
        results.extend(
            run(ws, rounds=rounds, clients=args.clients, duration=duration, workers=args.workers, warmup=1.0)
        )
        report(results)
        print(f"\nload average: {info.get('load average at start')} at start, {load_average()} at end\n")
        for _holds, line in verdicts(results):
            print(line)
        return 0 if results and all(r.ok for r in results) else 1

    code = ws.run_alone(body)
    print(f"run took {time.monotonic() - started:.0f}s")
    if args.json:
        payload = {"machine": info, "rls_cost": as_json(results), "exit_code": code}
        payload["checks"] = [{"holds": holds, "verdict": line} for holds, line in verdicts(results)]
        Path(args.json).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
