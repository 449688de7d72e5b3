"""Parse count: how often the router parses SQL, per transaction, and the hit rate of its one statement
analysis (router/sql/analysis.py), on pgbench and on real drivers.

Owns: one router in this process (router/testing/routerthread.py, the hardened setup with the
exact hand-over), so that its counters (`analysis_stats()`: parses, cache hits and misses) are read
directly, and the workloads run against it one at a time, each from a cold cache:

- pgbench, built-in scripts tpcb-like and select-only, in `-M simple`, `extended` and `prepared`;
- psycopg 3: an ORM-like unit of work (look a customer up, list their orders, insert an order
  RETURNING its id, update one, count by status) with server-side parameters (Parse/Bind), and the
  same with client-side binding (`ClientCursor`: literals in the text of each simple Query);
- asyncpg: the same unit of work (named prepared statements, its transaction's BEGIN/COMMIT);
- SQLAlchemy 2 ORM over psycopg: get, add and flush, a filtered select, update, commit.

With `--reads-auto` the router also splits reads (`reads: {mode: auto}`, no replica: every
transaction still runs on the primary), so the read classifier asks the same analysis.

For each it prints transactions, parses, misses, hits, the hit rate (hits / (hits + misses)) and
parses per transaction; the parses are also counted outside the analysis, by wrapping pglast's
parser, and the two counts must agree. The bar: a hit rate of at least 99% on every workload.

Must not: measure throughput (the router shares this process with the clients: benchmarks/run.py
measures speed with the router in processes of its own), or tune a workload to the cache.

    python -m benchmarks.parse_count [--duration 5] [--transactions 2000] [--clients 4] [--quick]
                                     [--reads-auto] [--show-parses] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # `python benchmarks/parse_count.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import psycopg
from pglast import parser as pg_parser
from sqlalchemy import ForeignKey, String, create_engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from benchmarks.harness import (
    QUIET_LOAD,
    ROUTER_ROLE,
    TENANT,
    Target,
    Workspace,
    add_run_options,
    load_average,
    machine_info,
    pgbench_run,
    seed_catalog,
    wait_until_quiet,
    write_router_config,
)
from router.sql.analysis import analysis_stats, clear_analysis
from router.testing import deploy
from router.testing.pgcluster import HOST
from router.testing.routerthread import RouterThread

HIT_RATE_BAR: Final = 0.99
MODES: Final = ("simple", "extended", "prepared")
SCRIPTS: Final = ("tpcb-like", "select-only")
CUSTOMERS: Final = 1000
# The ORM-like schema, owned by the admin like pgbench's tables (the router role gets row access).
SCHEMA: Final = """
CREATE TABLE bench_customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL);
CREATE TABLE bench_orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES bench_customers (id),
    status text NOT NULL,
    total numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON bench_orders (customer_id);
INSERT INTO bench_customers SELECT i, 'customer ' || i, 'c' || i || '@example.com' FROM generate_series(1, 1000) i;
"""
STATUSES: Final = ("new", "paid", "shipped", "cancelled")
# The drivers' unit of work: BEGIN, five statements, COMMIT.
UNIT_STATEMENTS: Final = 7


class _Base(DeclarativeBase):
    pass


class Customer(_Base):
    __tablename__ = "bench_customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String)
    email: Mapped[str] = mapped_column(String)


class Order(_Base):
    __tablename__ = "bench_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("bench_customers.id"))
    status: Mapped[str] = mapped_column(String)
    total: Mapped[Decimal]


@dataclass
class Result:
    """One workload's counts, from a cold cache. `statements_per_transaction`: what the workload
    sends in each transaction, BEGIN and COMMIT included (connection set-up not counted)."""

    workload: str
    statements_per_transaction: int
    transactions: int = 0
    parses: int = 0
    pglast_calls: int = 0
    hits: int = 0
    misses: int = 0
    errors: list[str] = field(default_factory=list)
    parsed: list[str] = field(default_factory=list)

    @property
    def hit_rate(self) -> float | None:
        """The cache's: lookups answered without analysing the text."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None

    @property
    def unparsed_share(self) -> float | None:
        """Statements the router handled without a parse: from the cache, or without asking it (a
        prepared statement's verdict is kept with it; a Parse the same as the last one is not
        judged again)."""
        statements = self.transactions * self.statements_per_transaction
        return max(0.0, 1 - self.parses / statements) if statements else None

    @property
    def parses_per_transaction(self) -> float | None:
        return self.parses / self.transactions if self.transactions else None

    @property
    def ok(self) -> bool:
        return not self.errors and self.transactions > 0 and self.parses == self.pglast_calls

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "hit_rate": self.hit_rate,
            "parses_per_transaction": self.parses_per_transaction,
            "statements_without_parse": self.unparsed_share,
        }


