"""Hostile tenants: for every isolation model, tenant A tries every trick we know to read or change
tenant B's rows through the router, against the hardened setup (signed context, `rls enable`,
per-tenant roles) and the legacy one (unsigned `app.tenant_id`, schema and database tenants served
by the router's own role).

Each attack runs through the router as tenant A (user `app.<A>`; `app` may not switch tenants). It
LEAKED if anything A got back (rows, COPY data, notices, error messages) holds a secret of another
tenant, if another tenant's rows changed (checked directly on the shard as superuser, before and
after), or if a statement that must be refused (DDL on others' objects, CREATE EXTENSION dblink,
reading the key...) succeeded. Otherwise it is blocked. Everything is put back after each attack
and the router's idle server connections are closed, so attacks do not see each other's leftovers.
Pool size 1 and every tenant on one shard: the tenants of the shared model take turns on ONE server
session, so hand-overs between A and B happen all the time.

The hardened test fails if any attack leaks. The legacy test proves the suite can see leaks (set_config
forging and schema-qualified reads must leak there) and prints the attack table (run with -s).
The property test interleaves two shared tenants' statements, forging attempts included, over the
one server connection and checks both against a per-tenant model after every step. The last tests
pin two defences found by this suite: the router removes (as the admin) session defaults of its
role that a tenant could have set before it uses a server session of that role, and `tenants
export/import` run a schema tenant's own code (casts, triggers) as that tenant, never as the admin.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router.admin.rls import carried_value, context_key_pads
from router.isolation import Isolation, database_name, quote_ident, quote_literal, schema_name, tenant_role
from router.net.server import send_cancel
from router.testing.deploy import APP_PASSWORD, APP_USER
from router.testing.escape import (
    HARDENED,
    LEGACY,
    MODELS,
    OPS_PASSWORD,
    OPS_USER,
    SECRET,
    EscapeDeployment,
    Layout,
    deploy,
    printed_in_plan,
    remove,
)
from router.testing.pgcluster import PgEnvironment
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.integration

BLOCKED, LEAKED, NOT_APPLICABLE = "blocked", "LEAKED", "n/a"


# --- deployments -----------------------------------------------------------------------------------


def _deployment(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory, layout: Layout) -> Iterator[Any]:
    deployment = deploy(pg_env, tmp_path_factory.mktemp(f"escape-{layout.mode}"), layout)
    try:
        yield deployment
    finally:
        remove(deployment)


@pytest.fixture(scope="module")
def hardened(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EscapeDeployment]:
    yield from _deployment(pg_env, tmp_path_factory, HARDENED)


@pytest.fixture(scope="module")
def legacy(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EscapeDeployment]:
    yield from _deployment(pg_env, tmp_path_factory, LEGACY)


# --- a hostile client ------------------------------------------------------------------------------


class Probe:
    """A client through the router that keeps everything it got back: rows, COPY data, notices and
    error messages (`seen`), and the SQLSTATE of every error (`errors`). Never raises on SQL errors."""

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        self.seen: list[str] = []
        self.errors: list[str] = []
        self.conn: psycopg.Connection[Any] | None = None
        try:
            self.conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10, **kwargs)
        except psycopg.Error as exc:
            self._error(exc)
            return
        # The detail too: a printed plan (debug_print_plan) comes as a LOG message's detail.
        self.conn.add_notice_handler(
            lambda diag: self.seen.append(f"NOTICE {diag.message_primary} {diag.message_detail or ''}")
        )

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def _error(self, exc: psycopg.Error) -> None:
        self.errors.append(exc.sqlstate or "?")
        self.seen.append(f"ERROR {exc.sqlstate}: {exc}")

    def run(self, sql: str, params: tuple[Any, ...] | None = None, *, prepare: bool | None = None) -> list[Any] | None:
        """The rows of the last result (every result is kept in `seen`); None if it failed."""
        if self.conn is None or self.conn.closed:
            self.errors.append("08003")
            return None
        try:
            cur = self.conn.execute(sql, params, prepare=prepare)  # type: ignore[arg-type]
            rows: list[Any] = []
            while True:
                if cur.description is not None:
                    rows = cur.fetchall()
                    self.seen.extend(repr(row) for row in rows)
                if not cur.nextset():
                    return rows
        except psycopg.Error as exc:
            self._error(exc)
            return None

    def value(self, sql: str) -> Any:
        rows = self.run(sql)
        return rows[0][0] if rows else None

    def copy_out(self, sql: str) -> bool:
        if self.conn is None:
            return False
        try:
            with self.conn.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[arg-type]
                for data in copy:
                    self.seen.append(bytes(data).decode("utf-8", "replace"))
            return True
        except psycopg.Error as exc:
            self._error(exc)
            return False

    def copy_in(self, sql: str, rows: list[tuple[str, ...]]) -> bool:
        if self.conn is None:
            return False
        try:
            with self.conn.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[arg-type]
                for row in rows:
                    copy.write_row(row)
            return True
        except psycopg.Error as exc:
            self._error(exc)
            return False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# --- the stage of one attack -----------------------------------------------------------------------


class Scene:
    """One attack by tenant A of `model` on a deployment: connections, names and findings."""

    def __init__(self, deployment: EscapeDeployment, model: Isolation) -> None:
        self.deployment = deployment
        self.model = model
        self.layout = deployment.layout
        self.a, self.b = self.layout.tenants(model)
        self.table = quote_ident(self.layout.table)
        # What A reads as its own data; B runs the same.
        self.read = f"SELECT tenant_id, secret FROM {self.table}" if model == "shared" else "SELECT secret FROM items"
        # The victims' namespaces: the schema tenant B, the database tenant B.
        schema_b = self.layout.tenants("schema")[1]
        database_b = self.layout.tenants("database")[1]
        self.b_schema = quote_ident(schema_name(schema_b))
        self.b_items = f"{self.b_schema}.items"
        self.b_database = quote_ident(database_name(database_b))
        self.b_role = tenant_role(self.b if model != "shared" else schema_b)
        # Who A's server sessions act as.
        own_role = deployment.hardened and model != "shared"
        self.server_user = tenant_role(self.a) if own_role else self.layout.role
        self.attackers: list[Probe] = []
        self.victims: list[Probe] = []
        self.leaks: list[str] = []
        self.unmet: list[str] = []
        self.victim_writes: dict[str, set[str]] = {}
        # Superuser statements (shard database) undoing what an attack left outside tenants' rows.
        self.cleanup: list[str] = []

    def attacker(
        self, tenant: str | None = None, user: str = APP_USER, password: str = APP_PASSWORD, **kw: Any
    ) -> Probe:
        probe = Probe(self.deployment.url(tenant or self.a, user, password, kw.pop("dbname", "app")), **kw)
        self.attackers.append(probe)
        return probe

    def victim(self) -> Probe:
        probe = Probe(self.deployment.url(self.b))
        self.victims.append(probe)
        return probe

    def victim_write(self, sql: str, secret: str) -> None:
        """B, an honest client, writes `secret` (and reads): if the write succeeds, it must be in
        B's rows afterwards, not somewhere A put in its way. A refused write is no leak."""
        v = self.victim()
        if v.run(sql) is not None:
            self.victim_writes.setdefault(self.b, set()).add(secret)
        v.run(self.read)

    def leak(self, reason: str) -> None:
        self.leaks.append(reason)

    def refused(self, probe: Probe, sql: str) -> None:
        """Run `sql`, which must fail: its success is a leak (it gives A power over others' data)."""
        if probe.run(sql) is not None:
            self.leak(f"succeeded: {sql}")

    def same_identity(self, probe: Probe, what: str) -> None:
        """After `what`, A's session must still act as its own server user."""
        for user in (probe.value("SELECT current_user"), probe.value("SELECT session_user")):
            if user is not None and user != self.server_user:
                self.leak(f"{what}: the session now acts as {user}")

    def expect(self, condition: bool, what: str) -> None:
        """Something the hardened setup must do (an error code, a refusal) besides not leaking."""
        if not condition:
            self.unmet.append(what)

    def forged(self, forge: str) -> Probe:
        """`forge` then A's read: as separate statements, in one query string, in one transaction."""
        p = self.attacker()
        p.run(forge)
        p.run(self.read)
        p.run(f"{forge}; {self.read}")
        p.run("BEGIN")
        p.run(forge)
        p.run(self.read)
        p.run("ROLLBACK")
        return p

    def close(self) -> None:
        for probe in self.attackers + self.victims:
            probe.close()


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[Scene], None]
    models: tuple[Isolation, ...] = MODELS
    hardened_only: bool = False  # the mechanism it attacks does not exist in the legacy setup


ATTACKS: list[Attack] = []


