"""A workload to run against a tenant while it moves, and the audit that checks the move lost nothing.

Owns: `Writer` (a client thread that, through the router as the tenant, inserts rows carrying a
client-side sequence number and updates some of them, in autocommit and in explicit transactions,
and records every write the server acknowledged), `Reader` (a client thread reading alongside,
which checks that every write acknowledged before its read began is visible), `Bystander`
(threads cycling over many other tenants through one connection each), and `audit` (after the
move: every acknowledged insert is on the target exactly once with its last acknowledged update,
seen through the router and directly on the target's primary, and the source holds nothing of the
tenant any more). Also what a test needs to look at a shard directly, as the admin: a tenant's rows
there (`rows_on`), and what logical replication left behind (`replication_leftovers`).

A row's `name` is `"<seq>:<version>"`: the writer's sequence number and how many times it was
updated. Only the writer writes its tenant's rows, so the last acknowledged version is the one the
audit expects; a write whose outcome the client could not know (its COMMIT failed on the wire) is
recorded as uncertain, allowed either way, and reported as an error of the client anyway.

Must not: assume anything of how a move works (which stages, which replication objects): it looks
only at what a client and a shard's catalog show. No mocks: real clients (psycopg 3), real servers.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import psycopg

from router.isolation import database_name, quote_ident, schema_name
from router.testing.deploy import APP_PASSWORD, APP_USER
from router.testing.pgcluster import SHARD_DB, SUPERUSER, SUPERUSER_PASSWORD, PgCluster

Isolation = Literal["shared", "schema", "database"]

CONNECT_TIMEOUT: Final = 10


def tenant_url(port: int, tenant: str, user: str = APP_USER, password: str = APP_PASSWORD) -> str:
    """A libpq URL for `tenant` through a router listening on `port` (tenant in the user name)."""
    return f"postgresql://{user}.{tenant}:{password}@127.0.0.1:{port}/app?connect_timeout={CONNECT_TIMEOUT}"


def row_name(seq: int, version: int) -> str:
    return f"{seq}:{version}"


def parse_name(name: str) -> tuple[int, int] | None:
    """(seq, version) of a row the writer made; None for any other row."""
    seq, sep, version = name.partition(":")
    if not sep or not seq.isdigit() or not version.isdigit():
        return None
    return int(seq), int(version)


def describe_error(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}" + (f" [{sqlstate}]" if sqlstate else "") + f": {str(exc).strip()}"


# --- what the clients saw ----------------------------------------------------------------------


@dataclass
class Expected:
    """What a tenant's rows must be: seq -> last acknowledged version, and the versions a write
    with an unknown outcome may have left (seq -> versions; version 0 is the insert itself)."""

    acked: dict[int, int] = field(default_factory=dict)
    uncertain: dict[int, set[int]] = field(default_factory=dict)

    @classmethod
    def seeded(cls, count: int) -> Expected:
        """Rows "1:0" .. "<count>:0", as `seed_rows` writes them."""
        return cls(acked=dict.fromkeys(range(1, count + 1), 0))


@dataclass
class PortLog:
    """The server ports a client's transactions ran on, as runs: [(port, transactions), ...]."""

    runs: list[tuple[int, int]] = field(default_factory=list)

    def add(self, port: int) -> None:
        if self.runs and self.runs[-1][0] == port:
            self.runs[-1] = (port, self.runs[-1][1] + 1)
        else:
            self.runs.append((port, 1))

    def ports(self) -> list[int]:
        """The ports in the order the client went to them (a port twice means it came back)."""
        return [port for port, _count in self.runs]


