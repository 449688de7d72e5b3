"""The tenant catalog at 100 000 tenants: load time, memory, lookup cost, ring rebuild, change propagation.

Owns: catalogs of 100 and 100 000 `shared` tenants, each in a schema of its own on a real catalog
cluster (so a router already running on the default schema never sees them), filled with one COPY;
then, for each size, the router's own CatalogCache: how long `start()` (the full load a router does
at start) takes, how much memory the loaded map holds (tracemalloc, and the process's RSS on the first
load), what a lookup costs (`cache.get` alone, and with placement: `routing.place_tenant` on a Ring),
how long the event loop stalls during a periodic full reload, and how long a change made through
CatalogStore takes to reach the running cache (LISTEN/NOTIFY). Also the Ring build time for 2, 10
and 50 shards, which is what a reload of shards.yaml rebuilds.

Must not: touch the catalog schema a router serves from, or keep anything once it returns.

    python -m benchmarks.catalog_scale [--tenants 100000] [--changes 20] [--json FILE] [--keep]
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

from benchmarks.harness import QUIET_LOAD, Workspace, find_pgbouncer, load_average, machine_info, wait_until_quiet
from benchmarks.harness import rss_kib as process_rss_kib
from router.catalog import CatalogCache, CatalogStore
from router.hashing import Ring
from router.isolation import quote_ident
from router.routing import place_tenant
from router.topology import RingConfig, ServerAddress, Shard, Topology

SMALL: Final = 100
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


# --- filling a catalog ---------------------------------------------------------------------------


def tenant_ids(count: int) -> list[str]:
    return [f"t{i:06d}" for i in range(count)]


async def fill(dsn: str, schema: str, count: int) -> float:
    """A fresh catalog schema holding `count` shared, un-pinned tenants; return the COPY's seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()
    async with CatalogStore(dsn, schema) as store:
        await store.init_schema()
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


# --- measuring one size --------------------------------------------------------------------------


def _topology(shards: int) -> Topology:
    return Topology(
        shards={f"s{i:02d}": Shard(f"s{i:02d}", ServerAddress("127.0.0.1", 5432, "app"), (), 1) for i in range(shards)},
        ring=RingConfig(vnodes=VNODES),
        pins={},
        source=Path("benchmark"),
    )


def _per_call_ns(call: Callable[[str], object], keys: list[str]) -> float:
    def loop() -> None:
        for key in keys:
            call(key)

    return min(timeit.repeat(loop, number=1, repeat=ROUNDS)) / len(keys) * 1e9


