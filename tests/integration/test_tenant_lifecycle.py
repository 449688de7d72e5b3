"""Tenant lifecycle against real shards: export, erase and import for every isolation model, and
suspension seen live by a router's clients.

Round trip per model: tenants A and B with rows (awkward values: tabs, newlines, backslashes, NULLs,
json, bytea, arrays, time zones, a generated column, a foreign key); export A, erase A (the wrong
confirmation first: nothing happens), A's rows and catalog entry are gone and B's rows untouched;
import A: the same checksums as the export, the same rows, B untouched throughout. A corrupted
archive, caught before or after loading, leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from router.admin.rls_enable import enable_rls
from router.admin.tenant_admin import add_tenant, init_catalog, resume_tenant, show_tenant, suspend_tenant
from router.admin.tenant_lifecycle import (
    MANIFEST_NAME,
    ArchiveInvalid,
    ConfirmationMismatch,
    ImportRefused,
    Manifest,
    TenantLifecycleError,
    VerificationFailed,
    erase_tenant,
    export_tenant,
    import_tenant,
)
from router.catalog.store import CatalogStore
from router.cli import main
from router.config import RouterConfig
from router.core.topology import Topology
from router.errors import UnknownTenant
from router.isolation import Isolation, database_name, quote_ident, schema_name, tenant_role
from router.testing.deploy import CONTEXT_SECRET, load, write_configs
from router.testing.pgcluster import PgEnvironment
from router.testing.waiting import wait_until

from .conftest import RouterFactory, url

pytestmark = pytest.mark.integration

SETTING = "app.tenant_id"
SECRET = CONTEXT_SECRET  # the session's: a shard database holds one key (see deploy.CONTEXT_SECRET)


def _tables_sql(prefix: str, tenant_column: str = "") -> str:
    """Two tables, `<prefix>people` and `<prefix>entries` referencing it (the child sorts first by
    name, so loading must follow the foreign key, not the names)."""
    return f"""