class _Client(threading.Thread):
    """A daemon thread with one connection through the router, stopped by `stop()`; every error
    it meets is recorded in `errors` (time since start, text) and the work goes on."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.url = url
        self.errors: list[str] = []
        self.ports = PortLog()
        self._stop_event = threading.Event()
        self._started_at = time.monotonic()
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def stop(self, timeout: float = 30) -> None:
        self._stop_event.set()
        self.join(timeout)
        if self.is_alive():
            self.error(f"{self.name} did not stop within {timeout:g}s (a query hangs)")

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def error(self, text: str) -> None:
        with self._lock:
            self.errors.append(f"{self.name} +{time.monotonic() - self._started_at:.2f}s: {text}")

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
            self._conn = psycopg.connect(self.url, autocommit=True)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def pause(self, seconds: float) -> None:
        self._stop_event.wait(seconds)


class Writer(_Client):
    """Inserts and updates the tenant's rows through the router, recording what was acknowledged.

    Its cycle: an autocommit INSERT; a transaction inserting a row and updating an earlier one;
    an autocommit UPDATE; a transaction inserting two rows. An UPDATE must match exactly one row
    (the writer updates only rows it saw acknowledged): anything else is recorded as an error,
    since it means an acknowledged row is missing or doubled where the tenant now runs.
    """

    def __init__(self, url: str, *, name: str = "writer", pace: float = 0.005, seed: int = 17) -> None:
        super().__init__(url, name)
        self.pace = pace
        self._acked: dict[int, int] = {}
        self._uncertain: dict[int, set[int]] = {}
        self._next_seq = 1
        self._random = random.Random(seed)
        self.transactions = 0  # acknowledged
        self.slowest = 0.0  # seconds: the longest step (a hold shows up here as a delay)

    # what was acknowledged, for the reader and the audit

    def expected(self) -> Expected:
        with self._lock:
            return Expected(dict(self._acked), {s: set(v) for s, v in self._uncertain.items()})

    def acknowledged(self) -> int:
        with self._lock:
            return self.transactions

    def wait_for(self, more: int, within: float = 60) -> None:
        """Until `more` transactions more than now are acknowledged (the writer is making
        progress), or the writer stopped; AssertionError naming its errors otherwise."""
        goal = self.acknowledged() + more
        deadline = time.monotonic() + within
        while self.acknowledged() < goal:
            if time.monotonic() > deadline or not self.is_alive():
                raise AssertionError(
                    f"the writer acknowledged {self.acknowledged()} transactions, not {goal}, within"
                    f" {within:g}s; its errors: {self.errors[-5:]}"
                )
            time.sleep(0.01)

    # the work

    def run(self) -> None:
        steps = (self._insert_autocommit, self._insert_and_update, self._update_autocommit, self._insert_two)
        step = 0
        while not self.stopping:
            began = time.monotonic()
            try:
                steps[step % len(steps)](self.connection())
            except psycopg.Error as exc:
                self.error(describe_error(exc))
            self.slowest = max(self.slowest, time.monotonic() - began)
            step += 1
            self.pause(self.pace)
        self.close()

    def _new_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _pick_acked(self) -> tuple[int, int] | None:
        with self._lock:
            if not self._acked:
                return None
            seq = self._random.choice(list(self._acked))  # small tables: a list per pick is fine
            return seq, self._acked[seq]

    def _insert(self, cur: psycopg.Cursor[Any], seq: int) -> None:
        cur.execute("INSERT INTO items (name) VALUES (%s) RETURNING inet_server_port()", (row_name(seq, 0),))
        row = cur.fetchone()
        assert row is not None
        self.ports.add(int(row[0]))

    def _update(self, cur: psycopg.Cursor[Any], seq: int, version: int) -> bool:
        cur.execute("UPDATE items SET name = %s WHERE name = %s", (row_name(seq, version + 1), row_name(seq, version)))
        if cur.rowcount != 1:
            self.error(f"UPDATE of acknowledged row {row_name(seq, version)} matched {cur.rowcount} rows")
            return False
        return True

    def _acknowledge(self, inserted: Sequence[int], updated: tuple[int, int] | None) -> None:
        with self._lock:
            for seq in inserted:
                self._acked[seq] = 0
            if updated is not None:
                self._acked[updated[0]] = updated[1]
            self.transactions += 1

    def _unknown(self, inserted: Sequence[int], updated: tuple[int, int] | None) -> None:
        with self._lock:
            for seq in inserted:
                self._uncertain.setdefault(seq, set()).add(0)
            if updated is not None:
                self._uncertain.setdefault(updated[0], set()).add(updated[1])

    def _insert_autocommit(self, conn: psycopg.Connection[Any]) -> None:
        seq = self._new_seq()
        try:
            self._insert(conn.cursor(), seq)
        except psycopg.OperationalError:
            self._unknown([seq], None)  # the connection broke: the server may have committed it
            raise
        self._acknowledge([seq], None)

    def _update_autocommit(self, conn: psycopg.Connection[Any]) -> None:
        picked = self._pick_acked()
        if picked is None:
            return
        seq, version = picked
        try:
            ok = self._update(conn.cursor(), seq, version)
        except psycopg.OperationalError:
            self._unknown([], (seq, version + 1))
            raise
        if ok:
            self._acknowledge([], (seq, version + 1))

    def _in_transaction(self, conn: psycopg.Connection[Any], inserts: int, update: bool) -> None:
        seqs = [self._new_seq() for _ in range(inserts)]
        picked = self._pick_acked() if update else None
        updated = (picked[0], picked[1] + 1) if picked is not None else None
        ok = True
        committing = False
        try:
            with conn.transaction():
                cur = conn.cursor()
                for seq in seqs:
                    self._insert(cur, seq)
                if picked is not None:
                    ok = self._update(cur, *picked)
                    if not ok:
                        raise _RollBack()
                committing = True
        except _RollBack:
            return
        except psycopg.OperationalError:
            if committing:
                self._unknown(seqs, updated)
            raise
        if ok:
            self._acknowledge(seqs, updated)

    def _insert_and_update(self, conn: psycopg.Connection[Any]) -> None:
        self._in_transaction(conn, 1, update=True)

    def _insert_two(self, conn: psycopg.Connection[Any]) -> None:
        self._in_transaction(conn, 2, update=False)


class _RollBack(Exception):
    """Leaves a `conn.transaction()` block with a ROLLBACK (psycopg re-raises it afterwards)."""


class Reader(_Client):
    """Reads the tenant's rows alongside a writer. Before each read it notes what the writer had
    acknowledged; the read must show every one of those rows at that version or later, once."""

    def __init__(self, url: str, writer: Writer, *, name: str = "reader", pace: float = 0.01) -> None:
        super().__init__(url, name)
        self.writer = writer
        self.pace = pace
        self.reads = 0

    def run(self) -> None:
        while not self.stopping:
            before = self.writer.expected().acked
            try:
                row = (
                    self.connection()
                    .execute("SELECT inet_server_port(), coalesce(array_agg(name), '{}') FROM items")
                    .fetchone()
                )
                assert row is not None
            except psycopg.Error as exc:
                self.error(describe_error(exc))
            else:
                port, names = int(row[0]), list(row[1])
                self.ports.add(port)
                self.reads += 1
                for problem in stale_reads(before, names, port):
                    self.error(problem)
            self.pause(self.pace)
        self.close()


def stale_reads(before: Mapping[int, int], names: Iterable[str], port: int, limit: int = 5) -> list[str]:
    seen: dict[int, list[int]] = {}
    for name in names:
        parsed = parse_name(name)
        if parsed is not None:
            seen.setdefault(parsed[0], []).append(parsed[1])
    problems: list[str] = []
    for seq, version in before.items():
        versions = seen.get(seq, [])
        if len(versions) != 1 or versions[0] < version:
            problems.append(f"read on port {port}: row {seq} acknowledged at version {version}, read as {versions}")
            if len(problems) >= limit:
                break
    return problems


class Bystander(_Client):
    """Cycles over `tenants` through one connection as the tenant-switching user (`SET
    router.tenant`, answered by the router), one short transaction per tenant and turn: a read,
    and every `write_every`-th turn an insert. Counts each tenant's acknowledged transactions."""

    def __init__(
        self, port: int, tenants: Sequence[str], *, name: str, write_every: int = 5, pace: float = 0.005
    ) -> None:
        super().__init__(tenant_url(port, tenants[0]), name)
        self.tenants = list(tenants)
        self.write_every = write_every
        self.pace = pace
        self.done: Counter[str] = Counter()

    def served(self) -> Counter[str]:
        with self._lock:
            return Counter(self.done)

    def run(self) -> None:
        turn = 0
        while not self.stopping:
            tenant = self.tenants[turn % len(self.tenants)]
            try:
                conn = self.connection()
                conn.execute(f"SET router.tenant = {_literal(tenant)}")
                if turn % self.write_every == 0:
                    conn.execute("INSERT INTO items (name) VALUES ('bystander')")
                else:
                    conn.execute("SELECT count(*) FROM items").fetchone()
            except psycopg.Error as exc:
                self.error(f"tenant {tenant}: {describe_error(exc)}")
            else:
                with self._lock:
                    self.done[tenant] += 1
            turn += 1
            self.pause(self.pace)
        self.close()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@contextlib.contextmanager