def attack(
    name: str, models: tuple[Isolation, ...] = MODELS, hardened_only: bool = False
) -> Callable[[Callable[[Scene], None]], Callable[[Scene], None]]:
    def register(function: Callable[[Scene], None]) -> Callable[[Scene], None]:
        ATTACKS.append(Attack(name, function, models, hardened_only))
        return function

    return register


def lit(value: str) -> str:
    return quote_literal(value)


# --- the attacks -------------------------------------------------------------------------------------

# Forging the tenant context


@attack("set_config('app.tenant_id', B) then read")
def _set_config_forge(s: Scene) -> None:
    s.forged(f"SELECT set_config('app.tenant_id', {lit(s.b)}, false)")


@attack("SET app.tenant_id = B then read")
def _set_forge(s: Scene) -> None:
    s.forged(f"SET app.tenant_id = {lit(s.b)}")


@attack("claim B with A's signature beside it (app.tenant_id_sig, a setting nothing reads now)")
def _own_signature(s: Scene) -> None:
    # The earlier design verified the pair (app.tenant_id, app.tenant_id_sig) on every statement;
    # now the claim decides nothing, and the signature setting no longer exists.
    own = s.deployment.signature(s.a) if s.deployment.hardened else "x"
    s.forged(f"SET app.tenant_id = {lit(s.b)}; SET app.tenant_id_sig = {lit(own)}")
    s.forged(
        f"SELECT set_config('app.tenant_id', {lit(s.b)}, false), set_config('app.tenant_id_sig', {lit(own)}, false)"
    )


@attack("set_config hidden in a DO block, then read")
def _hidden_forge(s: Scene) -> None:
    s.forged(f"DO $$BEGIN PERFORM set_config('app.tenant_id', {lit(s.b)}, false); END$$")


@attack("startup options -c app.tenant_id=B (-c app.tenant_id_sig=<A's>)")
def _startup_forge(s: Scene) -> None:
    p = s.attacker(options=f"-c app.tenant_id={s.b}")
    p.run(s.read)
    sig = s.deployment.signature(s.a) if s.deployment.hardened else "x"
    p = s.attacker(options=f"-c app.tenant_id={s.b} -c app.tenant_id_sig={sig}")
    p.run(s.read)


@attack("forge the context, then INSERT/UPDATE/DELETE B's rows", models=("shared",))
def _forge_and_write(s: Scene) -> None:
    p = s.attacker()
    forge = f"SELECT set_config('app.tenant_id', {lit(s.b)}, false)"
    p.run(f"{forge}; INSERT INTO {s.table} (tenant_id, secret) VALUES ({lit(s.b)}, 'forged-insert')")
    p.run(f"{forge}; UPDATE {s.table} SET secret = 'forged-update' WHERE tenant_id = {lit(s.b)}")
    p.run(f"{forge}; DELETE FROM {s.table} WHERE tenant_id = {lit(s.b)}")


# Losing the context


@attack("RESET app.tenant_id then read")
def _reset_setting(s: Scene) -> None:
    p = s.forged("RESET app.tenant_id")
    if s.model == "shared" and s.deployment.hardened:
        # The claim decides nothing now: without it the session still reads its entered tenant's rows.
        s.expect(not p.errors, f"reads after RESET app.tenant_id still work (got {p.errors})")


@attack("RESET ALL then read")
def _reset_all(s: Scene) -> None:
    p = s.forged("RESET ALL")
    if s.model == "shared" and s.deployment.hardened:
        rows = p.run(f"RESET ALL; {s.read}")
        s.expect(rows == [], f"a read after RESET ALL in the same query sees no row (got {rows})")


@attack("DISCARD ALL then read")
def _discard_all(s: Scene) -> None:
    p = s.attacker()
    p.run("DISCARD ALL")
    p.run(s.read)
    p.run("DISCARD ALL")
    p.run("BEGIN")
    p.run(s.read)
    p.run("COMMIT")


@attack("RESET ALL hidden in a DO block, then read")
def _hidden_reset(s: Scene) -> None:
    p = s.forged("DO $$BEGIN EXECUTE 'RESET ALL'; END$$")
    if s.model == "shared" and s.deployment.hardened:
        rows = p.run(f"DO $$BEGIN EXECUTE 'RESET ALL'; END$$; {s.read}")
        s.expect(rows == [], f"a read after a hidden RESET ALL sees no row (got {rows})")


@attack("SET row_security = off then read", models=("shared",))
def _row_security_off(s: Scene) -> None:
    s.forged("SET row_security = off")


# Changing who we are


# Each of these succeeds only if the session then acts as another role: that is the finding (reading
# B's schema afterwards would blame the role change for what a plain qualified read does, below).


def _roles(s: Scene) -> list[str]:
    return [s.b_role, s.layout.role, s.deployment.env.SUPERUSER]


@attack("SET ROLE tenant_B / <router role> / postgres")
def _set_role(s: Scene) -> None:
    p = s.attacker()
    for role in _roles(s):
        p.run(f"SET ROLE {quote_ident(role)}")
        s.expect(p.errors[-1:] == ["42501"], f"SET ROLE {role} is refused with 42501")
        s.same_identity(p, f"SET ROLE {role}")
        p.run(s.read)


@attack("set_config('role', 'tenant_B', false)")
def _set_config_role(s: Scene) -> None:
    p = s.attacker()
    for role in _roles(s):
        p.run(f"SELECT set_config('role', {lit(role)}, false)")
        s.expect(p.errors[-1:] == ["42501"], f"set_config('role', {role!r}) is refused with 42501")
        p.run(f"SELECT set_config('role', {lit(role)}, false); {s.read}")
        s.same_identity(p, f"set_config('role', {role!r})")


@attack("SET SESSION AUTHORIZATION tenant_B / postgres")
def _session_authorization(s: Scene) -> None:
    p = s.attacker()
    for role in _roles(s):
        p.run(f"SET SESSION AUTHORIZATION {quote_ident(role)}")
        s.expect(p.errors[-1:] == ["42501"], "SET SESSION AUTHORIZATION is refused with 42501")
        s.same_identity(p, f"SET SESSION AUTHORIZATION {role}")


@attack("SET ROLE hidden in a DO block")
def _hidden_role(s: Scene) -> None:
    p = s.attacker()
    for role in _roles(s):
        p.run(f"DO $$BEGIN PERFORM set_config('role', {lit(role)}, false); END$$")
        s.same_identity(p, f"set_config('role', {role!r}) in DO")
        p.run(f"DO $$BEGIN EXECUTE 'SET ROLE {quote_ident(role)}'; END$$")
        s.same_identity(p, f"SET ROLE {role} in DO")


@attack("startup option -c role=tenant_B")
def _startup_role(s: Scene) -> None:
    for role in _roles(s):
        p = s.attacker(options=f"-c role={role}")
        if p.connected:
            s.same_identity(p, f"-c role={role}")


# Other namespaces


@attack("search_path set to B's schema, then read items")
def _search_path(s: Scene) -> None:
    p = s.attacker()
    p.run(f"SET search_path = {s.b_schema}, public")
    p.run("SELECT secret FROM items")
    p.run(f"SET search_path = {s.b_schema}; SELECT secret FROM items")
    p.run(f"SELECT set_config('search_path', {lit(s.b_schema)}, false); SELECT secret FROM items")
    p = s.attacker(options=f"-c search_path={schema_name(s.layout.tenants('schema')[1])}")
    p.run("SELECT secret FROM items")


@attack("schema-qualified read of B's objects")
def _qualified(s: Scene) -> None:
    p = s.attacker()
    p.run(f"SELECT secret FROM {s.b_items}")
    p.run(f"SELECT * FROM public.{s.table}")
    p.run(f"SELECT secret FROM {s.b_database}.public.items")


@attack("COPY <shared table> TO STDOUT")
def _copy_out(s: Scene) -> None:
    p = s.attacker()
    p.copy_out(f"COPY {s.table} TO STDOUT")
    p.copy_out(f"COPY (SELECT * FROM {s.table}) TO STDOUT")


@attack("COPY (SELECT * FROM <B's schema>.items) TO STDOUT")
def _copy_out_qualified(s: Scene) -> None:
    p = s.attacker()
    p.copy_out(f"COPY (SELECT * FROM {s.b_items}) TO STDOUT")
    p.copy_out(f"COPY {s.b_items} TO STDOUT")


