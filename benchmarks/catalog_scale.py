"""The tenant catalog at 100 000 tenants: load time, memory, lookup cost, ring rebuild, change propagation.

Owns: catalogs of 100 and 100 000 `shared` tenants, each in a schema of its own on a real catalog
cluster (so a router already running on the default schema never sees them), filled with one COPY;
then, for each size, the router's own CatalogCache: how long `start()` (the full load a router does
at start) takes, how much memory the loaded map holds (tracemalloc, and the process's RSS on the first
load), what a lookup costs (`cache.get` alone, and with placement: `routing.place_tenant` on a Ring),
how long the event loop stalls during a periodic full reload, and how long a change made through
CatalogStore takes to reach the running cache (LISTEN/NOTIFY). Also the Ring build time for 2, 10
and 50 shards, which is what a reload of shards.yaml rebuilds.

Then the same catalog seen from a running router process (1 worker, refresh_interval 5 s): pgbench
-S -c 1 through it with only the benchmark's tenant in its catalog, and again with 100 000 more, to
show what the periodic full reloads cost the traffic (tail latency, tps, CPU, RSS).

Must not: leave tenants behind in the schema a router serves from, or keep anything once it returns.

    python -m benchmarks.catalog_scale [--tenants 100000] [--changes 20] [--duration 10] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import random
import statistics
import sys
import time
import timeit
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import uvloop

if __package__ in (None, ""):  # `python benchmarks/catalog_scale.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    FAILED_LINE,
    PGBENCH_GRACE,
    QUIET_LOAD,
    TPS_LINE,
    Service,
    Target,
    Workspace,
    error_lines,
    find_pgbouncer,
    load_average,
    machine_info,
    number,
    percentile,
    pgbench,
    seed_catalog,
    start_router,
    transaction_latencies,
    wait_until_quiet,
    write_router_config,
)
from benchmarks.harness import rss_kib as process_rss_kib
from router.catalog.cache import CatalogCache
from router.catalog.store import CatalogStore, Status, Tenant
from router.core.hashing import Ring
from router.core.routing import place_tenant
from router.core.topology import RingConfig, ServerAddress, Shard, Topology
from router.isolation import quote_ident
from router.testing import deploy

SMALL: Final = 100
MIDDLE: Final = 10_000  # between the two: shows whether a cost keeps growing with the catalog
LOOKUPS: Final = 100_000  # lookups per timing round, at every catalog size
ROUNDS: Final = 7  # timing rounds; the best one is reported (the least disturbed by anything else)
LOADS: Final = 3  # full loads timed per size; the median is reported
RING_SHARDS: Final = (2, 10, 50)
PLACEMENT_SHARDS: Final = 10
VNODES: Final = 160
BAR_RATIO: Final = 1.5  # "costs the same": within 1.5x (a cost linear in tenants would be 1000x)
CHANGE_TIMEOUT: Final = 10.0
REFRESH: Final = 3600.0  # the caches under test refresh only when told to, or on NOTIFY


@dataclass
class SizeResult:
    """One catalog size."""

    tenants: int
    insert_seconds: float = 0.0
    load_seconds: list[float] = field(default_factory=list)
    rss_delta_kib: int | None = None  # the process's RSS growth over the first load
    traced_bytes: int | None = None  # tracemalloc: what the loaded cache still holds
    traced_peak_bytes: int | None = None  # ...and the most it held during the load
    get_ns: float | None = None  # cache.get, a different tenant each call (shuffled)
    get_same_ns: float | None = None  # cache.get, the same tenant every call
    place_ns: float | None = None  # cache.get + place_tenant (ring hash for un-pinned tenants)
    refresh_seconds: float | None = None  # a periodic full reload on a running cache
    refresh_stall_ms: float | None = None  # the longest the event loop was blocked during it
    change_ms: list[float] = field(default_factory=list)  # set_status -> the running cache has it
    change_after_commit_ms: list[float] = field(default_factory=list)  # ...counted from the commit
    errors: list[str] = field(default_factory=list)

    @property
    def load_median(self) -> float | None:
        return statistics.median(self.load_seconds) if self.load_seconds else None


@dataclass
class CatalogResult:
    sizes: list[SizeResult] = field(default_factory=list)
    ring_build_ms: dict[int, float] = field(default_factory=dict)  # shards -> median build time
    placement_shards: int = PLACEMENT_SHARDS
    vnodes: int = VNODES


@dataclass
class TrafficFigures:
    """pgbench -S -c 1 through a router, from pgbench's per-transaction log."""

    tps: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    max_us: float | None = None
    over_100ms: int | None = None  # transactions slower than 100 ms
    router_cpu_pct: float | None = None
    router_rss_mib: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class RouterUnderReload:
    """One router process, first with one tenant in its catalog, then with `tenants` more."""

    tenants: int
    refresh_interval: float
    duration: float
    small: TrafficFigures = field(default_factory=TrafficFigures)
    large: TrafficFigures = field(default_factory=TrafficFigures)