# --- counting --------------------------------------------------------------------------------------


class _ParserCalls:
    """pglast's parser wrapped: every call counted, whoever makes it (a check on the analysis's own
    counter, and the only count for code that keeps no counter)."""

    def __init__(self) -> None:
        self.calls = 0
        self.texts: Counter[str] = Counter()
        self._original: Callable[[str], str] = pg_parser.parse_sql_json

    def __enter__(self) -> _ParserCalls:
        def counting(sql: str) -> str:
            self.calls += 1
            self.texts[" ".join(sql.split())[:100]] += 1
            return self._original(sql)

        pg_parser.parse_sql_json = counting  # type: ignore[assignment]  # counted, then restored
        return self

    def __exit__(self, *exc: object) -> None:
        pg_parser.parse_sql_json = self._original  # type: ignore[assignment]


@contextmanager
def measured(name: str, statements: int, results: list[Result]) -> Iterator[Result]:
    """A workload from a cold cache: the caller sets `transactions` and `errors`; the counts are
    filled in at the end, and the result printed."""
    clear_analysis()
    result = Result(name, statements)
    with _ParserCalls() as calls:
        try:
            yield result
        except Exception as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
    stats = analysis_stats()
    result.parses, result.hits, result.misses = stats["parses"], stats["hits"], stats["misses"]
    result.pglast_calls = calls.calls
    result.parsed = [f"{count} x {text}" for text, count in calls.texts.most_common()]
    results.append(result)
    print(_row(result), flush=True)


# --- workloads -------------------------------------------------------------------------------------


def run_pgbench(target: Target, results: list[Result], *, duration: float, clients: int) -> None:
    for script in SCRIPTS:
        for mode in MODES:
            statements = 7 if script == "tpcb-like" else 1  # BEGIN, 3 UPDATEs, SELECT, INSERT, END
            with measured(f"pgbench {script} -M {mode}", statements, results) as result:
                args = ["-n", "-b", script, "-T", f"{duration:g}", "-c", str(clients), "-j", str(min(2, clients))]
                run = pgbench_run(target, [*args, "-M", mode], duration)
                result.transactions = run.transactions or 0
                result.errors.extend(run.errors if run.exit_code != 0 or run.failed_transactions else [])


def _conninfo(target: Target) -> dict[str, Any]:
    return {"host": HOST, "port": target.port, "user": target.user, "password": target.password}


def run_psycopg(target: Target, results: list[Result], *, transactions: int, client_side: bool) -> None:
    name = "psycopg 3, client-side binding (simple Query)" if client_side else "psycopg 3 (Parse/Bind)"
    rng = random.Random(1)
    with measured(name, UNIT_STATEMENTS, results) as result:
        cursor_factory = psycopg.ClientCursor if client_side else psycopg.Cursor
        with psycopg.connect(dbname=target.dbname, cursor_factory=cursor_factory, **_conninfo(target)) as conn:
            for _ in range(transactions):
                customer = rng.randint(1, CUSTOMERS)
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute("SELECT c.id, c.name, c.email FROM bench_customers c WHERE c.id = %s", (customer,))
                    cur.fetchone()
                    cur.execute(
                        "SELECT o.id, o.status, o.total, o.created_at FROM bench_orders o"
                        " WHERE o.customer_id = %s ORDER BY o.created_at DESC LIMIT %s",
                        (customer, 10),
                    )
                    cur.fetchall()
                    cur.execute(
                        "INSERT INTO bench_orders (customer_id, status, total) VALUES (%s, %s, %s) RETURNING id",
                        (customer, "new", Decimal(rng.randint(100, 99_999)) / 100),
                    )
                    row = cur.fetchone()
                    assert row is not None
                    cur.execute("UPDATE bench_orders SET status = %s WHERE id = %s", (rng.choice(STATUSES), row[0]))
                    cur.execute(
                        "SELECT count(*) FROM bench_orders WHERE customer_id = %s AND status = ANY(%s)",
                        (customer, list(STATUSES[:2])),
                    )
                    cur.fetchone()
                result.transactions += 1