@attack("reach B's database: -c router.tenant=B, dbname=<B's db>, SET router.tenant")
def _reach_database(s: Scene) -> None:
    p = s.attacker(options=f"-c router.tenant={s.b}")  # the tenant in the user name wins
    s.expect(p.value("SHOW router.tenant") == s.a, "options cannot override the tenant of the user name")
    p.run(s.read)
    p = s.attacker(dbname=database_name(s.b))  # the router picks the database, not the client
    p.run("SELECT current_database()")
    p.run(s.read)
    p.run(f"SET router.tenant = {lit(s.b)}")  # `app` may not switch tenants
    s.expect(p.errors[-1:] == ["28000"], "SET router.tenant is refused for a user without tenant_switch")
    p.run(s.read)
    p.run(f"SELECT set_config('router.tenant', {lit(s.b)}, false)")  # only a string on the server
    p.run(s.read)
    s.expect(p.value("SHOW router.tenant") == s.a, "the session is still tenant A's")


@attack("dblink / postgres_fdw")
def _dblink(s: Scene) -> None:
    p = s.attacker()
    for extension in ("dblink", "postgres_fdw"):
        p.run("BEGIN")
        s.refused(p, f"CREATE EXTENSION {extension}")
        p.run("ROLLBACK")
    p.run(f"SELECT * FROM dblink('dbname={database_name(s.b)}', 'SELECT secret FROM items') AS t(secret text)")


# The key and the verifier


@attack("read router.context_key", hardened_only=True)
def _read_key(s: Scene) -> None:
    p = s.attacker()
    for sql in ("SELECT * FROM router.context_key", "SELECT encode(inner_pad, 'hex') FROM router.context_key"):
        if p.run(sql):
            s.leak(f"read the key: {sql}")
    if p.copy_out("COPY router.context_key TO STDOUT"):
        s.leak("COPY of the key succeeded")


@attack("router.current_tenant() after claiming B (app.tenant_id, with any signature)", hardened_only=True)
def _forged_verifier(s: Scene) -> None:
    """current_tenant() names the entered tenant and ignores the claim: it must say A (or fail),
    never B, whatever claim and signature the session set before or in the same statement."""
    p = s.attacker()
    own = s.deployment.signature(s.a)
    for signature in (secrets.token_hex(32), own, own.upper(), ""):
        sig = lit(signature)
        forge = f"set_config('app.tenant_id', {lit(s.b)}, false), set_config('app.tenant_id_sig', {sig}, false)"
        # In the statement that claims B, and in the next one of the same query string.
        current_sql = "router.current_tenant()"
        for sql in (f"SELECT {forge}, {current_sql}", f"SELECT {forge}; SELECT 0, 0, {current_sql}"):
            rows = p.run(sql)
            current = rows[0][2] if rows else None  # the third column: current_tenant()'s, not set_config's
            if current == s.b:
                s.leak(f"router.current_tenant() said B after claiming B (signature {signature[:12]}...)")
            if s.model == "shared":
                s.expect(current == s.a, f"router.current_tenant() is still A after claiming B: {sql[:60]}")


@attack("debug_print_plan: the key or B's signature in a plan printed to the client", hardened_only=True)
def _printed_plan(s: Scene) -> None:
    v = s.victim()
    v.run(s.read)  # B's context on the server session (pool size 1), perhaps folded into a plan
    p = s.attacker()
    p.run("SET client_min_messages = log")
    p.run("SET debug_print_plan = on")
    for force_new_plan in ("DISCARD PLANS", "SET search_path = pg_temp, public", "RESET search_path"):
        p.run(force_new_plan)
        p.run(s.read)
        p.run("SELECT router.current_tenant()")
    # A claim of B planned in (it decides nothing now), and the plans of router.enter_tenant's
    # statements, which read the key, when A calls it with a wrong signature.
    p.run("BEGIN")
    p.run(f"SELECT set_config('app.tenant_id', {lit(s.b)}, true)")
    p.run("DISCARD PLANS")
    p.run(s.read)
    p.run("ROLLBACK")
    p.run(f"SELECT router.enter_tenant({lit(s.b)}, {lit(secrets.token_hex(32))})")
    # A plan prints a constant as its bytes in decimal, wrapped over indented lines.
    printed = re.sub(r"\n\s*", "", "\n".join(p.seen))
    inner, outer = context_key_pads(SECRET)
    signature = s.deployment.signature(s.b)
    for what, value, text in (
        ("key", inner, inner.hex()),
        ("key", outer, outer.hex()),
        ("B's signature", signature.encode(), signature),
    ):
        if printed_in_plan(value) in printed or text in printed:
            s.leak(f"a printed plan showed the {what}")


# The entered tenant: the carrier setting, router.enter_tenant / leave_tenant (router/admin/rls.py)


def _carried(s: Scene) -> str:
    """B's tenant id as the carrier holds it (what enter_tenant would write for B)."""
    return carried_value(s.b)


@attack("SET / SET LOCAL / set_config / RESET backtrace_functions (the carrier) = B", hardened_only=True)
def _set_carrier(s: Scene) -> None:
    b = lit(_carried(s))
    for forge in (
        f"SET backtrace_functions = {b}",
        f"SET SESSION backtrace_functions = {b}",
        f"SELECT set_config('backtrace_functions', {b}, false)",
        "RESET backtrace_functions",
        "SET backtrace_functions TO DEFAULT",
    ):
        p = s.forged(forge)
        s.expect(p.errors[:1] == ["42501"], f"refused with 42501: {forge}")
    p = s.attacker()
    p.run("BEGIN")
    p.run(f"SET LOCAL backtrace_functions = {b}")
    s.expect(p.errors[-1:] == ["42501"], "SET LOCAL backtrace_functions is refused with 42501")
    p.run("ROLLBACK")
    p.run("BEGIN")
    p.run(f"SELECT set_config('backtrace_functions', {b}, true)")
    p.run(s.read)
    p.run("ROLLBACK")


@attack("the carrier set in a DO block, a function's SET clause, startup options", hardened_only=True)
def _hidden_carrier(s: Scene) -> None:
    b = _carried(s)
    for body in (
        f"PERFORM set_config('backtrace_functions', {lit(b)}, false)",
        f"SET backtrace_functions = {lit(b)}",
        f"EXECUTE {lit(f'SET backtrace_functions = {lit(b)}')}",
        "RESET backtrace_functions",
    ):
        s.forged(f"DO $$BEGIN {body}; END$$")
    # A function whose SET clause names the carrier: refused when made, or when called.
    p = s.attacker()
    p.run(
        f"CREATE FUNCTION pg_temp.esc_as_b() RETURNS SETOF text LANGUAGE sql SET backtrace_functions = {lit(b)}"
        f" AS $$SELECT secret FROM {s.table if s.model == 'shared' else 'items'}$$"
    )
    p.run("SELECT * FROM pg_temp.esc_as_b()")
    # The router applies a client's startup options with SET, as its own role.
    p = s.attacker(options=f"-c backtrace_functions={b}")
    p.run(s.read)
    p.run("SELECT current_setting('backtrace_functions')")


@attack("ALTER ROLE CURRENT_USER / ALTER DATABASE SET backtrace_functions = B, then new sessions", hardened_only=True)
def _carrier_role_default(s: Scene) -> None:
    b = lit(_carried(s))
    role = quote_ident(s.server_user)
    dbname = database_name(s.a) if s.model == "database" else s.deployment.env.SHARD_DB
    database = quote_ident(dbname)
    s.cleanup += [
        f"ALTER ROLE {role} RESET backtrace_functions",
        f"ALTER ROLE {role} IN DATABASE {database} RESET backtrace_functions",
        f"ALTER DATABASE {database} RESET backtrace_functions",
    ]
    p = s.attacker()
    for ddl in (
        f"ALTER ROLE CURRENT_USER SET backtrace_functions = {b}",
        f"ALTER ROLE CURRENT_USER IN DATABASE {database} SET backtrace_functions = {b}",
        f"ALTER DATABASE {database} SET backtrace_functions = {b}",
    ):
        p.run(ddl)
        s.expect(p.errors[-1:] == ["42501"], f"refused with 42501: {ddl}")
        p.run(f"DO $$BEGIN EXECUTE {lit(ddl)}; END$$")  # hidden from the router
        s.expect(p.errors[-1:] == ["42501"], f"refused with 42501 in a DO block: {ddl}")
    p.run(s.read)  # a new transaction on the same session
    p.close()
    s.deployment.close_idle_server_connections()  # new server sessions start with the role's defaults
    p = s.attacker()
    p.run(s.read)
    p.run("SELECT current_setting('backtrace_functions')")