CREATE TABLE IF NOT EXISTS {prefix}people (
    {tenant_column}id bigserial PRIMARY KEY,
    name text NOT NULL,
    born date,
    meta jsonb,
    seen timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {prefix}entries (
    {tenant_column}id bigserial PRIMARY KEY,
    person_id bigint NOT NULL REFERENCES {prefix}people (id),
    note text,
    amount numeric(12, 2),
    blob bytea,
    tags text[],
    doubled numeric GENERATED ALWAYS AS (amount * 2) STORED
);
"""


# The application's schema for schema and database tenants (tenant.schema_sql).
APP_SCHEMA_SQL = _tables_sql("lc_")
PRIVATE_TABLES = ("lc_entries", "lc_people")
# Shared tables, in the shards' application database.
SHARED_SQL = _tables_sql("lc_sh_", "tenant_id text NOT NULL, ")
SHARED_TABLES = ("lc_sh_entries", "lc_sh_people")

PEOPLE = [
    ("plain", "1990-01-31", {"tier": "gold"}, "2024-03-01 12:00:00+02"),
    ("tab\there, newline\nthere, backslash \\ and quote '\"", None, None, "2024-03-01 00:00:00-07"),
    ("ünïcødé ✓ 日本", "2000-02-29", {"nested": {"list": [1, 2.5, None, "x"]}}, "1999-12-31 23:59:59.123456+00"),
]
ENTRIES = [
    (0, "first", "12.30", b"\x00\x01\xffbinary", ["a", "b c", 'd"e', None]),
    (0, None, None, None, None),
    (2, "\\N is not null here", "-0.01", b"", []),
]


# --- deployment ----------------------------------------------------------------------------------


@dataclass
class Setup:
    env: PgEnvironment
    config: RouterConfig
    topology: Topology
    directory: Path


@pytest.fixture(scope="module")
def setup(pg_env: PgEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    directory = tmp_path_factory.mktemp("lifecycle")
    (directory / "app_schema.sql").write_text(APP_SCHEMA_SQL)
    path = write_configs(
        directory,
        pg_env,
        extra={
            "admin": {"user": pg_env.SUPERUSER, "password": pg_env.SUPERUSER_PASSWORD},
            # write_configs' own tenant section, plus ours.
            "tenant": {
                "resolution": ["user", "option"],
                "setting": SETTING,
                "context_secret": SECRET,
                "schema_sql": "app_schema.sql",
            },
        },
    )
    config, topology = load(path)
    asyncio.run(init_catalog(config))
    return Setup(pg_env, config, topology, directory)


@pytest.fixture(scope="module")
async def shared_tables(setup: Setup) -> AsyncIterator[None]:
    """The lc_sh_* tables on every shard (owned by the admin), protected by `rls enable`, which
    records them in router.rls_tables."""
    env = setup.env
    for shard in env.shards:
        conn = await _superuser(env, shard)
        try:
            await conn.execute(SHARED_SQL)
        finally:
            await conn.close()
    for table in SHARED_TABLES:
        await enable_rls(setup.config, setup.topology, f"public.{table}", "tenant_id")
    yield
    for shard in env.shards:
        conn = await _superuser(env, shard)
        try:
            for table in SHARED_TABLES:
                # A regclass does not keep its table alive: forget the table before dropping it.
                await conn.execute("DELETE FROM router.rls_tables WHERE table_name = $1::text::regclass", table)
            await conn.execute(f"DROP TABLE IF EXISTS {', '.join(SHARED_TABLES)}")
        finally:
            await conn.close()


async def _superuser(env: PgEnvironment, shard: str, dbname: str | None = None) -> Any:
    return await asyncpg.connect(
        env.shard_dsn(shard, user=env.SUPERUSER, password=env.SUPERUSER_PASSWORD, dbname=dbname or env.SHARD_DB)
    )


# --- a tenant's rows, as seen directly on its shard ----------------------------------------------


@dataclass
class Tenant:
    setup: Setup
    id: str
    isolation: Isolation
    shard: str = ""

    @property
    def tables(self) -> tuple[str, ...]:
        return SHARED_TABLES if self.isolation == "shared" else PRIVATE_TABLES

    @property
    def manifest_names(self) -> list[str]:
        """How an export names the tenant's tables, parents first."""
        prefix = {"shared": "public.", "schema": "", "database": "public."}[self.isolation]
        return [prefix + t for t in reversed(self.tables)]

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        own = database_name(self.id) if self.isolation == "database" else None
        conn = await _superuser(self.setup.env, self.shard, own)
        try:
            if self.isolation == "schema":
                await conn.execute(f"SET search_path = {quote_ident(schema_name(self.id))}")
            yield conn
        finally:
            await conn.close()

    def _where(self) -> str:
        return f" WHERE tenant_id = '{self.id}'" if self.isolation == "shared" else ""

    async def add(self) -> None:
        view = await add_tenant(self.setup.config, self.setup.topology, self.id, self.isolation)
        self.shard = view.shard
        if self.isolation != "shared":
            # Until `tenants add` applies tenant.schema_sql itself this creates the tables; after, a no-op.
            async with self.connect() as conn:
                await conn.execute(APP_SCHEMA_SQL)

    async def seed(self, copies: int = 1) -> None:
        entries, people = self.tables
        tenant = ("tenant_id",) if self.isolation == "shared" else ()
        extra = (self.id,) if self.isolation == "shared" else ()
        async with self.connect() as conn:
            for _ in range(copies):
                ids = []
                for name, born, meta, seen in PEOPLE:
                    ids.append(
                        await conn.fetchval(
                            f"INSERT INTO {people} ({', '.join((*tenant, 'name', 'born', 'meta', 'seen'))})"
                            f" VALUES ({', '.join(f'${i}' for i in range(1, 5 + len(tenant)))}) RETURNING id",
                            *extra,
                            f"{name} of {self.id}",
                            None if born is None else _date(born),
                            None if meta is None else json.dumps(meta),
                            _timestamp(seen),
                        )
                    )
                for person, note, amount, blob, tags in ENTRIES:
                    await conn.execute(
                        f"INSERT INTO {entries} ({', '.join((*tenant, 'person_id', 'note', 'amount', 'blob', 'tags'))})"
                        f" VALUES ({', '.join(f'${i}' for i in range(1, 6 + len(tenant)))})",
                        *extra,
                        ids[person],
                        note,
                        None if amount is None else _decimal(amount),
                        blob,
                        tags,
                    )

    async def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the tenant per table, sorted; {} when its schema or database is gone."""
        if self.isolation == "database" and not await self.exists():
            return {}
        async with self.connect() as conn:
            if self.isolation == "schema" and not await self.exists():
                return {}
            return {
                table: sorted((tuple(r) for r in await conn.fetch(f"SELECT * FROM {table}{self._where()}")), key=repr)
                for table in self.tables
            }

    async def exists(self) -> bool:
        """Whether the schema or database is there (shared: whether it has any row)."""
        env = self.setup.env
        conn = await _superuser(env, self.shard)
        try:
            if self.isolation == "schema":
                found = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema_name(self.id))
            elif self.isolation == "database":
                found = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database_name(self.id))
            else:
                found = await conn.fetchval(f"SELECT 1 FROM lc_sh_people{self._where()} LIMIT 1")
            return found is not None
        finally:
            await conn.close()

    async def role_exists(self) -> bool:
        conn = await _superuser(self.setup.env, self.shard)
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", tenant_role(self.id)))
        finally:
            await conn.close()

    async def in_catalog(self) -> bool:
        async with CatalogStore(self.setup.config.catalog.dsn, self.setup.config.catalog.schema) as store:
            return await store.get(self.id) is not None

    async def cleanup(self) -> None:
        with contextlib.suppress(UnknownTenant):
            await erase_tenant(self.setup.config, self.setup.topology, self.id, confirm=self.id)


def _date(text: str) -> Any:
    import datetime

    return datetime.date.fromisoformat(text)


def _timestamp(text: str) -> Any:
    import datetime

    return datetime.datetime.fromisoformat(text)


def _decimal(text: str) -> Any:
    import decimal

    return decimal.Decimal(text)


@pytest.fixture
async def pair(
    request: pytest.FixtureRequest, setup: Setup, shared_tables: None
) -> AsyncIterator[tuple[Tenant, Tenant]]:
    """Tenants A (rows seeded once) and B (twice) of the isolation model `request.param`; erased after."""
    isolation: Isolation = request.param
    suffix = uuid.uuid4().hex[:8]
    a, b = (Tenant(setup, f"lc-{isolation[:2]}-{name}-{suffix}", isolation) for name in "ab")
    try:
        for tenant in (a, b):
            await tenant.add()
        await a.seed()
        await b.seed(copies=2)
        yield a, b
    finally:
        for tenant in (a, b):
            await tenant.cleanup()


MODELS = pytest.mark.parametrize("pair", ["shared", "schema", "database"], indirect=True)


# --- export, erase, import -----------------------------------------------------------------------


@MODELS
async def test_export_erase_import_round_trip(pair: tuple[Tenant, Tenant], tmp_path: Path) -> None:
    a, b = pair
    config, topology = a.setup.config, a.setup.topology
    a_rows, b_rows = await a.rows(), await b.rows()
    assert [len(a_rows[t]) for t in a.tables] == [3, 3] and [len(b_rows[t]) for t in b.tables] == [6, 6]

    archive = tmp_path / "a.tar.gz"
    exported = await export_tenant(config, topology, a.id, archive)
    assert (exported.tenant, exported.isolation, exported.source_shard) == (a.id, a.isolation, a.shard)
    assert [t.name for t in exported.tables if t.table in a.tables] == a.manifest_names
    assert {t.name: t.rows for t in exported.tables if t.table in a.tables} == dict.fromkeys(a.manifest_names, 3)
    entries = next(t for t in exported.tables if t.table == a.tables[0])
    assert "doubled" not in entries.columns  # generated: computed again on import
    assert entries.tenant_column == ("tenant_id" if a.isolation == "shared" else None)
    with tarfile.open(archive, "r:gz") as tar:
        assert Manifest.from_json(tar.extractfile(MANIFEST_NAME).read()) == exported  # type: ignore[union-attr]

    # The wrong confirmation does nothing at all.
    with pytest.raises(ConfirmationMismatch, match="nothing was done"):
        await erase_tenant(config, topology, a.id, confirm=b.id)
    assert await a.rows() == a_rows
    assert (await show_tenant(config, topology, a.id)).tenant.status == "active"

    if a.isolation != "shared":
        assert await a.role_exists()  # provisioned with the context secret
    erased = await erase_tenant(config, topology, a.id, confirm=a.id)
    assert {name: count for name, count in erased.items() if name.rsplit(".", 1)[-1] in a.tables} == dict.fromkeys(
        a.manifest_names, 3
    )
    assert not await a.exists() and not await a.in_catalog()
    assert all(not rows for rows in (await a.rows()).values())
    if a.isolation != "shared":
        assert not await a.role_exists()
    assert await b.rows() == b_rows
    with pytest.raises(UnknownTenant):
        await erase_tenant(config, topology, a.id, confirm=a.id)

    imported = await import_tenant(config, topology, a.id, archive)
    assert imported == exported
    assert await a.in_catalog()
    assert (await show_tenant(config, topology, a.id)).tenant.isolation == a.isolation
    assert await a.rows() == a_rows
    assert await b.rows() == b_rows
    again = await export_tenant(config, topology, a.id, tmp_path / "again.tar.gz")
    assert [(t.name, t.rows, t.sha256) for t in again.tables] == [(t.name, t.rows, t.sha256) for t in exported.tables]

    # Importing over existing rows needs replace, which gives the same rows again.
    with pytest.raises(ImportRefused, match="already has rows"):
        await import_tenant(config, topology, a.id, archive)
    assert await import_tenant(config, topology, a.id, archive, replace=True) == exported
    assert await a.rows() == a_rows
    assert await b.rows() == b_rows

    # Sequences were moved past the loaded ids: new rows do not collide.
    await a.seed()
    assert [len(rows) for rows in (await a.rows()).values()] == [6, 6]


@MODELS
async def test_a_corrupted_archive_leaves_nothing_behind(pair: tuple[Tenant, Tenant], tmp_path: Path) -> None:
    a, b = pair
    config, topology = a.setup.config, a.setup.topology
    b_rows = await b.rows()
    archive = tmp_path / "a.tar.gz"
    exported = await export_tenant(config, topology, a.id, archive)
    await erase_tenant(config, topology, a.id, confirm=a.id)
    people = next(t for t in exported.tables if t.table == a.tables[1])

    # A table file changed after export: caught by its checksum before anything is touched.
    tampered = tmp_path / "tampered.tar.gz"
    _rewrite(archive, tampered, {people.file: lambda data: data.replace(b"plain", b"PLAIN")})
    with pytest.raises(ArchiveInvalid, match=f"corrupt: table {people.name}"):
        await import_tenant(config, topology, a.id, tampered)
    assert not await a.in_catalog() and not await a.exists()

    # Changed along with its manifest, in a way the server reads back differently ("0012.30" is
    # 12.30): loaded, read back, found different, rolled back, and the added tenant removed again.
    entries = next(t for t in exported.tables if t.table == a.tables[0])
    forged = tmp_path / "forged.tar.gz"
    _rewrite(archive, forged, {entries.file: lambda data: data.replace(b"\t12.30\t", b"\t0012.30\t")}, fix_sums=True)
    with pytest.raises(VerificationFailed, match=f"rolled back: {entries.name}: read back 3 rows"):
        await import_tenant(config, topology, a.id, forged)
    assert not await a.in_catalog() and not await a.exists()
    if a.isolation != "shared":
        assert not await a.role_exists()
    assert await b.rows() == b_rows

    # An archive of another tenant is not imported under this one.
    with pytest.raises(ArchiveInvalid, match=f"holds tenant {a.id!r}, not {b.id!r}"):
        await import_tenant(config, topology, b.id, archive)
    assert await b.rows() == b_rows


def _rewrite(source: Path, target: Path, edits: dict[str, Callable[[bytes], bytes]], fix_sums: bool = False) -> None:
    """Copy an archive with some members edited; with `fix_sums`, the manifest's checksums follow."""
    import hashlib

    with tarfile.open(source, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    for name, edit in edits.items():
        edited = edit(members[name])
        assert edited != members[name], "the edit changed nothing"
        members[name] = edited
    if fix_sums:
        document = json.loads(members[MANIFEST_NAME])
        for table in document["tables"]:
            table["sha256"] = hashlib.sha256(members[table["file"]]).hexdigest()
        members[MANIFEST_NAME] = json.dumps(document).encode()
    with tarfile.open(target, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("pair", ["schema"], indirect=True)
async def test_import_needs_the_tables_and_matching_isolation(pair: tuple[Tenant, Tenant], tmp_path: Path) -> None:
    a, _ = pair
    config, topology = a.setup.config, a.setup.topology
    archive = tmp_path / "a.tar.gz"
    await export_tenant(config, topology, a.id, archive)
    async with a.connect() as conn:
        await conn.execute("DELETE FROM lc_entries")
        await conn.execute("DROP TABLE lc_entries")
    with pytest.raises(TenantLifecycleError, match=r"do not exist in schema .* lc_entries") as info:
        await import_tenant(config, topology, a.id, archive, replace=True)
    assert "schema_sql" in (info.value.hint or "")
    assert await a.in_catalog()  # it was there before: a failed import keeps it
    shared = Tenant(a.setup, f"lc-sh-x-{uuid.uuid4().hex[:8]}", "shared")
    await shared.add()
    try:
        with pytest.raises(ArchiveInvalid, match="holds tenant"):
            await import_tenant(config, topology, shared.id, archive)
    finally:
        await shared.cleanup()
    with pytest.raises(ImportRefused, match="is a schema tenant"):
        # Same id, other isolation: build it by exporting a shared tenant of that id.
        await _import_as_other_isolation(a, tmp_path)


async def _import_as_other_isolation(a: Tenant, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    forged = tmp_path / "other-isolation.tar.gz"

    def as_database(data: bytes) -> bytes:
        document = json.loads(data)
        document["isolation"] = "database"
        for table in document["tables"]:
            table["schema"] = "public"
        return json.dumps(document).encode()

    _rewrite(archive, forged, {MANIFEST_NAME: as_database})
    await import_tenant(a.setup.config, a.setup.topology, a.id, forged)


@pytest.mark.parametrize("pair", ["shared"], indirect=True)
async def test_without_admin_the_routers_role_works_through_row_level_security(
    pair: tuple[Tenant, Tenant], tmp_path: Path
) -> None:
    """No `admin` in router.yaml: the router's own role (NOBYPASSRLS) sees only what the signed
    tenant context lets through, and that is all a shared tenant needs."""
    a, b = pair
    env = a.setup.env
    config, topology = load(
        write_configs(
            tmp_path / "no-admin",
            env,
            extra={
                "admin": None,
                "tenant": {"resolution": ["user", "option"], "setting": SETTING, "context_secret": SECRET},
            },
        )
    )
    assert config.admin is None
    a_rows, b_rows = await a.rows(), await b.rows()
    archive = tmp_path / "a.tar.gz"
    exported = await export_tenant(config, topology, a.id, archive)
    assert {t.name: t.rows for t in exported.tables if t.table in a.tables} == dict.fromkeys(a.manifest_names, 3)
    erased = await erase_tenant(config, topology, a.id, confirm=a.id)
    assert {name: count for name, count in erased.items() if name.rsplit(".", 1)[-1] in a.tables} == dict.fromkeys(
        a.manifest_names, 3
    )
    assert await b.rows() == b_rows
    assert await import_tenant(config, topology, a.id, archive) == exported
    assert await a.rows() == a_rows
    assert await b.rows() == b_rows


@pytest.mark.parametrize("pair", ["shared"], indirect=True)
def test_cli_export_erase_import(
    pair: tuple[Tenant, Tenant], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = pair
    archive = tmp_path / "cli.tar.gz"

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(a.setup.directory / "router.yaml"), "tenants", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = cli("export", a.id, "-o", str(archive))
    assert code == 0, err
    assert "public.lc_sh_people" in out and "3 rows" in out and "sha256" in out and str(archive) in out

    code, out, err = cli("erase", a.id, "--confirm", "someone-else")
    assert (code, out) == (1, "")
    assert "error:" in err and "nothing was done" in err and f"--confirm {a.id}" in err

    code, out, err = cli("erase", a.id, "--confirm", a.id)
    assert code == 0, err
    assert "public.lc_sh_people" in out and "3 rows deleted" in out and "6 rows in total" in out

    code, out, err = cli("import", a.id, str(archive))
    assert code == 0, err
    assert "public.lc_sh_entries" in out and "verified" in out
    code, out, err = cli("import", a.id, str(archive))
    assert code == 1 and "already has rows" in err and "--replace" in err
    code, out, err = cli("import", a.id, str(archive), "--replace")
    assert code == 0, err

    code, out, err = cli("import", a.id, str(tmp_path / "missing.tar.gz"))
    assert code == 1 and "does not exist" in err
    code, out, err = cli("export", a.id, "-o", str(tmp_path / "no" / "such" / "dir.tar.gz"))
    assert code == 1 and "could not write" in err


# --- suspend, seen by live clients ---------------------------------------------------------------


@contextlib.contextmanager
def _client(router: Any, tenant: str) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(url(router, tenant), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


async def _login(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.close()


def test_suspend_refuses_live_and_new_clients_of_that_tenant_only(setup: Setup, make_router: RouterFactory) -> None:
    config, topology = setup.config, setup.topology
    router = make_router()
    tenant, other = f"lc-susp-{uuid.uuid4().hex[:8]}", f"lc-other-{uuid.uuid4().hex[:8]}"
    for name in (tenant, other):
        asyncio.run(add_tenant(config, topology, name, "shared"))
    try:
        wait_until(
            lambda: None not in (router.router.catalog.get(tenant), router.router.catalog.get(other)),
            "None not in (router.router.catalog.get(tenant), router.router.catalog.get(other))",
            within=2.0,
        )
        with _client(router, tenant) as live, _client(router, other) as bystander:
            assert live.execute("SELECT 1").fetchone() == (1,)
            asyncio.run(suspend_tenant(config, topology, tenant))
            wait_until(
                lambda: router.router.catalog.get(tenant),
                "the router to see tenant status suspended",
                within=2.0,
                until=lambda seen: seen is not None and seen.status == "suspended",
            )

            with pytest.raises(psycopg.OperationalError) as info:
                live.execute("SELECT 1")
            assert info.value.sqlstate == "08004", info.value
            assert "suspended" in str(info.value)
            # (libpq does not keep a login error's SQLSTATE; asyncpg does)
            with pytest.raises(asyncpg.PostgresError) as refused:
                asyncio.run(_login(url(router, tenant)))
            assert refused.value.sqlstate == "08004", refused.value

            assert bystander.execute("SELECT 1").fetchone() == (1,)  # other tenants carry on
            with _client(router, other) as fresh:
                assert fresh.execute("SELECT 1").fetchone() == (1,)

            asyncio.run(resume_tenant(config, topology, tenant))
            wait_until(
                lambda: router.router.catalog.get(tenant),
                "the router to see tenant status active",
                within=2.0,
                until=lambda seen: seen is not None and seen.status == "active",
            )
            with _client(router, tenant) as back:
                assert back.execute("SELECT 1").fetchone() == (1,)
    finally:
        for name in (tenant, other):
            asyncio.run(erase_tenant(config, topology, name, confirm=name))