def running(*clients: _Client) -> Iterator[None]:
    """Start `clients`, and stop them however the block ends."""
    for client in clients:
        client.start()
    try:
        yield
    finally:
        for client in clients:
            client.stop()


# --- looking at a shard directly, as the admin ---------------------------------------------------


def admin_connect(cluster: PgCluster, dbname: str = SHARD_DB) -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.dsn(SUPERUSER, SUPERUSER_PASSWORD, dbname), autocommit=True)


def rows_on(cluster: PgCluster, tenant: str, isolation: Isolation) -> list[str] | None:
    """The `name` of every row of the tenant's `items` on `cluster`, read as the admin (no row-level
    security); None when its schema or database does not exist there. For a shared tenant the
    shared table always exists: an empty list means none of its rows are there."""
    with admin_connect(cluster) as conn:
        if isolation == "shared":
            return [r[0] for r in conn.execute("SELECT name FROM items WHERE tenant_id = %s", (tenant,))]
        if isolation == "schema":
            schema = schema_name(tenant)
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
                return None
            return [r[0] for r in conn.execute(f"SELECT name FROM {quote_ident(schema)}.items")]
        database = database_name(tenant)
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            return None
    with admin_connect(cluster, database) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM public.items")]


def seed_rows(cluster: PgCluster, tenant: str, isolation: Isolation, count: int) -> None:
    """Rows "1:0" .. "<count>:0" of the tenant, written on `cluster` as the admin."""
    names = [row_name(seq, 0) for seq in range(1, count + 1)]
    if isolation == "database":
        with admin_connect(cluster, database_name(tenant)) as conn:
            conn.execute("INSERT INTO public.items (tenant_id, name) SELECT %s, unnest(%s::text[])", (tenant, names))
        return
    table = "items" if isolation == "shared" else f"{quote_ident(schema_name(tenant))}.items"
    with admin_connect(cluster) as conn:
        conn.execute(f"INSERT INTO {table} (tenant_id, name) SELECT %s, unnest(%s::text[])", (tenant, names))