@attack("SELECT router.enter_tenant(B, <forged signature>) then read", models=("shared",), hardened_only=True)
def _enter_forged(s: Scene) -> None:
    own = s.deployment.signature(s.a)  # A cannot know it; suppose it does
    b = lit(s.b)
    # B's signature in upper case would be the same HMAC; the suite cannot know B's (nor can A): not tried.
    for signature in (lit(secrets.token_hex(32)), lit(own), lit(own.upper()), "''", "NULL"):
        enter = f"SELECT router.enter_tenant({b}, {signature})"
        p = s.forged(enter)
        s.expect(p.errors[:1] == ["42501"], f"refused with 42501: {enter[:70]}")
        # Entered in a transaction that goes on after the error is caught: the change is undone.
        p.run(
            f"DO $$BEGIN PERFORM router.enter_tenant({b}, {signature}); EXCEPTION WHEN OTHERS THEN NULL; END$$;"
            f" {s.read}"
        )
    # Other spellings of B's id (the carrier's form, upper case, padded): not tenant ids, or not B's.
    p = s.attacker()
    for other in (_carried(s), s.b.upper(), f" {s.b}", f"{s.b}\n"):
        p.run(f"SELECT router.enter_tenant({lit(other)}, {lit(own)}); {s.read}")
        s.expect(p.errors[-1:] == ["42501"], f"enter_tenant({other!r}) with A's signature is refused with 42501")
    # A may enter itself (with its own signature): that stays A.
    p.run(f"SELECT router.enter_tenant({lit(s.a)}, {lit(own)}); {s.read}")
    p.run(s.read)


@attack("SELECT router.leave_tenant() then read", models=("shared",), hardened_only=True)
def _leave(s: Scene) -> None:
    p = s.attacker()
    p.run("SELECT router.leave_tenant()")
    before = len(p.errors)
    rows = p.run(s.read)
    s.expect(rows == [] and len(p.errors) == before, "a read after leave_tenant() sees no row")
    rows = p.run(f"SELECT router.leave_tenant(); {s.read}")
    s.expect(rows == [], "leave_tenant(); read (one query) sees no row")
    p.run("BEGIN")
    p.run("SELECT router.leave_tenant()")
    rows = p.run(s.read)
    s.expect(rows == [], "leave_tenant() then read in a transaction sees no row")
    p.run("ROLLBACK")
    p.run(f"SELECT router.leave_tenant(); SELECT set_config('app.tenant_id', {lit(s.b)}, false); {s.read}")
    # B takes the server session in between (pool size 1), then A again: A's own rows, or an error.
    s.victim().run(s.read)
    p.run("SELECT router.leave_tenant()")
    s.victim().run(s.read)
    p.run(s.read)


@attack("one statement changes app.tenant_id halfway (set_config per row)", models=("shared",))
def _halfway(s: Scene) -> None:
    b = lit(s.b)
    p = s.attacker()
    for sql in (
        f"SELECT secret, set_config('app.tenant_id', {b}, false) FROM {s.table}",
        f"SELECT set_config('app.tenant_id', {b}, false), tenant_id, secret FROM {s.table}",
        f"SELECT tenant_id, secret FROM {s.table} WHERE set_config('app.tenant_id', {b}, false) IS NOT NULL",
        f"SELECT t.secret FROM (SELECT set_config('app.tenant_id', {b}, false)) AS c, {s.table} AS t",
        f"SELECT secret FROM {s.table} ORDER BY set_config('app.tenant_id', {b}, false), secret",
    ):
        rows = p.run(sql)
        if s.deployment.hardened:
            s.expect(rows is not None and len(rows) == len(s.deployment.secrets[s.a]), f"A's rows, all: {sql[:70]}")
        p.run(s.read)  # and after it


@attack("RESET ALL / DISCARD ALL in a DO block, then read", hardened_only=True)
def _hidden_reset_all(s: Scene) -> None:
    for body in ("RESET ALL", "EXECUTE 'RESET ALL'", "EXECUTE 'DISCARD ALL'"):
        do = f"DO $$BEGIN {body}; END$$"
        s.forged(do)
        p = s.attacker()
        p.run(do)
        # B takes the server session in between (the router leaves and enters), then A reads again.
        s.victim().run(s.read)
        p.run(s.read)
        p.run(f"{do}; SELECT set_config('app.tenant_id', {lit(s.b)}, false); {s.read}")


@attack("read the carrier: current_setting('backtrace_functions') is A's own id", models=("shared",))
def _read_carrier(s: Scene) -> None:
    read = f"SELECT current_setting('backtrace_functions'), tenant_id, secret FROM {s.table}"
    p = s.attacker()
    for sql in ("SELECT current_setting('backtrace_functions')", "SHOW backtrace_functions"):
        value = p.value(sql)
        if s.deployment.hardened:
            s.expect(value == carried_value(s.a), f"{sql} shows A's id as the carrier holds it: {value!r}")
    s.victim().run(s.read)  # B had the one server session just now
    value = p.value("SELECT setting FROM pg_settings WHERE name = 'backtrace_functions'")
    if s.deployment.hardened:
        s.expect(value == carried_value(s.a), f"after B, the carrier holds A's id again: {value!r}")
    p.run(read)  # B's rows here, if the carrier held B


# Prepared statements across hand-overs


@attack("protocol-level prepared statement run again after the server served B")
def _prepared_protocol(s: Scene) -> None:
    p = s.attacker()
    p.run(s.read, prepare=True)
    v = s.victim()
    v.run(s.read, prepare=True)
    v.run(s.read)
    p.run(s.read, prepare=True)
    p.run(s.read + " WHERE secret <> %s", ("",), prepare=True)


def _clients_in_line(router: RouterThread) -> int:
    """How many clients wait for a server connection, over all of the router's pools."""

    async def count() -> int:
        return sum(pool.waiting for pool in router.router.iter_pools())

    return router.call(count())


@attack("SQL PREPARE/EXECUTE across a hand-over (pinned, and hidden in DO)")
def _prepared_sql(s: Scene) -> None:
    p = s.attacker()
    # Hidden from the router: the connection is not pinned and goes to B in between.
    p.run(f"DO $$BEGIN EXECUTE 'PREPARE esc_hidden AS {s.read}'; END$$")
    v = s.victim()
    v.run(s.read)
    p.run("EXECUTE esc_hidden")
    # Seen by the router: A keeps its server connection; B waits for it until A lets go.
    p.run(f"PREPARE esc_pinned AS {s.read}")
    p.run("EXECUTE esc_pinned")
    waiting = threading.Thread(target=v.run, args=(s.read,))
    waiting.start()
    wait_until(
        lambda: not waiting.is_alive() or _clients_in_line(s.deployment.router),
        "B to be in line for a server connection (or served)",
        within=10,
    )
    p.run("EXECUTE esc_pinned")
    p.run("DEALLOCATE ALL")
    waiting.join(15)
    p.run("EXECUTE esc_pinned")


# Writes


@attack("INSERT/UPDATE/DELETE/COPY FROM of B's rows in the shared table", models=("shared",))
def _writes(s: Scene) -> None:
    p = s.attacker()
    b = lit(s.b)
    p.run(f"INSERT INTO {s.table} (tenant_id, secret) VALUES ({b}, 'inserted-for-b')")
    s.expect(p.errors[-1:] == ["42501"], "an INSERT with B's id fails the WITH CHECK (42501)")
    p.run(f"INSERT INTO {s.table} (tenant_id, secret) VALUES ({b}, 'inserted-for-b') RETURNING *")
    p.run(f"UPDATE {s.table} SET secret = 'updated-by-a' WHERE tenant_id = {b} RETURNING *")
    p.run(f"UPDATE {s.table} SET tenant_id = {b} WHERE tenant_id = {lit(s.a)}")  # move own rows to B
    p.run(f"DELETE FROM {s.table} WHERE tenant_id = {b} RETURNING *")
    p.copy_in(f"COPY {s.table} (tenant_id, secret) FROM STDIN", [(s.b, "copied-for-b")])


@attack("INSERT/UPDATE/DELETE/COPY FROM into <B's schema>.items")
def _qualified_writes(s: Scene) -> None:
    p = s.attacker()
    p.run(f"INSERT INTO {s.b_items} (secret) VALUES ('inserted-by-a')")
    p.run(f"UPDATE {s.b_items} SET secret = 'updated-by-a' RETURNING *")
    p.run(f"DELETE FROM {s.b_items} RETURNING *")
    p.copy_in(f"COPY {s.b_items} (secret) FROM STDIN", [("copied-by-a",)])


@attack("TRUNCATE the shared table / B's table (ignores row-level security)")
def _truncate(s: Scene) -> None:
    p = s.attacker()
    for table in (s.table, s.b_items):
        p.run("BEGIN")
        s.refused(p, f"TRUNCATE {table}")
        p.run("ROLLBACK")


# Switching tenants