# --- filling a catalog ---------------------------------------------------------------------------


def tenant_ids(count: int) -> list[str]:
    return [f"t{i:06d}" for i in range(count)]


async def copy_tenants(dsn: str, schema: str, count: int) -> float:
    """Add `count` shared, un-pinned tenants t000000... with one COPY; return its seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "tenants",
            schema_name=schema,
            columns=["id", "isolation"],
            records=[(tenant, "shared") for tenant in tenant_ids(count)],
        )
        elapsed = time.perf_counter() - started
        await conn.execute(f"ANALYZE {quote_ident(schema)}.tenants")
    finally:
        await conn.close()
    return elapsed


async def delete_tenants(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DELETE FROM {quote_ident(schema)}.tenants WHERE id ~ '^t[0-9]{{6}}$'")
    finally:
        await conn.close()


async def fill(dsn: str, schema: str, count: int) -> float:
    """A fresh catalog schema holding `count` shared, un-pinned tenants; return the COPY's seconds."""
    await drop_schema(dsn, schema)
    async with CatalogStore(dsn, schema) as store:
        await store.init_schema()
    return await copy_tenants(dsn, schema, count)


# --- measuring one size --------------------------------------------------------------------------


def _topology(shards: int) -> Topology:
    return Topology(
        shards={f"s{i:02d}": Shard(f"s{i:02d}", ServerAddress("127.0.0.1", 5432, "app"), (), 1) for i in range(shards)},
        ring=RingConfig(vnodes=VNODES),
        pins={},
        source=Path("benchmark"),
    )


def _seconds(call: Callable[[str], object], keys: list[str]) -> float:
    def loop() -> None:
        for key in keys:
            call(key)

    return timeit.timeit(loop, number=1)


