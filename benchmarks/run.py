"""The whole benchmark in one command: pgbench select-only through every target side by side, added
latency, idle clients, the catalog at scale and read scaling over a replica, each printed with its
ratios and the issue's bars.

Owns one run: a throwaway PostgreSQL environment (catalog + one shard, max_connections 300) in a temp
dir, pgbench tables on the shard, one `shared` tenant, PgBouncer (Debian package, transaction mode,
configured here) and two router processes started from the YAML an operator would write: one with
1 worker and one with N workers (N = cores by default), both with the same instance pool size as
PgBouncer. pgbench runs one target at a time, the order rotated per cell, and every cell is run in
several rounds (3 by default) interleaved across targets: the tables and bars use each target's
median run, and the spread over the rounds is printed beside them. Then idle_clients.py
(10 000 idle logins on a router while pgbench runs through it), catalog_scale.py (100 000
tenants), read_scaling.py (routers with `reads: auto` and 0 or 1 streaming replicas of the
shard) and rls_cost.py (point selects on a protected, a legacy-policy and a plain table) run on
the same environment. Everything runs the hardened setup (harness.py): a LOGIN-only router role,
tables owned by the admin, a context secret generated for the run.

Must not: run a router in this process, change anything outside its temp dir, or leave a process
behind: routers, PgBouncer and every cluster are stopped on any exit, Ctrl-C included.

    python -m benchmarks.run [--duration 10] [--rounds 3] [--clients 16,100] [--modes simple,extended,prepared]
                             [--workers N] [--idle-clients 10000] [--catalog-tenants 100000]
                             [--[no-]read-scaling] [--[no-]rls-cost] [--quick] [--json FILE]
                             [--no-added-latency] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import catalog_scale, idle_clients, read_scaling, rls_cost
from benchmarks.harness import (
    QUIET_LOAD,
    ServiceDied,
    Target,
    Workspace,
    check_alive,
    find_pgbouncer,
    load_average,
    machine_info,
    percentile,
    raise_nofile,
    seed_catalog,
    select_only,
    start_pgbouncer,
    start_router,
    transaction_latencies,
    wait_until_quiet,
    write_router_config,
)
from router.testing.pgcluster import HOST

MODES: Final = ("simple", "extended", "prepared")
PGBOUNCER_MISSING: Final = "pgbouncer: not installed (apt-get install pgbouncer)"
PGBOUNCER_PREPARED: Final = "no prepared-statement tracking in transaction mode (max_prepared_statements)"
Verdict = tuple[bool | None, str]  # holds (None: not evaluated), and the line that says so
QUIET_WAIT: Final = 240.0
SETUP: Final = (
    "hardened: signed tenant context (a secret generated for the run), router role LOGIN only"
    " (track_activities off), tables owned by the admin with row privileges granted to the router role"
)  # seconds to wait for a quiet machine before starting anyway


# --- what is measured ----------------------------------------------------------------------------


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
    proxy_cpu_pct: float | None = None  # the proxy's CPU time over the run (all its processes), % of one core
    proxy_cpu_us_per_txn: float | None = None  # ...and per transaction, connecting included
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.tps is not None and not self.failed_transactions


def run_select_only(target: Target, mode: str, clients: int, duration: float, log_prefix: Path | None = None) -> Result:
    extra = ["-l", f"--log-prefix={log_prefix}"] if log_prefix is not None else []
    run = select_only(target, mode, clients, duration, extra)
    result = Result(target=target.name, mode=mode, clients=clients, duration=duration, **asdict(run))
    if log_prefix is not None:
        latencies = sorted(transaction_latencies(log_prefix))
        if latencies:
            result.mean_us = sum(latencies) / len(latencies)
            result.p50_us = percentile(latencies, 0.50)
            result.p99_us = percentile(latencies, 0.99)
    return result


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


@dataclass(frozen=True)
class Names:
    """The target names of one run; `router_n` is `router_1` when N is 1."""

    router_1: str
    router_n: str
    pgbouncer: bool
    baseline: str | None = None  # the router of another checkout, 1 worker (--baseline)

    @property
    def targets(self) -> list[str]:
        names = ["direct", *(["pgbouncer"] if self.pgbouncer else []), self.router_1]
        names += [self.router_n] if self.router_n != self.router_1 else []
        return names + ([self.baseline] if self.baseline else [])

    @property
    def ratios(self) -> list[tuple[str, str]]:
        pairs = [(self.router_n, "pgbouncer"), (self.router_n, "direct"), (self.router_1, "direct")]
        pairs += [(self.router_1, self.baseline)] if self.baseline else []
        pairs += [("pgbouncer", "direct")]
        return [(a, b) for a, b in dict.fromkeys(pairs) if a in self.targets and b in self.targets]


def _cells(results: list[Result]) -> list[tuple[str, int]]:
    return sorted({(r.mode, r.clients) for r in results}, key=lambda mc: (MODES.index(mc[0]), mc[1]))


def throughput_table(results: list[Result], names: Names) -> str:
    by_key = {(r.target, r.mode, r.clients): r for r in results}
    targets, ratios = names.targets, names.ratios
    rows = [["mode", "clients", *(f"{t} tps" for t in targets), *(f"{a}/{b}" for a, b in ratios)]]
    for mode, clients in _cells(results):
        get = {t: by_key.get((t, mode, clients)) for t in targets}
        rows.append(
            [mode, str(clients), *(_tps_cell(get[t]) for t in targets), *(_ratio(get[a], get[b]) for a, b in ratios)]
        )
    return _table(rows)


def detail_table(results: list[Result], names: Names) -> str:
    by_key = {(r.target, r.mode, r.clients): r for r in results}
    targets = names.targets
    proxies = [t for t in targets if t != "direct"]
    rows = [["mode", "clients", *(f"{t} ms" for t in targets), *(f"{t} cpu" for t in proxies)]]
    for mode, clients in _cells(results):
        get = {t: by_key.get((t, mode, clients)) for t in targets}
        rows.append(
            [
                mode,
                str(clients),
                *(_fmt(r.latency_ms if (r := get[t]) else None, ".3f") for t in targets),
                *(_cpu_cell(get[t]) for t in proxies),
            ]
        )
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


def runs_by_cell(results: list[Result]) -> dict[tuple[str, str, int], list[Result]]:
    """The runs of each (target, mode, clients), in the order they ran (one per round)."""
    runs: dict[tuple[str, str, int], list[Result]] = {}
    for r in results:
        runs.setdefault((r.target, r.mode, r.clients), []).append(r)
    return runs


def median_runs(results: list[Result]) -> list[Result]:
    """One run per (target, mode, clients): the one with the median tps (the upper of the two middle
    ones for an even count), or the first failed one, so that a failure in any round is not hidden."""
    chosen = []
    for runs in runs_by_cell(results).values():
        failed = [r for r in runs if not r.ok]
        if failed:
            chosen.append(failed[0])
        else:
            ordered = sorted(runs, key=lambda r: r.tps or 0.0)
            chosen.append(ordered[len(ordered) // 2])
    return chosen


def spread_table(results: list[Result], names: Names) -> str:
    """Lowest and highest tps over the rounds, per target and cell: how far one run can be off."""
    runs = runs_by_cell(results)
    rows = [["mode", "clients", *(f"{t} min-max" for t in names.targets)]]
    for mode, clients in _cells(results):
        cells = []
        for t in names.targets:
            tps = [r.tps for r in runs.get((t, mode, clients), []) if r.ok and r.tps is not None]
            cells.append(f"{min(tps):,.0f}-{max(tps):,.0f}" if tps else "-")
        rows.append([mode, str(clients), *cells])
    return _table(rows)


def ratio_bar(results: list[Result], a: str, b: str, mode: str, clients: int, minimum: float) -> Verdict:
    """`a` reaches at least `minimum` x `b`'s tps for pgbench -S -c `clients` -M `mode`."""

    def find(target: str) -> Result | None:
        return next((r for r in results if (r.target, r.mode, r.clients) == (target, mode, clients)), None)

    ra, rb = find(a), find(b)
    bar = f"{a} >= {minimum:g}x {b} for pgbench -S -c {clients} -M {mode}"
    if ra is None or rb is None:
        return None, f"bar ({bar}): NOT EVALUATED (needs --modes {mode}, --clients {clients} and {b})"
    if not rb.ok or rb.tps is None:
        return None, f"bar ({bar}): NOT EVALUATED (the {b} run failed)"
    if not ra.ok or ra.tps is None:
        return False, f"bar ({bar}): DOES NOT HOLD (the {a} run failed)"
    ratio = ra.tps / rb.tps
    verdict = "HOLDS" if ratio >= minimum else "DOES NOT HOLD"
    return ratio >= minimum, f"bar ({bar}): {verdict}: {ra.tps:,.0f} / {rb.tps:,.0f} tps = {ratio:.2f}x"