def measure_lookups(cache: CatalogCache, result: SizeResult) -> None:
    ids = tenant_ids(result.tenants)
    shuffled = ids * (LOOKUPS // len(ids)) + ids[: LOOKUPS % len(ids)]
    random.Random(7).shuffle(shuffled)
    topology = _topology(PLACEMENT_SHARDS)
    ring = Ring.from_topology(topology)
    get = cache.get

    def place(tenant: str) -> object:
        record = get(tenant)
        assert record is not None
        return place_tenant(tenant, record.shard, topology, ring)

    result.get_ns = _per_call_ns(get, shuffled)
    result.get_same_ns = _per_call_ns(get, [ids[len(ids) // 2]] * LOOKUPS)
    result.place_ns = _per_call_ns(place, shuffled)


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
            status = "suspended" if record.status == "active" else "active"
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


async def measure_size(dsn: str, count: int, changes: int) -> SizeResult:
    schema = f"bench_scale_{count}"
    result = SizeResult(tenants=count)
    result.insert_seconds = await fill(dsn, schema, count)
    await measure_loads(dsn, schema, result)
    cache = CatalogCache(dsn, schema, REFRESH)
    await cache.start()
    try:
        measure_lookups(cache, result)
        await measure_refresh(cache, result)
        await measure_changes(dsn, schema, cache, changes, result)
    finally:
        await cache.stop()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        finally:
            await conn.close()
    return result


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
    for count in (SMALL, tenants):
        print(f"  catalog of {count:,} tenants...", flush=True)
        result.sizes.append(await measure_size(dsn, count, changes))
    result.ring_build_ms = measure_rings()
    return result


def run(catalog_dsn: str, tenants: int = 100_000, changes: int = 20) -> CatalogResult:
    print(f"\ncatalog scale: {SMALL} and {tenants:,} tenants, each in a schema of its own on the catalog cluster")
    # The router's own event loop, so asyncpg's reads cost what they cost in a router.
    return uvloop.run(measure_all(catalog_dsn, tenants, changes))


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
    small, big = result.sizes[0], result.sizes[-1]
    rows = [["figure", f"{small.tenants:,} tenants", f"{big.tenants:,} tenants", "ratio"]]

    def add(label: str, a: float | None, b: float | None, spec: str, ratio: bool = True) -> None:
        rows.append([label, _f(a, spec), _f(b, spec), _ratio(b, a) if ratio else ""])

    add("COPY into the catalog, s", small.insert_seconds, big.insert_seconds, ".3f")
    add("load at start (CatalogCache.start), s, median", small.load_median, big.load_median, ".3f")
    add("cache memory (tracemalloc), MiB", _mib(small.traced_bytes), _mib(big.traced_bytes), ".2f")
    add("  per tenant, bytes", _per(small.traced_bytes, small), _per(big.traced_bytes, big), ",.0f")
    add("  peak during the load, MiB", _mib(small.traced_peak_bytes), _mib(big.traced_peak_bytes), ".2f")
    add("process RSS growth on the first load, MiB", _kib_mib(small.rss_delta_kib), _kib_mib(big.rss_delta_kib), ".2f")
    add("lookup: cache.get, shuffled tenants, ns", small.get_ns, big.get_ns, ".0f")
    add("lookup: cache.get, one tenant, ns", small.get_same_ns, big.get_same_ns, ".0f")
    add(f"lookup + placement (ring of {result.placement_shards} shards), ns", small.place_ns, big.place_ns, ".0f")
    add("periodic full reload, s", small.refresh_seconds, big.refresh_seconds, ".3f")
    add("  longest event-loop stall during it, ms", small.refresh_stall_ms, big.refresh_stall_ms, ".1f")
    add("change -> running cache, median ms", _median(small.change_ms), _median(big.change_ms), ".2f")
    add("change -> running cache, max ms", _max(small.change_ms), _max(big.change_ms), ".2f")
    add(
        "  from the commit, median ms",
        _median(small.change_after_commit_ms),
        _median(big.change_after_commit_ms),
        ".2f",
    )
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
    small, big = result.sizes[0], result.sizes[-1]
    bar = f"a catalog lookup at {big.tenants:,} tenants costs the same as at {small.tenants} (within {BAR_RATIO:g}x)"
    if None in (small.get_ns, big.get_ns, small.place_ns, big.place_ns):
        return None, f"bar ({bar}): NOT EVALUATED"
    assert small.get_ns and big.get_ns and small.place_ns and big.place_ns
    get_ratio, place_ratio = big.get_ns / small.get_ns, big.place_ns / small.place_ns
    holds = get_ratio <= BAR_RATIO and place_ratio <= BAR_RATIO
    return holds, (
        f"bar ({bar}): {'HOLDS' if holds else 'DOES NOT HOLD'}: cache.get {small.get_ns:.0f} -> {big.get_ns:.0f} ns "
        f"({get_ratio:.2f}x), with placement {small.place_ns:.0f} -> {big.place_ns:.0f} ns ({place_ratio:.2f}x)"
    )


def report(result: CatalogResult) -> None:
    print(f"\n## Catalog at {result.sizes[-1].tenants:,} tenants (the router's CatalogCache, in this process)\n")
    print(table(result))
    print()
    print(ring_table(result))
    for size in result.sizes:
        for error in size.errors:
            print(f"  {size.tenants} tenants: {error}")


def as_json(result: CatalogResult) -> dict[str, Any]:
    return asdict(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.catalog_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=100_000, help="the large catalog's size (%(default)s)")
    parser.add_argument("--changes", type=int, default=20, help="catalog changes timed per size (%(default)s)")
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
        report(result)
        _holds, line = verdict(result)
        print(f"\nload average at end: {load_average()}\n{line}")
        code = 0 if not any(s.errors for s in result.sizes) else 1
        if args.json:
            Path(args.json).write_text(json.dumps(as_json(result), indent=2) + "\n")
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