@attack("SET router.tenant = B inside a transaction (tenant_switch user)")
def _switch_mid_transaction(s: Scene) -> None:
    p = s.attacker(user=OPS_USER, password=OPS_PASSWORD)
    p.run("BEGIN")
    p.run(s.read)
    p.run(f"SET router.tenant = {lit(s.b)}")
    s.expect(p.errors[-1:] == ["25001"], "SET router.tenant inside a transaction fails with 25001")
    p.run(s.read)
    p.run("ROLLBACK")
    s.expect(p.value("SHOW router.tenant") == s.a, "the session is still tenant A's after the refused switch")
    p.run(s.read)
    # Inside a multi-statement query the router does not switch: the server only stores a string.
    p.run(f"BEGIN; SET router.tenant = {lit(s.b)}; {s.read}; COMMIT")
    p.run(s.read)
    s.expect(p.value("SHOW router.tenant") == s.a, "a SET router.tenant inside a query string does not switch")


# Disabling the protection


@attack("DISABLE/NO FORCE ROW LEVEL SECURITY, DROP/CREATE POLICY, own the shared table")
def _disable_rls(s: Scene) -> None:
    p = s.attacker()
    for ddl in (
        f"ALTER TABLE {s.table} DISABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {s.table} NO FORCE ROW LEVEL SECURITY",
        f"DROP POLICY {quote_ident(s.layout.policy)} ON {s.table}",
        f"CREATE POLICY esc_open ON {s.table} USING (true)",
        f"ALTER TABLE {s.table} OWNER TO CURRENT_USER",
    ):
        p.run("BEGIN")  # rolled back: a statement that succeeds is the finding, not its damage
        s.refused(p, ddl)
        p.run(s.read)
        p.run("ROLLBACK")


@attack("take over B's schema or database (GRANT, DROP, OWNER TO, COMMENT)")
def _take_over(s: Scene) -> None:
    p = s.attacker()
    for ddl in (
        f"GRANT SELECT ON {s.b_items} TO PUBLIC",
        f"DROP TABLE {s.b_items}",
        f"ALTER SCHEMA {s.b_schema} OWNER TO CURRENT_USER",
        f"DROP SCHEMA {s.b_schema} CASCADE",
        f"COMMENT ON DATABASE {s.b_database} IS 'taken over'",
        f"ALTER DATABASE {s.b_database} OWNER TO CURRENT_USER",
    ):
        p.run("BEGIN")
        s.refused(p, ddl)
        p.run("ROLLBACK")


@attack("CREATE FUNCTION ... SECURITY DEFINER (or any object) in shared namespaces", models=("shared", "schema"))
def _plant(s: Scene) -> None:
    p = s.attacker()
    for ddl in (
        f"CREATE FUNCTION public.esc_definer() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER"
        f" AS 'SELECT secret FROM {s.table}'",
        "CREATE TABLE public.esc_planted (x text)",
        "CREATE SCHEMA esc_planted",
    ):
        p.run("BEGIN")
        s.refused(p, ddl)
        s.expect(p.errors[-1:] == ["42501"], f"refused with 42501: {ddl}")
        p.run("ROLLBACK")


# Leftovers for the next tenant on the same server session


@attack("temporary table shadowing the table B uses (hidden in DO)")
def _temp_shadow(s: Scene) -> None:
    name = s.table if s.model == "shared" else "items"
    p = s.attacker()
    p.run(f"DO $$BEGIN EXECUTE 'CREATE TEMP TABLE {name} (tenant_id text, secret text)'; END$$")
    # B, an honest client, now writes and reads through the router, likely on the same server session.
    fresh = f"{s.b}-fresh-{secrets.token_hex(5)}"
    if s.model == "shared":
        s.victim_write(f"INSERT INTO {s.table} (tenant_id, secret) VALUES ({lit(s.b)}, {lit(fresh)})", fresh)
    else:
        s.victim_write(f"INSERT INTO items (secret) VALUES ({lit(fresh)})", fresh)
    p.run(f"SELECT * FROM pg_temp.{name}")
    p.run(s.read)