def prepared_bar(results: list[Result], names: Names) -> Verdict:
    runs = [r for r in results if r.mode == "prepared" and r.target.startswith("router-")]
    bar = "pgbench -M prepared works through the router"
    if not runs:
        return None, f"bar ({bar}): NOT EVALUATED (needs --modes prepared)"
    failed = [f"{r.target} -c {r.clients}" for r in runs if not r.ok]
    if failed:
        return False, f"bar ({bar}): DOES NOT HOLD: failed: {', '.join(failed)}"
    done = ", ".join(f"{r.target} -c {r.clients} {r.tps:,.0f} tps" for r in runs if r.tps is not None)
    return True, f"bar ({bar}): HOLDS: no errors, no failed transactions ({done})"


def baseline_bars(results: list[Result], latency: list[Result], names: Names) -> list[Verdict]:
    """This checkout's router against the --baseline one, same sitting: at least 0.97x the
    baseline's median tps in every cell, and no more latency added at -c 1 (within 3%: the spread of
    one 10 s run)."""
    if names.baseline is None:
        return []
    cells = sorted({(r.mode, r.clients) for r in results if r.target == names.baseline})
    bars = [ratio_bar(results, names.router_1, names.baseline, mode, clients, 0.97) for mode, clients in cells]
    direct = next((r for r in latency if r.target == "direct"), None)
    ours = next((r for r in latency if r.target == names.router_1), None)
    theirs = next((r for r in latency if r.target == names.baseline), None)
    bar = f"{names.router_1} adds no more latency than {names.baseline} at -c 1 (mean, within 3%)"
    if direct is None or ours is None or theirs is None or None in (direct.mean_us, ours.mean_us, theirs.mean_us):
        bars.append((None, f"bar ({bar}): NOT EVALUATED (needs the added-latency section)"))
    else:
        assert direct.mean_us is not None and ours.mean_us is not None and theirs.mean_us is not None
        added, before = ours.mean_us - direct.mean_us, theirs.mean_us - direct.mean_us
        holds = ours.mean_us <= theirs.mean_us * 1.03
        verdict = "HOLDS" if holds else "DOES NOT HOLD"
        bars.append((holds, f"bar ({bar}): {verdict}: +{added:.0f} µs against +{before:.0f} µs"))
    return bars