async def _asyncpg_work(target: Target, transactions: int, seed: int) -> int:
    rng = random.Random(seed)
    conn = await asyncpg.connect(database=target.dbname, **_conninfo(target))
    done = 0
    try:
        for _ in range(transactions):
            customer = rng.randint(1, CUSTOMERS)
            async with conn.transaction():
                await conn.fetchrow("SELECT c.id, c.name, c.email FROM bench_customers c WHERE c.id = $1", customer)
                await conn.fetch(
                    "SELECT o.id, o.status, o.total, o.created_at FROM bench_orders o"
                    " WHERE o.customer_id = $1 ORDER BY o.created_at DESC LIMIT $2",
                    customer,
                    10,
                )
                order = await conn.fetchval(
                    "INSERT INTO bench_orders (customer_id, status, total) VALUES ($1, $2, $3) RETURNING id",
                    customer,
                    "new",
                    Decimal(rng.randint(100, 99_999)) / 100,
                )
                await conn.execute("UPDATE bench_orders SET status = $1 WHERE id = $2", rng.choice(STATUSES), order)
                await conn.fetchval(
                    "SELECT count(*) FROM bench_orders WHERE customer_id = $1 AND status = ANY($2::text[])",
                    customer,
                    list(STATUSES[:2]),
                )
            done += 1
    finally:
        await conn.close()
    return done