def measure_lookups(caches: list[tuple[CatalogCache, SizeResult]]) -> None:
    """Lookup costs for every size, interleaved round by round so that whatever else loads the
    machine weighs on every size alike; the best round of each is kept."""
    topology = _topology(PLACEMENT_SHARDS)
    ring = Ring.from_topology(topology)
    plans: list[tuple[SizeResult, list[tuple[str, Callable[[str], object], list[str]]]]] = []
    for cache, result in caches:
        ids = tenant_ids(result.tenants)  # fresh strings, as a tenant id parsed from a login would be
        shuffled = ids * (LOOKUPS // len(ids)) + ids[: LOOKUPS % len(ids)]
        random.Random(7).shuffle(shuffled)
        get = cache.get

        def place(tenant: str, get: Callable[[str], Tenant | None] = get) -> object:
            record = get(tenant)
            assert record is not None
            return place_tenant(tenant, record.shard, topology, ring)

        calls: list[tuple[str, Callable[[str], object], list[str]]] = [
            ("get", get, shuffled),
            ("same", get, [ids[len(ids) // 2]] * LOOKUPS),
            ("place", place, shuffled),
        ]
        plans.append((result, calls))
    best: dict[tuple[int, str], float] = {}
    for _round in range(ROUNDS):
        for result, calls in plans:
            for name, call, keys in calls:
                ns = _seconds(call, keys) / len(keys) * 1e9
                key = (result.tenants, name)
                best[key] = min(best.get(key, ns), ns)
    for result, _calls in plans:
        result.get_ns = best[(result.tenants, "get")]
        result.get_same_ns = best[(result.tenants, "same")]
        result.place_ns = best[(result.tenants, "place")]


async def measure_loads(dsn: str, schema: str, result: SizeResult) -> None:
    """The full load a router does at start: timed LOADS times, RSS growth on the first, then traced."""
    for attempt in range(LOADS):
        gc.collect()
        before = process_rss_kib(os.getpid())
        cache = CatalogCache(dsn, schema, REFRESH)
        started = time.perf_counter()
        await cache.start()
        result.load_seconds.append(time.perf_counter() - started)
        if attempt == 0:
            gc.collect()
            after = process_rss_kib(os.getpid())
            if before is not None and after is not None:
                result.rss_delta_kib = after - before
        if len(cache) != result.tenants:
            result.errors.append(f"the cache loaded {len(cache)} tenants, expected {result.tenants}")
        await cache.stop()
        del cache
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        cache = CatalogCache(dsn, schema, REFRESH)
        await cache.start()
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
        result.traced_bytes, result.traced_peak_bytes = held - base, peak - base
        await cache.stop()
    finally:
        tracemalloc.stop()


async def measure_refresh(cache: CatalogCache, result: SizeResult) -> None:
    """One periodic full reload on the running cache, and the longest event-loop stall during it."""
    loop = asyncio.get_running_loop()
    stall = 0.0
    running = True

    async def ticker() -> None:
        nonlocal stall
        while running:
            before = loop.time()
            await asyncio.sleep(0)
            stall = max(stall, loop.time() - before)

    previous = cache.last_full_refresh
    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    cache.request_refresh()
    async with asyncio.timeout(60):
        while cache.last_full_refresh == previous:
            await asyncio.sleep(0.001)
    result.refresh_seconds = time.perf_counter() - started
    running = False
    await task
    result.refresh_stall_ms = stall * 1000


async def measure_changes(dsn: str, schema: str, cache: CatalogCache, count: int, result: SizeResult) -> None:
    """`count` status flips through CatalogStore, each timed until the running cache reports it."""
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[float]] = {}

    def changed(tenant: str) -> None:
        future = waiting.pop(tenant, None)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    cache.on_change = changed
    ids = tenant_ids(result.tenants)
    step = max(1, len(ids) // count)
    async with CatalogStore(dsn, schema) as store:
        for tenant in ids[::step][:count]:
            record = cache.get(tenant)
            assert record is not None
            status: Status = "suspended" if record.status == "active" else "active"
            future = waiting[tenant] = loop.create_future()
            started = time.perf_counter()
            await store.set_status(tenant, status)
            committed = time.perf_counter()
            try:
                seen = await asyncio.wait_for(future, CHANGE_TIMEOUT)
            except TimeoutError:
                result.errors.append(f"a change to {tenant} did not reach the cache within {CHANGE_TIMEOUT:g}s")
                continue
            after = cache.get(tenant)
            if after is None or after.status != status:
                result.errors.append(f"on_change fired for {tenant} but the cache shows {after}")
            result.change_ms.append((seen - started) * 1000)
            result.change_after_commit_ms.append((seen - committed) * 1000)
            await asyncio.sleep(0.02)
    cache.on_change = None


async def measure_size(dsn: str, count: int, changes: int) -> tuple[SizeResult, CatalogCache]:
    """Everything but the lookups for one size; returns the running cache the lookups will use."""
    schema = schema_for(count)
    result = SizeResult(tenants=count)
    result.insert_seconds = await fill(dsn, schema, count)
    await measure_loads(dsn, schema, result)
    cache = CatalogCache(dsn, schema, REFRESH)
    await cache.start()
    try:
        await measure_refresh(cache, result)
        await measure_changes(dsn, schema, cache, changes, result)
    except BaseException:
        await cache.stop()
        raise
    return result, cache


def schema_for(count: int) -> str:
    return f"bench_scale_{count}"


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


def measure_rings() -> dict[int, float]:
    """Median time to build the ring for 2, 10 and 50 shards of weight 1 (what a shards.yaml reload does)."""
    out: dict[int, float] = {}
    for shards in RING_SHARDS:
        topology = _topology(shards)
        times = timeit.repeat(functools.partial(Ring.from_topology, topology), number=1, repeat=5)
        out[shards] = statistics.median(times) * 1000
    return out


async def measure_all(dsn: str, tenants: int, changes: int) -> CatalogResult:
    result = CatalogResult()
    caches: list[tuple[CatalogCache, SizeResult]] = []
    try:
        for count in sorted({SMALL, min(MIDDLE, tenants), tenants}):
            print(f"  catalog of {count:,} tenants...", flush=True)
            size, cache = await measure_size(dsn, count, changes)
            result.sizes.append(size)
            caches.append((cache, size))
        print("  lookups, interleaved across sizes...", flush=True)
        measure_lookups(caches)
    finally:
        for cache, size in caches:
            await cache.stop()
            await drop_schema(dsn, schema_for(size.tenants))
    result.ring_build_ms = measure_rings()
    return result


def run(catalog_dsn: str, tenants: int = 100_000, changes: int = 20) -> CatalogResult:
    sizes = ", ".join(f"{n:,}" for n in sorted({SMALL, min(MIDDLE, tenants), tenants}))
    print(f"\ncatalog scale: {sizes} tenants, each in a schema of its own on the catalog cluster")
    # The router's own event loop, so asyncpg's reads cost what they cost in a router.
    return uvloop.run(measure_all(catalog_dsn, tenants, changes))


# --- a running router --------------------------------------------------------------------------


def _traffic(ws: Workspace, service: Service, target: Target, duration: float, label: str) -> TrafficFigures:
    logs = ws.dir / f"reload-logs-{label}"
    logs.mkdir()
    args = ["-S", "-n", "-c", "1", "-j", "1", "-M", "simple", "-T", f"{duration:g}", "-l", f"--log-prefix={logs / 'l'}"]
    cpu_before, started = service.cpu_seconds(), time.monotonic()
    proc = pgbench(target, args, timeout=duration + PGBENCH_GRACE)
    cpu_after, elapsed = service.cpu_seconds(), time.monotonic() - started
    figures = TrafficFigures(tps=number(TPS_LINE, proc.stdout))
    if proc.returncode != 0 or figures.tps is None or number(FAILED_LINE, proc.stdout):
        figures.errors = error_lines(proc) or [f"pgbench exit code {proc.returncode}"]
    latencies = sorted(transaction_latencies(logs / "l"))
    if latencies:
        figures.p50_us = percentile(latencies, 0.50)
        figures.p99_us = percentile(latencies, 0.99)
        figures.p999_us = percentile(latencies, 0.999)
        figures.max_us = float(latencies[-1])
        figures.over_100ms = sum(1 for latency in latencies if latency > 100_000)
    if cpu_before is not None and cpu_after is not None and elapsed > 0:
        figures.router_cpu_pct = 100 * (cpu_after - cpu_before) / elapsed
    figures.router_rss_mib = sum(service.rss_kib().values()) / 1024
    return figures


def router_under_reload(ws: Workspace, tenants: int, duration: float) -> RouterUnderReload:
    """pgbench -c 1 through a 1-worker router before and after `tenants` join its catalog.

    The catalog must already be seeded with the benchmark's tenant (run.py and main() do that).
    """
    assert ws.env is not None
    env = ws.env
    print(f"  a running router: pgbench -S -c 1 -T {duration:g}, then {tenants:,} tenants join its catalog", flush=True)
    service, target = start_router("reload-router", ws.dir / "reload-router", env, workers=1, pool={"size": 20})
    ws.add(service)
    config = deploy.load(service.log_path.parent / "router.yaml")[0]
    result = RouterUnderReload(tenants=tenants, refresh_interval=config.catalog.refresh_interval, duration=duration)
    dsn, schema = env.catalog_dsn(), config.catalog.schema
    try:
        result.small = _traffic(ws, service, target, duration, "small")
        uvloop.run(copy_tenants(dsn, schema, tenants))
        # Long enough for the burst of NOTIFYs to be folded into a full reload, and one periodic one.
        time.sleep(config.catalog.refresh_interval + 3)
        result.large = _traffic(ws, service, target, duration, "large")
        if not service.alive():
            result.large.errors.append(f"the router exited (code {service.process.returncode}):\n{service.tail()}")
    finally:
        ws.stop(service)
        uvloop.run(delete_tenants(dsn, schema))
    return result


# --- the report ----------------------------------------------------------------------------------


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(big: float | None, small: float | None) -> str:
    return "-" if big is None or not small else f"{big / small:.2f}x"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def table(result: CatalogResult) -> str:
    sizes = result.sizes
    first, last = sizes[0], sizes[-1]
    rows = [["figure", *(f"{s.tenants:,} tenants" for s in sizes), f"{last.tenants:,} / {first.tenants:,}"]]

    def add(label: str, pick: Callable[[SizeResult], float | None], spec: str) -> None:
        values = [pick(s) for s in sizes]
        rows.append([label, *(_f(v, spec) for v in values), _ratio(values[-1], values[0])])

    add("COPY into the catalog, s", lambda s: s.insert_seconds, ".3f")
    add("load at start (CatalogCache.start), s, median", lambda s: s.load_median, ".3f")
    add("cache memory (tracemalloc), MiB", lambda s: _mib(s.traced_bytes), ".2f")
    add("  per tenant, bytes", lambda s: _per(s.traced_bytes, s), ",.0f")
    add("  peak during the load, MiB", lambda s: _mib(s.traced_peak_bytes), ".2f")
    add("process RSS growth on the first load, MiB", lambda s: _kib_mib(s.rss_delta_kib), ".2f")
    add("lookup: cache.get, one tenant, ns", lambda s: s.get_same_ns, ".0f")
    add("lookup: cache.get, shuffled tenants, ns", lambda s: s.get_ns, ".0f")
    add(f"lookup + placement (ring of {result.placement_shards} shards), shuffled, ns", lambda s: s.place_ns, ".0f")
    add("periodic full reload, s", lambda s: s.refresh_seconds, ".3f")
    add("  longest event-loop stall during it, ms", lambda s: s.refresh_stall_ms, ".1f")
    add("change -> running cache, median ms", lambda s: _median(s.change_ms), ".2f")
    add("change -> running cache, max ms", lambda s: _max(s.change_ms), ".2f")
    add("  counted from the commit, median ms", lambda s: _median(s.change_after_commit_ms), ".2f")
    return _table(rows)


def ring_table(result: CatalogResult) -> str:
    rows = [["shards", "vnodes per shard", "ring build (reload), ms, median of 5"]]
    rows += [[str(s), str(result.vnodes), f"{ms:.1f}"] for s, ms in result.ring_build_ms.items()]
    return _table(rows)


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 1024 / 1024


def _kib_mib(value: int | None) -> float | None:
    return None if value is None else value / 1024


def _per(value: int | None, size: SizeResult) -> float | None:
    return None if value is None else value / size.tenants


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _max(values: list[float]) -> float | None:
    return max(values) if values else None


def verdict(result: CatalogResult) -> tuple[bool | None, str]:
    """Constant, not linear: the same tenant's lookup, and lookup + placement, within BAR_RATIO.

    A shuffled `cache.get` is printed too: over 100 000 distinct tenants it misses the CPU caches
    (tens of MB of keys and records), which costs time but does not grow with the catalog the way
    a scan would.
    """
    small, big = result.sizes[0], result.sizes[-1]
    bar = f"a catalog lookup at {big.tenants:,} tenants costs the same as at {small.tenants} (within {BAR_RATIO:g}x)"
    figures = (small.get_same_ns, big.get_same_ns, small.place_ns, big.place_ns, small.get_ns, big.get_ns)
    if any(not v for v in figures):
        return None, f"bar ({bar}): NOT EVALUATED"
    same_small, same_big, place_small, place_big, get_small, get_big = (float(v or 0) for v in figures)
    same, place, shuffled = same_big / same_small, place_big / place_small, get_big / get_small
    holds = same <= BAR_RATIO and place <= BAR_RATIO
    return holds, (
        f"bar ({bar}): {'HOLDS' if holds else 'DOES NOT HOLD'}: one tenant {same_small:.0f} -> {same_big:.0f} ns"
        f" ({same:.2f}x); lookup + placement {place_small:.0f} -> {place_big:.0f} ns ({place:.2f}x);"
        f" cache.get over shuffled tenants {get_small:.0f} -> {get_big:.0f} ns ({shuffled:.2f}x for"
        f" {big.tenants // small.tenants}x the tenants)"
    )


def report(result: CatalogResult) -> None:
    print(f"\n## Catalog at {result.sizes[-1].tenants:,} tenants (the router's CatalogCache, in this process)\n")
    print(table(result))
    print()
    print(ring_table(result))
    for size in result.sizes:
        for error in size.errors:
            print(f"  {size.tenants} tenants: {error}")


def reload_table(result: RouterUnderReload) -> str:
    rows = [
        [
            "catalog",
            "tps",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "txns > 100 ms",
            "router cpu",
            "router RSS MiB",
        ]
    ]
    for label, f in (("1 tenant", result.small), (f"{result.tenants + 1:,} tenants", result.large)):
        rows.append(
            [
                label,
                _f(f.tps, ",.0f") if not f.errors else "FAILED",
                _f(f.p50_us, ",.0f"),
                _f(f.p99_us, ",.0f"),
                _f(f.p999_us, ",.0f"),
                _f(f.max_us, ",.0f"),
                "-" if f.over_100ms is None else str(f.over_100ms),
                _f(f.router_cpu_pct, ".0f") + "%",
                _f(f.router_rss_mib, ".0f"),
            ]
        )
    return _table(rows)


def report_reload(result: RouterUnderReload) -> None:
    print(
        f"\n## A running router (1 worker, catalog refresh_interval {result.refresh_interval:g} s):"
        f" pgbench -S -c 1 -T {result.duration:g}\n"
    )
    print(reload_table(result))
    for label, figures in (("1 tenant", result.small), ("large catalog", result.large)):
        for error in figures.errors:
            print(f"  {label}: {error}")


def as_json(result: CatalogResult) -> dict[str, Any]:
    return asdict(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.catalog_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=100_000, help="the large catalog's size (%(default)s)")
    parser.add_argument("--changes", type=int, default=20, help="catalog changes timed per size (%(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per pgbench run, 0 = none (10)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir afterwards")
    args = parser.parse_args(argv)
    ws = Workspace(keep=args.keep)
    code = 1
    try:
        wait_until_quiet(QUIET_LOAD, 180)
        print("machine: " + ", ".join(f"{k} {v}" for k, v in machine_info(find_pgbouncer()).items()), flush=True)
        env = ws.start_environment()
        result = run(env.catalog_dsn(), args.tenants, args.changes)
        reload: RouterUnderReload | None = None
        if args.duration > 0:
            ws.init_pgbench(1)
            config_path, _ = write_router_config(ws.dir / "seed", env, workers=1, pool={}, auth_method="scram-sha-256")
            asyncio.run(seed_catalog(config_path, env))
            reload = router_under_reload(ws, args.tenants, args.duration)
        report(result)
        if reload is not None:
            report_reload(reload)
        _holds, line = verdict(result)
        print(f"\nload average at end: {load_average()}\n{line}")
        failed = any(s.errors for s in result.sizes) or (reload is not None and bool(reload.large.errors))
        code = 1 if failed else 0
        if args.json:
            payload = as_json(result) | {"router_under_reload": asdict(reload) if reload else None}
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        code = 130
    except Exception as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        code = ws.close() or code
    return code


if __name__ == "__main__":
    sys.exit(main())