def throughput_bars(results: list[Result], names: Names) -> list[tuple[bool | None, str]]:
    rn, r1 = names.router_n, names.router_1
    return [
        ratio_bar(results, rn, "pgbouncer", "simple", 100, 0.9),
        ratio_bar(results, rn, "direct", "simple", 100, 0.7),
        prepared_bar(results, names),
        ratio_bar(results, rn, "direct", "simple", 16, 0.5),
        *([ratio_bar(results, r1, "direct", "simple", 16, 0.5)] if r1 != rn else []),
    ]


def failures(results: list[Result]) -> str:
    """Each failing target and cell once, with the first failed run's errors and, over rounds, how
    many of its runs failed."""
    lines = []
    for (target, mode, clients), cell in runs_by_cell(results).items():
        failed = [r for r in cell if not r.ok]
        if not failed:
            continue
        first = failed[0]
        rounds = f", {len(failed)} of {len(cell)} runs" if len(cell) > 1 else ""
        lines.append(f"{target} -M {mode} -c {clients}: exit code {first.exit_code}{rounds}")
        if (target, mode) == ("pgbouncer", "prepared"):
            lines.append(f"    (expected below PgBouncer 1.21: {PGBOUNCER_PREPARED})")
        if first.failed_transactions:
            lines.append(f"    failed transactions: {first.failed_transactions}")
        lines += ["    " + e for e in first.errors]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    duration: float
    clients: list[int]
    modes: list[str]
    scale: int
    pool_size: int
    workers: int
    warmup: float
    latency_duration: float | None  # None: no added-latency section
    rounds: int  # each throughput cell is run this many times per target; the median run counts
    pgbouncer: bool
    handover: str | None  # the routers' pool.handover; None: the router's default
    idle_clients: int  # 0: no idle-clients section
    catalog_tenants: int  # 0: no catalog section
    read_scaling: bool  # the read-scaling section (a replica, routers with reads: auto)
    rls_cost: bool  # the signed tenant context's cost: protected, legacy-policy and plain tables
    wait_quiet: bool
    baseline: Path | None = None  # another checkout's router, measured beside this one (--baseline)


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