def run_asyncpg(target: Target, results: list[Result], *, transactions: int, clients: int) -> None:
    async def all_clients() -> list[int]:
        share = max(1, transactions // clients)
        return await asyncio.gather(*(_asyncpg_work(target, share, seed) for seed in range(clients)))

    with measured(f"asyncpg ({clients} connections)", UNIT_STATEMENTS, results) as result:
        result.transactions = sum(asyncio.run(all_clients()))


def run_sqlalchemy(target: Target, results: list[Result], *, transactions: int) -> None:
    url = URL.create(
        "postgresql+psycopg",
        username=target.user,
        password=target.password,
        host=HOST,
        port=target.port,
        database=target.dbname,
    )
    rng = random.Random(2)
    with measured("SQLAlchemy 2 ORM (psycopg 3)", UNIT_STATEMENTS, results) as result:
        engine = create_engine(url, pool_size=1)
        try:
            for _ in range(transactions):
                with Session(engine) as session, session.begin():
                    customer = session.get(Customer, rng.randint(1, CUSTOMERS))
                    assert customer is not None
                    recent = select(Order).where(Order.customer_id == customer.id).order_by(Order.id.desc()).limit(10)
                    session.scalars(recent).all()
                    order = Order(customer_id=customer.id, status="new", total=Decimal(rng.randint(100, 99_999)) / 100)
                    session.add(order)
                    session.flush()
                    order.status = rng.choice(STATUSES)
                    session.flush()
                    count = select(func.count()).where(Order.customer_id == customer.id, Order.status.in_(STATUSES[:2]))
                    session.scalar(count)
                result.transactions += 1
        finally:
            engine.dispose()


# --- setup and report ------------------------------------------------------------------------------


async def _create_schema(ws: Workspace) -> None:
    assert ws.env is not None
    admin = ws.admin_target()
    conn = await asyncpg.connect(
        host=HOST, port=admin.port, user=admin.user, password=admin.password, database=admin.dbname
    )
    try:
        await conn.execute(SCHEMA)
        await conn.execute(f"GRANT USAGE ON SEQUENCE bench_orders_id_seq TO {ROUTER_ROLE}")
    finally:
        await conn.close()


HEADER: Final = (
    f"{'workload':<46} {'txns':>6} {'parses':>6} {'misses':>6} {'hits':>7} {'hit rate':>8}"
    f" {'parses/txn':>10} {'stmts w/o parse':>15}"
)


def _percent(value: float | None) -> str:
    return f"{value * 100:.3f}%" if value is not None else "n/a"


def _row(result: Result) -> str:
    per = f"{result.parses_per_transaction:.5f}" if result.parses_per_transaction is not None else "n/a"
    agree = "" if result.parses == result.pglast_calls else f"  (pglast called {result.pglast_calls} times!)"
    errors = f"  ERROR: {result.errors[0]}" if result.errors else ""
    return (
        f"{result.workload:<46} {result.transactions:>6} {result.parses:>6} {result.misses:>6} {result.hits:>7}"
        f" {_percent(result.hit_rate):>8} {per:>10} {_percent(result.unparsed_share):>15}{agree}{errors}"
    )


def verdicts(results: list[Result]) -> list[tuple[bool | None, str]]:
    """The bar, on the share of statements handled without a parse; the cache's own hit rate is
    printed beside it (where the router asks the cache only once per prepared statement and
    connection, its few misses are the first sight of each shape, and that rate says little)."""
    lines: list[tuple[bool | None, str]] = []
    for result in results:
        share = result.unparsed_share
        holds = None if share is None or not result.ok else share >= HIT_RATE_BAR
        label = {True: "HOLDS", False: "DOES NOT HOLD", None: "NOT EVALUATED"}[holds]
        lines.append(
            (
                holds,
                f"{label}: >= {HIT_RATE_BAR:.0%} of the statements without a parse on {result.workload}"
                f" ({_percent(share)}; cache hit rate {_percent(result.hit_rate)},"
                f" {result.parses} parses for {result.transactions} transactions)",
            )
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parse_count", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="seconds per pgbench run (default 5; 2 with --quick)")
    parser.add_argument("--transactions", type=int, help="units of work per driver workload (2000; 300 with --quick)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients and asyncpg connections (4)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s pgbench runs, 300 units of work")
    parser.add_argument("--show-parses", action="store_true", help="list the texts parsed in each workload")
    parser.add_argument(
        "--reads-auto",
        action="store_true",
        help="the router with `reads: {mode: auto}`: read/write splitting asks the analysis too",
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 5.0)
    transactions = args.transactions if args.transactions is not None else (300 if args.quick else 2000)
    if duration <= 0 or transactions < 1 or args.clients < 1:
        print("error: --duration, --transactions and --clients must be positive", file=sys.stderr)
        return 2
    ws = Workspace(keep=args.keep)
    results: list[Result] = []
    started = time.monotonic()

    def body() -> int:
        if args.wait_quiet:
            wait_until_quiet(QUIET_LOAD, 180)
        print("machine: " + ", ".join(f"{k} {v}" for k, v in machine_info(None).items()), flush=True)
        env = ws.start_environment()
        asyncio.run(_create_schema(ws))
        ws.init_pgbench(1)  # as the admin; then the router role gets row access to every table
        config_path, _port = write_router_config(
            ws.dir / "router",
            env,
            workers=1,
            pool={"size": 8},
            auth_method="scram-sha-256",
            extra={"reads": {"mode": "auto"}} if args.reads_auto else None,
        )
        asyncio.run(seed_catalog(config_path, env))
        config, topology = deploy.load(config_path)
        # The hardened setup's security objects on the shard (`rls enable` installs them with its table).
        asyncio.run(deploy.install_shared_table(config, topology))
        router = RouterThread(config, topology).start()
        try:
            target = Target("router", router.port, f"{deploy.APP_USER}.{TENANT}", deploy.APP_PASSWORD, env.SHARD_DB)
            print(f"\n{HEADER}")
            run_pgbench(target, results, duration=duration, clients=args.clients)
            run_psycopg(target, results, transactions=transactions, client_side=False)
            run_psycopg(target, results, transactions=transactions, client_side=True)
            run_asyncpg(target, results, transactions=transactions, clients=args.clients)
            run_sqlalchemy(target, results, transactions=max(1, transactions // 2))
        finally:
            router.stop()
        print(f"\nload average at end: {load_average()}\n")
        if args.show_parses:
            for result in results:
                print(f"parsed in {result.workload}:")
                print("\n".join(f"    {line}" for line in result.parsed) or "    nothing")
            print()
        for _holds, line in verdicts(results):
            print(line)
        return 0 if results and all(result.ok for result in results) else 1

    code = ws.run_alone(body)
    print(f"run took {time.monotonic() - started:.0f}s")
    if args.json:
        payload = {
            "parse_count": [result.as_json() for result in results],
            "checks": [{"holds": holds, "verdict": line} for holds, line in verdicts(results)],
            "exit_code": code,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