def replication_leftovers(cluster: PgCluster) -> list[str]:
    """Every replication slot, subscription and publication on `cluster` (publications in each
    database that accepts connections), as "kind name (where)" lines."""
    found: list[str] = []
    with admin_connect(cluster) as conn:
        found += [
            f"slot {name} ({kind}, database {db}, active {active})"
            for name, kind, db, active in conn.execute(
                "SELECT slot_name, slot_type, database, active FROM pg_replication_slots ORDER BY 1"
            )
        ]
        found += [
            f"subscription {name} (database {db}, enabled {enabled})"
            for name, db, enabled in conn.execute(
                "SELECT s.subname, d.datname, s.subenabled FROM pg_subscription s"
                " JOIN pg_database d ON d.oid = s.subdbid ORDER BY 1"
            )
        ]
        databases = [
            r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate")
        ]
    for database in databases:
        with admin_connect(cluster, database) as conn:
            found += [
                f"publication {r[0]} (database {database})"
                for r in conn.execute("SELECT pubname FROM pg_publication ORDER BY 1")
            ]
    return found


# --- the audit -----------------------------------------------------------------------------------


def compare(names: Iterable[str], expected: Expected, where: str) -> list[str]:
    """What is wrong with a tenant's rows `names` (read `where`) against `expected`: an
    acknowledged row missing, doubled, or not at its last acknowledged version; a row no client
    wrote."""
    seen: dict[int, list[int]] = {}
    problems: list[str] = []
    for name in names:
        parsed = parse_name(name)
        if parsed is None:
            problems.append(f"{where}: a row no writer made: {name!r}")
            continue
        seen.setdefault(parsed[0], []).append(parsed[1])
    missing = sorted(seq for seq in expected.acked if seq not in seen)
    if missing:
        problems.append(f"{where}: {len(missing)} acknowledged rows missing, e.g. {missing[:10]}")
    for seq, versions in sorted(seen.items()):
        allowed = expected.uncertain.get(seq, set())
        if seq in expected.acked:
            acked = expected.acked[seq]
            if len(versions) != 1:
                problems.append(f"{where}: row {seq} is there {len(versions)} times: versions {versions}")
            elif versions[0] != acked and versions[0] not in allowed:
                problems.append(f"{where}: row {seq} at version {versions[0]}, last acknowledged {acked}")
        elif not (len(versions) == 1 and versions[0] in allowed):
            problems.append(f"{where}: row {seq} (versions {versions}) was never acknowledged")
    return problems