def measure(ws: Workspace, target: Target, mode: str, clients: int, duration: float, log: Path | None = None) -> Result:
    """One pgbench run, noting how much CPU the proxy behind `target` (all its processes) used meanwhile."""
    service = next((s for s in ws.services if s.name == target.name), None)
    before, started = (service.cpu_seconds() if service else None), time.monotonic()
    result = run_select_only(target, mode, clients, duration, log)
    after, elapsed = (service.cpu_seconds() if service else None), time.monotonic() - started
    if before is not None and after is not None and elapsed > 0:
        result.proxy_cpu_pct = 100 * (after - before) / elapsed
        if result.transactions:
            result.proxy_cpu_us_per_txn = 1e6 * (after - before) / result.transactions
    return result


def start_targets(plan: Plan, ws: Workspace, names: Names, bouncer_bin: str | None) -> list[Target]:
    """Both routers (same catalog, same pool total) and PgBouncer, each on a port of its own."""
    assert ws.env is not None
    env = ws.env
    seed_config, _ = write_router_config(ws.dir / "seed", env, workers=1, pool={}, auth_method="scram-sha-256")
    asyncio.run(seed_catalog(seed_config, env))
    targets = [ws.direct_target()]
    if bouncer_bin is not None:
        service, bouncer = start_pgbouncer(bouncer_bin, ws.dir, env, plan.pool_size)
        ws.add(service)
        targets.append(bouncer)
        print(f"pgbouncer: {HOST}:{bouncer.port}, transaction mode, default_pool_size {plan.pool_size}")
    elif plan.pgbouncer:
        print(PGBOUNCER_MISSING)
    for name, workers in dict.fromkeys([(names.router_1, 1), (names.router_n, plan.workers)]):
        pool: dict[str, Any] = {"size": plan.pool_size}
        if plan.handover is not None:
            pool["handover"] = plan.handover
        service, router = start_router(name, ws.dir / name, env, workers=workers, pool=pool)
        ws.add(service)
        targets.append(router)
        print(
            f"{name}: {HOST}:{router.port}, {workers} worker(s), pool size {plan.pool_size} for the instance,"
            f" handover {plan.handover or 'default'},"
            f" pids {service.pids()}",
            flush=True,
        )
    if names.baseline is not None and plan.baseline is not None:
        service, router = start_router(
            names.baseline,
            ws.dir / names.baseline,
            env,
            workers=1,
            pool={"size": plan.pool_size},
            checkout=plan.baseline,
        )
        ws.add(service)
        targets.append(router)
        print(f"{names.baseline}: {HOST}:{router.port}, 1 worker, the router of {plan.baseline}", flush=True)
    return targets