@attack("accomplice schema tenant's view making a temp table, read by plain SELECTs", models=("shared",))
def _accomplice_view(s: Scene) -> None:
    """A's accomplice, a schema tenant, opens its schema to everyone and offers a view whose function
    makes a temporary table named like the shared one. A reads the view with nothing but a plain
    SELECT, by its qualified name and then through A's own search_path: if the server session went
    on to B unwiped, B's rows would go into A's temporary table."""
    accomplice = s.layout.tenants("schema")[0]
    schema = quote_ident(schema_name(accomplice))
    s.cleanup += [
        f"DROP VIEW IF EXISTS {schema}.esc_shadow_view",
        f"DROP FUNCTION IF EXISTS {schema}.esc_shadow()",
        f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
    ]
    helper = s.attacker(tenant=accomplice)
    helper.run(
        f"CREATE FUNCTION {schema}.esc_shadow() RETURNS int LANGUAGE plpgsql AS $$BEGIN"
        f" EXECUTE 'CREATE TEMP TABLE IF NOT EXISTS {s.table} (tenant_id text, secret text)'; RETURN 0; END$$"
    )
    helper.run(f"CREATE VIEW {schema}.esc_shadow_view AS SELECT {schema}.esc_shadow() AS x")
    helper.run(f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")
    helper.run(f"GRANT SELECT ON {schema}.esc_shadow_view TO PUBLIC")

    def b_writes() -> None:
        fresh = f"{s.b}-fresh-{secrets.token_hex(5)}"
        s.victim_write(f"INSERT INTO {s.table} (tenant_id, secret) VALUES ({lit(s.b)}, {lit(fresh)})", fresh)
        p.run(f"SELECT * FROM pg_temp.{s.table}")

    p = s.attacker()
    p.run(f"SELECT x FROM {schema}.esc_shadow_view")
    b_writes()
    p.run(f"SET search_path = {schema}, public")
    s.victim().run(s.read)  # the SET is seen, so this hand-over wipes; the next one would not
    p.run("SELECT x FROM esc_shadow_view")
    b_writes()


@attack("accomplice schema tenant's table + ALTER ROLE CURRENT_USER SET search_path", models=("shared",))
def _role_default_search_path(s: Scene) -> None:
    """A's accomplice, a schema tenant on the same shard, offers a table named like the shared one;
    A makes it first in the router role's default search_path (a role may set its own defaults)."""
    accomplice = s.layout.tenants("schema")[0]
    schema = quote_ident(schema_name(accomplice))
    role = quote_ident(s.layout.role)
    s.cleanup += [
        f"ALTER ROLE {role} RESET search_path",
        f"ALTER ROLE {role} IN DATABASE {quote_ident(s.deployment.env.SHARD_DB)} RESET search_path",
        f"DROP TABLE IF EXISTS {schema}.{s.table}",
        f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
    ]
    helper = s.attacker(tenant=accomplice)
    helper.run(f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")
    helper.run(f"CREATE TABLE {schema}.{s.table} (tenant_id text, secret text)")
    helper.run(f"GRANT ALL ON {schema}.{s.table} TO PUBLIC")
    p = s.attacker()
    for scope in ("", f" IN DATABASE {quote_ident(s.deployment.env.SHARD_DB)}"):
        p.run(f"ALTER ROLE CURRENT_USER{scope} SET search_path = {schema}, public")
        # Hidden from the router: it runs (a role may set its own defaults) and must not take effect.
        p.run(
            f"DO $$BEGIN EXECUTE 'ALTER ROLE ' || quote_ident(current_user) || '{scope} SET search_path"
            f" = {schema}, public'; END$$"
        )
    p.close()
    s.deployment.close_idle_server_connections()  # new server sessions start with the role's defaults
    fresh = f"{s.b}-fresh-{secrets.token_hex(5)}"
    s.victim_write(f"INSERT INTO {s.table} (tenant_id, secret) VALUES ({lit(s.b)}, {lit(fresh)})", fresh)
    helper.run(f"SELECT * FROM {schema}.{s.table}")


# Side channels


@attack("pg_stat_activity: B's statement text on another server connection (pool size 2)", models=("shared",))
def _activity(s: Scene) -> None:
    fresh = f"{s.b}-fresh-{secrets.token_hex(5)}"
    watch = "SELECT pid, state, query FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
    with s.deployment.another_router(size=2) as router:
        v = Probe(s.deployment.url(s.b, router=router))
        s.victims.append(v)
        v.run("BEGIN")  # B keeps one server connection, idle in its transaction
        inserted = v.run(f"INSERT INTO {s.table} (tenant_id, secret) VALUES ({lit(s.b)}, {lit(fresh)})")
        p = Probe(s.deployment.url(s.a, router=router))  # A gets the other one
        s.attackers.append(p)
        p.run(watch)
        if v.run("COMMIT") is not None and inserted is not None:
            s.victim_writes.setdefault(s.b, set()).add(fresh)
        p.run(watch)
        v.close()
        p.run(watch)


@attack("leaky function in WHERE (RAISE NOTICE on every row it sees)", models=("shared",))
def _leaky_function(s: Scene) -> None:
    p = s.attacker()
    p.run(
        "CREATE FUNCTION pg_temp.esc_leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001"
        " AS $$BEGIN RAISE NOTICE 'saw %', $1; RETURN true; END$$"
    )
    p.run(f"SELECT count(*) FROM {s.table} WHERE pg_temp.esc_leak(tenant_id || ':' || secret)")
    p.run(f"SELECT count(*) FROM {s.table} WHERE tenant_id = {lit(s.b)} OR pg_temp.esc_leak(secret)")


@attack("errors as an oracle (casts, division by zero on B's rows)", models=("shared",))
def _error_oracle(s: Scene) -> None:
    p = s.attacker()
    p.run(f"SELECT * FROM {s.table} WHERE secret::int = 0")
    p.run(f"SELECT * FROM {s.table} WHERE tenant_id = {lit(s.b)} AND secret::int = 0")
    p.run(
        f"SELECT count(*) FROM {s.table}"
        f" WHERE CASE WHEN tenant_id = {lit(s.b)} THEN 1 / (length(secret) - length(secret)) ELSE 0 END = 1"
    )
    if "22012" in p.errors:
        s.leak("division by zero raised on a row of B: B's rows are observable")


@attack("planner statistics (pg_stats, EXPLAIN)", models=("shared",))
def _statistics(s: Scene) -> None:
    p = s.attacker()
    p.run(
        "SELECT attname, most_common_vals::text, histogram_bounds::text FROM pg_stats"
        f" WHERE tablename = {lit(s.layout.table)}"
    )
    p.run(f"EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) SELECT * FROM {s.table} WHERE tenant_id = {lit(s.b)}")


# --- running them ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    result: str  # BLOCKED, LEAKED or NOT_APPLICABLE
    leaks: list[str] = field(default_factory=list)
    unmet: list[str] = field(default_factory=list)


class Shard:
    """The superuser's view of every tenant's rows, bypassing the router and row-level security."""

    def __init__(self, deployment: EscapeDeployment) -> None:
        self.deployment = deployment
        self.conns: dict[str, psycopg.Connection[Any]] = {}

    def _conn(self, tenant: str) -> psycopg.Connection[Any]:
        dsn = self.deployment.superuser_dsn(tenant)
        conn = self.conns.get(dsn)
        if conn is None or conn.closed:
            conn = self.conns[dsn] = psycopg.connect(dsn, autocommit=True)
        return conn

    def rows(self, tenant: str) -> tuple[str, ...] | None:
        """`tenant`'s secrets; None if its table (or schema, database) is gone."""
        try:
            return tuple(row[0] for row in self._conn(tenant).execute(self.deployment.rows_sql(tenant)))  # type: ignore[call-overload]
        except psycopg.Error:
            return None

    def superuser(self, statements: list[str]) -> None:
        """Run `statements` as the superuser in the shard's database."""
        conn = self._conn(next(t for t, m in self.deployment.models.items() if m == "shared"))
        for sql in statements:
            conn.execute(sql)  # type: ignore[call-overload]

    def restore(self) -> None:
        for tenant in self.deployment.secrets:
            self._conn(tenant).execute(self.deployment.restore_sql(tenant))  # type: ignore[call-overload]

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


def run_attack(deployment: EscapeDeployment, shard: Shard, model: Isolation, entry: Attack) -> Outcome:
    if model not in entry.models or (entry.hardened_only and not deployment.hardened):
        return Outcome(NOT_APPLICABLE)
    scene = Scene(deployment, model)
    others = [tenant for tenant in deployment.secrets if tenant != scene.a]
    before = {tenant: shard.rows(tenant) for tenant in others}
    try:
        entry.run(scene)
    finally:
        scene.close()
        shard.superuser(scene.cleanup)
    watched = {secret for tenant in others for secret in deployment.secrets[tenant]}
    watched |= {secret for fresh in scene.victim_writes.values() for secret in fresh}
    seen = [text for probe in scene.attackers for text in probe.seen]
    for secret in sorted(watched):
        hits = [text for text in seen if secret in text]
        if hits:
            scene.leak(f"A got {secret!r} back: {hits[0][:160]}")
    for tenant in others:
        after = shard.rows(tenant)
        expected = before[tenant]
        if expected is not None and tenant in scene.victim_writes:
            expected = tuple(sorted((*expected, *scene.victim_writes[tenant])))
        if after != expected:
            scene.leak(f"rows of {tenant} changed: {expected} -> {after}")
    shard.restore()
    deployment.close_idle_server_connections()
    return Outcome(LEAKED if scene.leaks else BLOCKED, scene.leaks, scene.unmet)


Results = dict[tuple[str, Isolation], Outcome]


def run_all(deployment: EscapeDeployment) -> Results:
    shard = Shard(deployment)
    try:
        shard.restore()
        return {
            (entry.name, model): run_attack(deployment, shard, model, entry) for entry in ATTACKS for model in MODELS
        }
    finally:
        shard.close()


@pytest.fixture(scope="module")
def hardened_results(hardened: EscapeDeployment) -> Results:
    return run_all(hardened)


@pytest.fixture(scope="module")
def legacy_results(legacy: EscapeDeployment) -> Results:
    return run_all(legacy)


def leaked(results: Results) -> list[str]:
    return [f"{name} [{model}]" for (name, model), outcome in results.items() if outcome.result == LEAKED]


# --- the tests -------------------------------------------------------------------------------------


def test_hardened_router_role_passes_the_audit(hardened: EscapeDeployment) -> None:
    assert hardened.audit, "audit_server_role reported nothing"
    for audit in hardened.audit:
        assert audit.problems == (), audit
        assert audit.warnings == (), audit


@pytest.mark.parametrize("model", MODELS)
def test_hardened_blocks_every_attack(hardened_results: Results, model: Isolation) -> None:
    leaks = {name: o.leaks for (name, m), o in hardened_results.items() if m == model and o.result == LEAKED}
    unmet = {name: o.unmet for (name, m), o in hardened_results.items() if m == model and o.unmet}
    assert not leaks, f"attacks that leaked in the hardened {model} model: {leaks}"
    assert not unmet, f"the hardened {model} model did not refuse as it must: {unmet}"
    assert any(o.result == BLOCKED for (_, m), o in hardened_results.items() if m == model)


def test_legacy_setup_leaks_and_the_table(hardened_results: Results, legacy_results: Results) -> None:
    """The suite sees leaks where there are some; prints attack -> legacy / hardened (pytest -s)."""
    width = max(len(entry.name) for entry in ATTACKS)
    lines = [f"{'attack':<{width}}  {'model':<8}  {'legacy':<8}  hardened", "-" * (width + 30)]
    for entry in ATTACKS:
        for model in MODELS:
            old, new = legacy_results[(entry.name, model)], hardened_results[(entry.name, model)]
            if old.result == new.result == NOT_APPLICABLE:
                continue
            lines.append(f"{entry.name:<{width}}  {model:<8}  {old.result:<8}  {new.result}")
    lines.append("")
    lines.append("leaked in legacy mode:")
    lines += [f"  {line}" for line in leaked(legacy_results)] or ["  (none)"]
    lines.append("leaked in hardened mode:")
    lines += [f"  {line}" for line in leaked(hardened_results)] or ["  (none)"]
    print("\n" + "\n".join(lines))
    must_leak = [
        ("set_config('app.tenant_id', B) then read", "shared"),
        ("schema-qualified read of B's objects", "schema"),
        ("schema-qualified read of B's objects", "shared"),
    ]
    for key in must_leak:
        assert legacy_results[key].result == LEAKED, f"the legacy setup should leak: {key}"


def test_lost_context_fails_closed(hardened: EscapeDeployment) -> None:
    """The claim app.tenant_id decides nothing: changing or resetting it leaves the entered tenant.
    RESET ALL and DISCARD ALL empty the carrier: then a shared session reads nothing (no row,
    never another tenant's) until the router enters its tenant again, with the next transaction."""
    a, b = HARDENED.tenants("shared")
    table = quote_ident(HARDENED.table)
    read = f"SELECT tenant_id FROM {table}"

    def own_rows(conn: psycopg.Connection[Any], sql: str = read) -> None:
        cur = conn.execute(sql)  # type: ignore[call-overload]
        while cur.nextset():  # the read is the last statement of the string
            pass
        rows = cur.fetchall()
        assert len(rows) == len(hardened.secrets[a]) and {row[0] for row in rows} == {a}, (sql, rows)

    with psycopg.connect(hardened.url(a), autocommit=True) as conn:
        for claim in ("RESET app.tenant_id", "SET app.tenant_id = ''", f"SET app.tenant_id = {lit(b)}"):
            own_rows(conn, f"{claim}; {read}")
            conn.execute(claim)  # type: ignore[call-overload]
            own_rows(conn)
        # RESET ALL empties the carrier: a read in the same transaction sees no row.
        cur = conn.execute(f"RESET ALL; {read}")  # type: ignore[call-overload]
        while cur.nextset():
            pass
        assert cur.fetchall() == []
        own_rows(conn)
        # Inside a transaction: no row, no write; ROLLBACK ends it cleanly (no tenant re-entered
        # in the transaction, whose errors the client would get on its ROLLBACK).
        conn.execute("BEGIN")
        conn.execute("RESET ALL")
        assert conn.execute(read).fetchall() == []  # type: ignore[call-overload]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(f"INSERT INTO {table} (tenant_id, secret) VALUES ({lit(a)}, 'lost')")  # type: ignore[call-overload]
        conn.execute("ROLLBACK")
        own_rows(conn)  # the rollback undid the RESET ALL; the router enters anyway
        # Committed: after it, the router enters again for the next transaction.
        conn.execute("BEGIN")
        conn.execute(f"RESET ALL; SELECT set_config('app.tenant_id', {lit(b)}, false)")  # type: ignore[call-overload]
        assert conn.execute("SELECT current_setting('backtrace_functions')").fetchone() == ("",)
        conn.execute("COMMIT")
        own_rows(conn)
        assert conn.execute("SELECT current_setting('backtrace_functions')").fetchone() == (carried_value(a),)
        for discard in ("RESET ALL", "DISCARD ALL"):
            conn.execute(discard)  # type: ignore[call-overload]
            own_rows(conn)
        # Left by the client itself (hidden from the router): no row, until another tenant's turn.
        conn.execute("SELECT router.leave_tenant()")
        assert conn.execute(read).fetchall() == []  # type: ignore[call-overload]
        with psycopg.connect(hardened.url(b), autocommit=True) as other:
            other.execute(read)  # type: ignore[call-overload]
        own_rows(conn)


# --- property: two tenants on one server connection --------------------------------------------------

OPS = st.sampled_from(
    [
        *("select", "prepared", "insert", "insert_other"),
        *("forge_same", "forge_next", "forge_sig", "reset_all", "reset_all_same"),
        *("begin", "commit", "rollback"),
    ]
)
STEPS = st.lists(st.tuples(OPS, st.integers(0, 1)), min_size=4, max_size=16)


class TwoTenants:
    """The model: each tenant's committed rows, and the open transaction (one at most, pool size 1).

    The entered tenant decides what a session sees; the claim app.tenant_id does not: forging it
    (alone, with a signature beside it, for the next statement) changes nothing, every read still
    equals the model. RESET ALL empties the carrier: in the transaction that ran it (`lost`) reads
    see no row and writes fail with 42501; after that transaction the router enters again."""

    def __init__(self, deployment: EscapeDeployment, shard: Shard) -> None:
        self.tenants = HARDENED.tenants("shared")
        self.table = quote_ident(HARDENED.table)
        self.deployment = deployment
        self.shard = shard
        self.committed = [set(shard.rows(t) or ()) for t in self.tenants]
        self.pending: list[set[str]] = [set(), set()]
        self.in_tx: int | None = None
        self.lost = False  # the open transaction ran RESET ALL: no tenant until it ends
        self.conns = [psycopg.connect(deployment.url(t), autocommit=True, prepare_threshold=None) for t in self.tenants]
        self.counter = 0

    def visible(self, who: int) -> set[str]:
        return self.committed[who] | (self.pending[who] if self.in_tx == who else set())

    def rows(self, who: int, sql: str, prepare: bool | None = None) -> set[str]:
        """The secrets of the last result of `sql`, whose last statement reads (tenant_id, secret)."""
        cur = self.conns[who].execute(sql, prepare=prepare)  # type: ignore[call-overload]
        while cur.nextset():
            pass
        rows = cur.fetchall()
        assert {row[0] for row in rows} <= {self.tenants[who]}, rows
        return {row[1] for row in rows}

    def read(self, who: int, sql: str = "", prepare: bool | None = None) -> None:
        """`sql` (by default a plain read) sees exactly the model's rows, or none when the
        transaction has no tenant any more."""
        sql = sql or f"SELECT tenant_id, secret FROM {self.table}"
        expected = set() if self.lost and self.in_tx == who else self.visible(who)
        assert self.rows(who, sql, prepare) == expected, (who, sql)

    def end(self, who: int, commit: bool) -> None:
        self.conns[who].execute("COMMIT" if commit else "ROLLBACK")
        if commit:
            self.committed[who] |= self.pending[who]
        self.pending[who] = set()
        self.in_tx = None
        self.lost = False

    def refused(self, who: int, sql: str, prepare: bool | None = None) -> None:
        """`sql` must fail with 42501; inside a transaction that aborts it (rolled back here)."""
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            self.conns[who].execute(sql, prepare=prepare)  # type: ignore[call-overload]
        if self.in_tx == who:
            self.end(who, commit=False)

    def step(self, op: str, who: int) -> None:
        other = 1 - who
        if self.in_tx == other:  # the other one holds the only server connection: let it finish
            self.end(other, commit=True)
        me, them = lit(self.tenants[who]), lit(self.tenants[other])
        conn = self.conns[who]
        read = f"SELECT tenant_id, secret FROM {self.table}"
        forge = f"SELECT set_config('app.tenant_id', {them}, false)"
        if op == "select":
            self.read(who)
        elif op == "prepared":
            self.read(who, prepare=True)
        elif op == "insert":
            self.counter += 1
            secret = f"{self.tenants[who]}-prop-{self.counter}-{secrets.token_hex(4)}"
            insert = f"INSERT INTO {self.table} (tenant_id, secret) VALUES ({me}, {lit(secret)})"
            if self.lost and self.in_tx == who:
                self.refused(who, insert)
            else:
                conn.execute(insert)  # type: ignore[call-overload]
                (self.pending[who] if self.in_tx == who else self.committed[who]).add(secret)
        elif op == "insert_other":
            self.refused(who, f"INSERT INTO {self.table} (tenant_id, secret) VALUES ({them}, 'stolen')")
        elif op == "forge_same":  # the claim of the other tenant, then a read in the same query string
            self.read(who, f"{forge}; {read}")
        elif op == "forge_sig":  # the claim with this tenant's own signature beside it
            own = lit(self.deployment.signature(self.tenants[who]))
            self.read(who, f"SET app.tenant_id = {them}; SET app.tenant_id_sig = {own}; {read}")
        elif op == "forge_next":  # the claim, then a read in the next statement
            conn.execute(forge)  # type: ignore[call-overload]
            self.read(who)
        elif op == "reset_all":
            conn.execute("RESET ALL")
            if self.in_tx == who:
                self.lost = True
        elif op == "reset_all_same":  # no row, and no tenant for the rest of a transaction
            assert self.rows(who, f"RESET ALL; {read}") == set()
            if self.in_tx == who:
                self.lost = True
        elif op == "begin" and self.in_tx is None:
            conn.execute("BEGIN")
            self.in_tx = who
        elif op in ("commit", "rollback") and self.in_tx == who:
            self.end(who, commit=op == "commit")

    def check(self) -> None:
        """Every client that can run now sees exactly its model's rows; a transaction without a
        tenant sees none."""
        for who in range(2):
            if self.in_tx == who and self.lost:
                assert self.rows(who, f"SELECT tenant_id, secret FROM {self.table}") == set()
            elif self.in_tx is None or self.in_tx == who:
                assert self.rows(who, f"SELECT tenant_id, secret FROM {self.table}") == self.visible(who), (
                    who,
                    self.in_tx,
                )

    def finish(self) -> None:
        """End the open transaction; then the shard holds exactly the committed model."""
        if self.in_tx is not None:
            self.end(self.in_tx, commit=True)
        for who, tenant in enumerate(self.tenants):
            assert set(self.shard.rows(tenant) or ()) == self.committed[who], tenant

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


@pytest.fixture(scope="module")
def hardened_shard(hardened: EscapeDeployment, hardened_results: Results) -> Iterator[Shard]:
    # After the attack run (which puts rows back after every attack), so both can share the table.
    shard = Shard(hardened)
    yield shard
    shard.restore()
    shard.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
# Always tried: RESET ALL outside and inside a transaction, each followed by reads and forged claims.
@example(steps=[("reset_all", 0), ("select", 0), ("forge_next", 0), ("select", 1), ("prepared", 0)])
@example(steps=[("begin", 0), ("insert", 0), ("reset_all", 0), ("forge_same", 0), ("commit", 0), ("select", 0)])
@example(steps=[("begin", 1), ("reset_all", 1), ("commit", 1), ("insert", 1), ("forge_sig", 1), ("select", 0)])
def test_two_tenants_interleaved_on_one_server_connection(
    hardened: EscapeDeployment, hardened_shard: Shard, steps: list[tuple[str, int]]
) -> None:
    model = TwoTenants(hardened, hardened_shard)
    try:
        for op, who in steps:
            model.step(op, who)
            model.check()
        model.finish()
    finally:
        model.close()


def test_router_removes_role_defaults_its_role_could_have_set(hardened: EscapeDeployment) -> None:
    """Role defaults of the router's role may be a shared tenant's doing (ALTER ROLE CURRENT_USER
    SET search_path ..., hidden in a DO block): before a new server session of that role is used,
    the router removes them as the admin (router/net/role_guard.py; without an admin it refuses the
    session, see tests/integration/test_lockout.py)."""
    shared_a, _ = HARDENED.tenants("shared")
    schema_a, _ = HARDENED.tenants("schema")
    role = quote_ident(HARDENED.role)
    with psycopg.connect(hardened.superuser_dsn(), autocommit=True) as admin:
        admin.execute(f"ALTER ROLE {role} SET search_path = pg_catalog, public")  # type: ignore[call-overload]
        try:
            hardened.close_idle_server_connections()
            with psycopg.connect(hardened.url(shared_a), autocommit=True) as conn:
                assert conn.execute("SHOW search_path").fetchone() != ("pg_catalog, public",)
            defaults = admin.execute(
                "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setrole = %s::regrole", (HARDENED.role,)
            ).fetchall()
            assert defaults == [("track_activities=off",)]
            # Tenants acting as their own roles are not concerned.
            with psycopg.connect(hardened.url(schema_a), autocommit=True) as conn:
                assert conn.execute("SELECT count(*) FROM items").fetchone() == (len(hardened.secrets[schema_a]),)
        finally:
            admin.execute(f"ALTER ROLE {role} RESET search_path")  # type: ignore[call-overload]
    hardened.close_idle_server_connections()
    with psycopg.connect(hardened.url(shared_a), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (HARDENED.role,)


# --- the operator's tools run the tenant's code: never with the admin's rights ----------------------

# A hostile schema tenant's code that `tenants export` (a cast in its ORDER BY) and `tenants import`
# (a trigger) run: were it a superuser's, it would open tenant B's schema to A.
_TRAPS_SQL = """
CREATE TYPE esc_mood AS ENUM ('calm');
CREATE FUNCTION esc_mood_text(esc_mood) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'tenant code ran as the superuser %', current_user;
    END IF;
    RETURN format('%s', $1);
END$$;
CREATE CAST (esc_mood AS text) WITH FUNCTION esc_mood_text(esc_mood);
CREATE TABLE esc_moods (mood esc_mood NOT NULL);
INSERT INTO esc_moods VALUES ('calm');
CREATE FUNCTION esc_grab() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('esc_trap', current_user || ' ' || session_user);
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', {victim_schema}, {me});
        EXECUTE format('GRANT SELECT ON %s.items TO %I', {victim_schema}, {me});
    END IF;
    RETURN NULL;
END$$;
CREATE TRIGGER esc_grab AFTER INSERT OR DELETE ON items FOR EACH STATEMENT EXECUTE FUNCTION esc_grab();
"""


def test_export_and_import_run_a_tenants_code_as_the_tenant(hardened: EscapeDeployment, tmp_path: Path) -> None:
    from router.admin.tenant_lifecycle import export_tenant, import_tenant

    a, b = HARDENED.tenants("schema")
    schema_a, schema_b = quote_ident(schema_name(a)), quote_ident(schema_name(b))
    role = tenant_role(a)
    traps = _TRAPS_SQL.replace("{victim_schema}", lit(schema_b)).replace("{me}", lit(role))
    with psycopg.connect(hardened.url(a), autocommit=True) as conn:
        conn.execute(traps)  # type: ignore[call-overload]
    listener = psycopg.connect(hardened.superuser_dsn(), autocommit=True)
    try:
        listener.execute("LISTEN esc_trap")
        archive = tmp_path / "a.tar.gz"
        asyncio.run(export_tenant(hardened.config, hardened.topology, a, archive))
        asyncio.run(import_tenant(hardened.config, hardened.topology, a, archive, replace=True))
        fired = {n.payload for n in listener.notifies(timeout=2, stop_after=1)}
        assert fired == {f"{role} {role}"}, fired  # it ran, as the tenant only
        hardened.close_idle_server_connections()
        with psycopg.connect(hardened.url(a), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT secret FROM {schema_b}.items")  # type: ignore[call-overload]
            rows = conn.execute("SELECT secret FROM items ORDER BY 1").fetchall()
            assert [row[0] for row in rows] == sorted(hardened.secrets[a])
    finally:
        listener.close()
        with psycopg.connect(hardened.superuser_dsn(), autocommit=True) as admin:
            for sql in (
                f"DROP TRIGGER IF EXISTS esc_grab ON {schema_a}.items",
                f"DROP FUNCTION IF EXISTS {schema_a}.esc_grab()",
                f"DROP TABLE IF EXISTS {schema_a}.esc_moods",
                f"DROP TYPE IF EXISTS {schema_a}.esc_mood CASCADE",  # its cast and function with it
                f"REVOKE ALL ON SCHEMA {schema_b} FROM {quote_ident(role)}",
                f"REVOKE ALL ON {schema_b}.items FROM {quote_ident(role)}",
            ):
                admin.execute(sql)  # type: ignore[call-overload]


def test_a_cancel_never_interrupts_the_router_entering_the_tenant(hardened: EscapeDeployment) -> None:
    """A client's cancel that arrives while the router is still entering its tenant (held up here
    by a lock on the key table) reaches the client's own statement once the entry is done, never
    the entry: a cancelled entry would leave the session without its tenant, or, had the leave
    before it been cancelled too, with the previous tenant's. (asyncpg and a CancelRequest of our
    own: psycopg's blocking cancel() holds the GIL, which the in-process router thread needs.)"""
    a, b = HARDENED.tenants("shared")
    table = quote_ident(HARDENED.table)

    async def scenario() -> None:
        victim = await asyncpg.connect(hardened.url(b))
        await victim.fetch(f"SELECT count(*) FROM {table}")  # B entered (pool size 1)
        await victim.close()
        admin = await asyncpg.connect(hardened.superuser_dsn())
        attacker = await asyncpg.connect(hardened.url(a), statement_cache_size=0)
        try:
            lock = admin.transaction()
            await lock.start()
            await admin.execute("LOCK TABLE router.context_key IN ACCESS EXCLUSIVE MODE")
            # A simple Query (execute without arguments), in the same write as the router's set-up:
            # it is running when the set-up ends. With fetch, asyncpg waits for its Parse's answer
            # before sending Bind/Execute, and a cancel that lands in between finds the server idle
            # and is lost, as it would be on a direct connection.
            query = asyncio.ensure_future(attacker.execute(f"SELECT pg_sleep(2), tenant_id FROM {table}"))
            try:
                await wait_until_async(
                    lambda: admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"),
                    what="the entry waiting for the key table",
                    within=10,
                )
                protocol = attacker._protocol
                key = (protocol.backend_secret & 0xFFFFFFFF).to_bytes(4, "big")  # asyncpg keeps it as an int
                await send_cancel("127.0.0.1", hardened.router.port, protocol.backend_pid, key, 5)
                await asyncio.sleep(0.3)  # elapsed time: the cancel would have hit the entry by now
            finally:
                await lock.rollback()
            with pytest.raises(asyncpg.QueryCanceledError) as info:
                await query  # the client's own statement was cancelled, after the entry
            assert "enter_tenant" not in (info.value.context or ""), info.value.context
            rows = await attacker.fetch(f"SELECT tenant_id FROM {table}")
            assert rows and {row[0] for row in rows} == {a}
        finally:
            await attacker.close()
            await admin.close()

    asyncio.run(scenario())


def test_a_session_wiped_after_a_pinned_client_enters_the_tenant_again(hardened: EscapeDeployment) -> None:
    """A client that pinned its server session (LISTEN) leaves: the router wipes the session with
    DISCARD ALL, whose RESET ALL empties the entered tenant. The next client of the same tenant,
    on that same server session (pool size 1), must be entered again and see its rows."""
    a, _b = HARDENED.tenants("shared")
    table = quote_ident(HARDENED.table)

    async def scenario() -> None:
        pinned = await asyncpg.connect(hardened.url(a))
        await pinned.execute("LISTEN esc_wiped")  # pins the server session to this client
        assert {row[0] for row in await pinned.fetch(f"SELECT tenant_id FROM {table}")} == {a}
        await pinned.close()  # the router wipes the session, then gives it back to the pool
        after = await asyncpg.connect(hardened.url(a))
        try:
            rows = await after.fetch(f"SELECT tenant_id FROM {table}")
            assert rows and {row[0] for row in rows} == {a}
        finally:
            await after.close()

    asyncio.run(scenario())