@dataclass(frozen=True)
class MovedTenant:
    """A tenant that moved from `source` to `target` (the clusters of their primaries)."""

    tenant: str
    isolation: Isolation
    source: PgCluster
    target: PgCluster


def router_rows(router_port: int, tenant: str) -> tuple[list[str], int]:
    """The tenant's row names through the router, and the port of the server that answered."""
    with psycopg.connect(tenant_url(router_port, tenant), autocommit=True) as conn:
        row = conn.execute("SELECT inet_server_port(), coalesce(array_agg(name), '{}') FROM items").fetchone()
        assert row is not None
        return list(row[1]), int(row[0])


def audit(moved: MovedTenant, expected: Expected, router_port: int) -> list[str]:
    """Everything wrong with a finished move (empty: it lost nothing and left nothing):
    - through the router, the tenant's rows are exactly `expected`, read from the target;
    - directly on the target's primary, likewise;
    - the source holds none of the tenant's rows (shared), nor its schema or database.
    """
    who = f"tenant {moved.tenant} ({moved.isolation})"
    problems: list[str] = []
    try:
        names, port = router_rows(router_port, moved.tenant)
    except psycopg.Error as exc:
        problems.append(f"{who}: reading through the router failed: {describe_error(exc)}")
    else:
        if port != moved.target.port:
            problems.append(
                f"{who}: the router sent the read to port {port}, not the target {moved.target.name}"
                f" (port {moved.target.port})"
            )
        problems += compare(names, expected, f"{who} through the router")
    on_target = rows_on(moved.target, moved.tenant, moved.isolation)
    if on_target is None:
        problems.append(f"{who}: no {moved.isolation} on the target {moved.target.name}")
    else:
        problems += compare(on_target, expected, f"{who} on the target {moved.target.name}")
    left = rows_on(moved.source, moved.tenant, moved.isolation)
    if left is None:
        pass
    elif moved.isolation == "shared":
        if left:
            problems.append(f"{who}: {len(left)} rows are still on the source {moved.source.name}")
    else:
        problems.append(f"{who}: its {moved.isolation} is still on the source {moved.source.name} ({len(left)} rows)")
    return problems