def throughput(plan: Plan, ws: Workspace, targets: list[Target]) -> tuple[list[Result], list[Result]]:
    print(f"warm-up: {plan.warmup:g}s per target at -c {max(plan.clients)}", flush=True)
    for target in targets:
        warm = run_select_only(target, "simple", max(plan.clients), plan.warmup)
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
        # Rounds outermost: a slow spell of the machine then falls on one run of every target, not
        # on all runs of one.
        for round_number in range(1, plan.rounds + 1):
            if plan.rounds > 1:
                print(f"round {round_number} of {plan.rounds}", flush=True)
            for mode in plan.modes:
                for clients in plan.clients:
                    for target in _rotated(targets, cell):
                        result = measure(ws, target, mode, clients, plan.duration)
                        results.append(result)
                        _progress(result)
                        check_alive(ws.services)
                    cell += 1
        if plan.latency_duration is not None:
            print(f"\nadded latency: pgbench -S -n -M simple -c 1 -j 1 -T {plan.latency_duration:g} -l", flush=True)
            logs = ws.dir / "latency-logs"
            logs.mkdir()
            for target in targets:
                result = measure(ws, target, "simple", 1, plan.latency_duration, logs / target.name)
                latency.append(result)
                _progress(result)
                check_alive(ws.services)
    except ServiceDied as exc:
        print(f"\nstopping early: {exc}", flush=True)
        results.append(Result(target="(run)", mode="-", clients=0, duration=0, exit_code=-2, errors=[str(exc)]))
    return results, latency


def benchmark(plan: Plan, ws: Workspace, report: dict[str, Any]) -> int:
    """Everything between an empty temp dir and the printed report."""
    if plan.wait_quiet:
        wait_until_quiet(QUIET_LOAD, QUIET_WAIT)
    bouncer_bin = find_pgbouncer() if plan.pgbouncer else None
    info = machine_info(bouncer_bin)
    report["machine"] = info
    report["setup"] = SETUP
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(f"setup: {SETUP}", flush=True)
    # Inherited by the routers started below: 10 000 idle clients need as many descriptors on each side.
    raise_nofile(2 * plan.idle_clients + 4096)

    started = time.monotonic()
    env = ws.start_environment()
    ws.init_pgbench(plan.scale)
    print(f"postgresql: catalog + 1 shard up, pgbench -i -s {plan.scale} done in {time.monotonic() - started:.0f}s")
    names = Names("router-1", f"router-{plan.workers}", bouncer_bin is not None, "before-1" if plan.baseline else None)
    targets = start_targets(plan, ws, names, bouncer_bin)
    report["targets"] = [t.name for t in targets]

    every_run, latency = throughput(plan, ws, targets)
    results = median_runs(every_run)
    report["throughput"] = [asdict(r) for r in results]
    report["throughput_every_round"] = [asdict(r) for r in every_run]
    report["added_latency"] = [asdict(r) for r in latency]
    report["load average after throughput"] = load_average()
    for service in list(ws.services):  # idle now; the sections below start routers of their own
        ws.stop(service)

    costs: list[rls_cost.CostRun] = []
    if plan.rls_cost:
        report["load average before rls cost"] = load_average()
        costs = rls_cost.run(
            ws, rounds=max(plan.rounds, 3), clients=rls_cost.CLIENTS, duration=plan.duration, workers=1, warmup=1.0
        )
        report["rls_cost"] = rls_cost.as_json(costs)
    idle: list[idle_clients.IdleResult] = []
    if plan.idle_clients:
        report["load average before idle clients"] = load_average()
        idle = idle_clients.run(ws, sorted({1, plan.workers}), plan.idle_clients, plan.duration, plan.pool_size)
        report["idle_clients"] = [asdict(r) | {"per_client_kib": r.per_client_kib} for r in idle]
    catalog: catalog_scale.CatalogResult | None = None
    reload: catalog_scale.RouterUnderReload | None = None
    if plan.catalog_tenants:
        report["load average before catalog"] = load_average()
        catalog = catalog_scale.run(env.catalog_dsn(), plan.catalog_tenants)
        report["catalog"] = catalog_scale.as_json(catalog)
        reload = catalog_scale.router_under_reload(ws, plan.catalog_tenants, plan.duration)
        report["router_under_reload"] = asdict(reload)
    reads: list[read_scaling.ReadResult] = []
    if plan.read_scaling:  # last: its replica would otherwise replay alongside the other sections
        report["load average before read scaling"] = load_average()
        reads = read_scaling.run(
            ws,
            modes=list(read_scaling.DEFAULT_MODES),
            clients=list(read_scaling.DEFAULT_CLIENTS),
            duration=plan.duration,
            workers=plan.workers,
            pool_size=plan.pool_size,
            warmup=plan.warmup,
        )
        report["read_scaling"] = [r.as_json() for r in reads]

    rounds = f"the median of {plan.rounds} runs per target and cell" if plan.rounds > 1 else "one run per cell"
    print(f"\n## Throughput: pgbench -S (tps excluding connection time; {rounds})\n")
    print(throughput_table(results, names))
    if plan.rounds > 1:
        print(f"\nSpread over the {plan.rounds} rounds (tps):\n")
        print(spread_table(every_run, names))
    print("\nms: pgbench's average latency. cpu: the proxy's CPU time (all its processes) during the run,")
    print("as % of one core and per transaction.\n")
    print(detail_table(results, names))
    if latency:
        print("\n## Added latency (-c 1, simple; µs from pgbench's per-transaction log)\n")
        print(latency_table(latency))
    problems = failures(every_run + latency)
    if problems:
        print("\n## Failures (pgbench's first error lines)\n")
        print(problems)
    rls_cost.report(costs)
    idle_clients.report(idle)
    if catalog is not None:
        catalog_scale.report(catalog)
    if reload is not None:
        catalog_scale.report_reload(reload)
    read_scaling.report(reads)

    report["machine"]["load average at end"] = load_average()
    print(f"\nload average: {info['load average at start']} at start, {load_average()} at end")
    bars = throughput_bars(results, names) + baseline_bars(results, latency, names)
    if plan.rls_cost:
        bars += rls_cost.verdicts(costs)
    bars += idle_clients.verdicts(idle)
    if catalog is not None:
        bars.append(catalog_scale.verdict(catalog))
    if plan.read_scaling:
        bars += read_scaling.verdicts(reads)
    report["bars"] = [{"holds": holds, "verdict": line} for holds, line in bars]
    print()
    for _holds, line in bars:
        print(line)
    # PgBouncer is the yardstick, not the subject: its failures are reported but do not fail the run.
    broken = any(not r.ok for r in every_run + latency if r.target != "pgbouncer")
    broken |= any(not r.router_alive or r.loaded_tps is None for r in idle)
    broken |= catalog is not None and any(s.errors for s in catalog.sizes)
    broken |= reload is not None and bool(reload.small.errors or reload.large.errors)
    broken |= any(not r.ok for r in reads)
    broken |= any(not r.ok for r in costs)
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ws = Workspace(keep=args.keep)
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": {**asdict(plan), "baseline": str(plan.baseline) if plan.baseline else None},
    }
    started = time.monotonic()
    code = ws.run_alone(lambda: benchmark(plan, ws, report))
    report["seconds"] = round(time.monotonic() - started)
    print(f"run took {report['seconds']}s")
    if args.json:
        report["exit_code"] = code
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    return code


def _client_counts(values: list[str] | None) -> list[int]:
    counts = [int(part) for value in (values or ["16,100"]) for part in value.split(",") if part.strip()]
    if not counts or any(c < 1 for c in counts):
        raise ValueError("--clients takes positive integers")
    return list(dict.fromkeys(counts))


def make_plan(args: argparse.Namespace) -> Plan:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"--modes takes a comma list of {', '.join(MODES)}; got {args.modes!r}")
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    if duration <= 0:
        raise ValueError("--duration must be positive")
    latency = args.latency_duration if args.latency_duration is not None else (3.0 if args.quick else 10.0)
    workers = args.workers if args.workers is not None else max(1, len(os.sched_getaffinity(0)))
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1:
        raise ValueError("--rounds must be at least 1")
    idle = args.idle_clients if args.idle_clients is not None else (0 if args.quick else 10_000)
    tenants = args.catalog_tenants if args.catalog_tenants is not None else (0 if args.quick else 100_000)
    if idle < 0 or tenants < 0:
        raise ValueError("--idle-clients and --catalog-tenants take 0 (off) or a positive count")
    return Plan(
        duration=duration,
        clients=_client_counts(args.clients),
        modes=modes,
        scale=args.scale if args.scale is not None else (1 if args.quick else 10),
        pool_size=args.pool_size,
        workers=workers,
        warmup=1.0 if args.quick else 3.0,
        latency_duration=latency if args.added_latency else None,
        rounds=rounds,
        pgbouncer=args.pgbouncer,
        handover=args.handover,
        idle_clients=idle,
        catalog_tenants=tenants,
        read_scaling=args.read_scaling if args.read_scaling is not None else not args.quick,
        rls_cost=args.rls_cost,
        wait_quiet=args.wait_quiet,
        baseline=args.baseline.resolve() if args.baseline is not None else None,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="pgbench -S against PostgreSQL, PgBouncer and the router (1 and N workers); idle clients; catalog.",
    )
    parser.add_argument("--duration", type=float, help="seconds per pgbench run (default 10; 3 with --quick)")
    parser.add_argument(
        "--clients", action="append", metavar="N[,N...]", help="client counts, repeatable or a comma list (16,100)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="pgbench -M modes (default %(default)s)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="runs per target and throughput cell, interleaved; the median counts (default 3; 1 with --quick)",
    )
    parser.add_argument("--workers", type=int, help="worker processes of the second router (default: cores)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 3 s runs, scale 1, no idle-clients, catalog or read-scaling section",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure and the machine to FILE")
    parser.add_argument(
        "--added-latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="-c 1 latency section: average, p50, p99 per target and what each proxy adds (default on)",
    )
    parser.add_argument("--latency-duration", type=float, help="seconds for each -c 1 latency run (default 10)")
    parser.add_argument(
        "--idle-clients", type=int, metavar="N", help="idle clients held on a router, 0 = off (10000; 0 with --quick)"
    )
    parser.add_argument(
        "--catalog-tenants", type=int, metavar="N", help="tenants in the catalog section, 0 = off (100000; 0 --quick)"
    )
    parser.add_argument(
        "--read-scaling",
        action=argparse.BooleanOptionalAction,
        help="pgbench -S -c 16 through routers with reads: auto and 0 or 1 replicas (default on; off with --quick)",
    )
    parser.add_argument(
        "--rls-cost",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="point selects on a protected, a legacy-policy and a plain table through one router (default on)",
    )
    parser.add_argument(
        "--handover",
        choices=("exact", "tracked"),
        help="the routers' pool.handover (default: the router's own default, exact)",
    )
    parser.add_argument("--scale", type=int, help="pgbench -i scale factor (default 10; 1 with --quick)")
    parser.add_argument("--pool-size", type=int, default=20, help="server pool size per instance: routers, PgBouncer")
    parser.add_argument(
        "--pgbouncer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include PgBouncer when its binary is installed (default on)",
    )
    parser.add_argument(
        "--wait-quiet",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"wait up to {QUIET_WAIT:g}s for the load average to fall below {QUIET_LOAD:g} first (default on)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also measure the router of another checkout (e.g. a worktree of an earlier commit, built"
        " with its own setup.py build_ext) as target before-1, 1 worker, with bars: >= 0.97x its tps per"
        " cell, no more added latency",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs) afterwards")
    return parser


if __name__ == "__main__":
    sys.exit(main())
