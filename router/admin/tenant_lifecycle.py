"""Tenant lifecycle: export a tenant's data to one archive, import it back, erase it for good.

Owns: the export archive (a gzip tar holding `manifest.json` and one PostgreSQL COPY text file per
table), its `Manifest`, the checksum over COPY bytes (`CopyDigest`), which tables hold a tenant's
rows under each isolation model (shared: the shard's `router.rls_tables`, rows whose tenant column
is the tenant; schema: every ordinary table of its schema; database: every ordinary table of its
database), and `export_tenant`, `import_tenant` and `erase_tenant`, which `tenant-router tenants
export/import/erase` call (and an HTTP API may).

Must not: parse arguments or print (router/cli.py does), find a tenant or its shard its own way
(the catalog through tenant_admin's store helpers, the shard as routing places it), open shard
connections other than through router/admin/provisioning.py (`connect`, as `admin`, else `server`; as
the tenant's own role where it has one to read and write its tables, see `_login`), create
or drop a tenant's schema, database or role itself (`tenant_admin.add_tenant` provisions them, with
the application schema `tenant.schema_sql`; `provisioning.drop_tenant` drops them), or run on the
router's hot path: every call opens its own connections and closes them.

Determinism: every session sets the same output settings (UTC, ISO dates, ...) and rows are ordered
by the text of every column under the "C" collation, so the same rows give the same COPY bytes, and
the same checksum, on any shard whatever its collation. Replicas follow by streaming replication.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal, TypeVar

import asyncpg
from pydantic import Field, TypeAdapter, ValidationError

from router.admin.provisioning import (
    SHARD_ERRORS,
    Login,
    close,
    connect,
    describe,
    drop_tenant,
    reason,
    shard_primary,
)
from router.admin.rls import ENTER_TENANT, ENTER_TENANT_SQL, TABLES_TABLE
from router.admin.tenant_admin import TenantAdminError, TenantView, _require, _store, _view, add_tenant
from router.catalog.store import Tenant
from router.config import RouterConfig
from router.core.hashing import Ring
from router.core.topology import Topology
from router.errors import UnknownTenant
from router.isolation import (
    Isolation,
    database_name,
    quote_ident,
    quote_literal,
    schema_name,
    sign_tenant,
    tenant_role,
    tenant_role_password,
    validate_tenant_id,
)

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ArchiveInvalid",
    "ConfirmationMismatch",
    "CopyDigest",
    "ImportRefused",
    "Manifest",
    "TableData",
    "TenantLifecycleError",
    "VerificationFailed",
    "erase_summary",
    "erase_tenant",
    "export_tenant",
    "import_tenant",
    "load_order",
    "read_archive",
    "select_rows_sql",
    "write_archive",
]

FORMAT: Final = "tenant-router-export"
FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "manifest.json"
DATA_DIR: Final = "data"
# Output settings every lifecycle session uses, so COPY text (and the checksum over it) does not
# depend on the server's or the client's defaults.
_OUTPUT_SETTINGS: Final = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)
_SYSTEM_SCHEMAS: Final = ("pg_catalog", "information_schema")


# --- errors --------------------------------------------------------------------------------------


class TenantLifecycleError(TenantAdminError):
    """An export, import or erase could not be carried out; the message says what and where."""


class ArchiveInvalid(TenantLifecycleError):
    """The file is not an export archive this router can read, or its contents do not match its manifest."""

    sqlstate = "22000"


class ImportRefused(TenantLifecycleError):
    """The import would mix the archive's rows with rows the tenant already has (and `replace` is off)."""


class VerificationFailed(TenantLifecycleError):
    """The rows read back after loading differ from the manifest; the import was rolled back."""

    sqlstate = "XX001"


class ConfirmationMismatch(TenantLifecycleError):
    """`erase_tenant` needs the tenant id typed again; nothing was done."""

    sqlstate = "22023"


# --- the manifest and the archive ----------------------------------------------------------------

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
RowCount = Annotated[int, Field(ge=0)]


@dataclass(frozen=True)
class TableData:
    """One table's rows in the archive.

    `schema` is None for a schema tenant (the table lives in the tenant's schema, whatever it is
    called on the target); otherwise the schema within the shard's database (shared) or the
    tenant's database. `tenant_column` (shared tenants only) holds the tenant id.
    """

    table: str
    schema: str | None
    columns: tuple[str, ...]
    rows: RowCount
    sha256: Sha256Hex
    file: str
    tenant_column: str | None = None

    @property
    def name(self) -> str:
        """`table` for a schema tenant, else `schema.table`: how the commands name it."""
        return self.table if self.schema is None else f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class Manifest:
    """What an archive holds: whose rows, exported from where and when, and one entry per table."""

    tenant: str
    isolation: Isolation
    source_shard: str
    created_at: datetime
    tables: tuple[TableData, ...]
    format: Literal["tenant-router-export"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    copy_format: Literal["text"] = "text"
    encoding: Literal["UTF8"] = "UTF8"

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def to_json(self) -> str:
        document = dataclasses.asdict(self)
        document["created_at"] = self.created_at.isoformat()
        document["tables"] = [{"name": t.name, **dataclasses.asdict(t)} for t in self.tables]
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate; raise ArchiveInvalid naming what is wrong."""
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveInvalid(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ArchiveInvalid(f"{MANIFEST_NAME} does not describe a {FORMAT} archive")
        version = document.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ArchiveInvalid(
                f"the archive has format version {version}, newer than this router reads ({FORMAT_VERSION})",
                hint="import it with a newer tenant-router",
            )
        try:
            manifest = _MANIFEST_ADAPTER.validate_python(document)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc']) or '(manifest)'}: {e['msg']}" for e in exc.errors()
            )
            raise ArchiveInvalid(f"{MANIFEST_NAME} is invalid: {problems}") from exc
        manifest._check()
        return manifest

    def _check(self) -> None:
        validate = _valid_tenant_id(self.tenant)
        if validate is not None:
            raise ArchiveInvalid(f"{MANIFEST_NAME}: {validate}")
        if self.created_at.tzinfo is None:
            raise ArchiveInvalid(f"{MANIFEST_NAME}: created_at has no time zone")
        for field, values in (("name", [t.name for t in self.tables]), ("file", [t.file for t in self.tables])):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ArchiveInvalid(f"{MANIFEST_NAME}: table {field}s appear more than once: {', '.join(repeated)}")
        for t in self.tables:
            if (t.schema is None) != (self.isolation == "schema"):
                raise ArchiveInvalid(f"{MANIFEST_NAME}: table {t.name}: schema does not fit a {self.isolation} tenant")
            if (t.tenant_column is None) != (self.isolation != "shared"):
                raise ArchiveInvalid(f"{MANIFEST_NAME}: table {t.name}: tenant_column belongs to shared tenants only")

    def summary(self) -> list[str]:
        """Lines for the command line: one per table (rows, checksum), then the totals."""
        width = max((len(t.name) for t in self.tables), default=0)
        lines = [f"{t.name:<{width}}  {t.rows:>10} rows  sha256 {t.sha256}" for t in self.tables]
        lines.append(
            f"tenant {self.tenant} ({self.isolation}, exported from {self.source_shard} at"
            f" {self.created_at.isoformat()}): {len(self.tables)} tables, {self.total_rows} rows"
        )
        return lines


_MANIFEST_ADAPTER: Final = TypeAdapter(Manifest)


def _valid_tenant_id(tenant_id: str) -> str | None:
    try:
        validate_tenant_id(tenant_id)
    except ValueError as exc:
        return str(exc)
    return None


class CopyDigest:
    """SHA-256 and row count of COPY text bytes, fed in chunks of any size.

    In text format every row is one line: newlines inside values are written as `\\n`, so the rows
    are the newline bytes.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.rows = 0
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        self.rows += chunk.count(b"\n")
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    @classmethod
    def of(cls, chunks: Iterable[bytes]) -> CopyDigest:
        digest = cls()
        for chunk in chunks:
            digest.update(chunk)
        return digest


def write_archive(path: Path, manifest: Manifest, data: Mapping[str, Path]) -> None:
    """Write `manifest` and each table's COPY file (`data[table.file]`) as one gzip tar at `path`.

    The archive appears at `path` complete or not at all (written beside it, then renamed), and is
    readable by its owner only: it holds the tenant's data.
    """
    missing = [t.file for t in manifest.tables if t.file not in data]
    if missing:
        raise ValueError(f"no data given for {', '.join(missing)}")
    mtime = int(manifest.created_at.timestamp())
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            body = manifest.to_json().encode()
            tar.addfile(_member(MANIFEST_NAME, len(body), mtime), io.BytesIO(body))
            for table in manifest.tables:
                source = data[table.file]
                with source.open("rb") as f:
                    tar.addfile(_member(table.file, source.stat().st_size, mtime), f)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def read_archive(path: Path, into: Path) -> tuple[Manifest, list[Path]]:
    """Read the archive at `path`: its manifest, and each table's COPY file unpacked into `into`
    (same order as `manifest.tables`), each checked against its row count and checksum.

    Only the members the manifest names are read, into names of our own: nothing in the archive
    chooses a path on this machine. Raises ArchiveInvalid for anything unreadable or mismatched.
    """
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            manifest = Manifest.from_json(_read_member(tar, path, MANIFEST_NAME).read())
            files = []
            for index, table in enumerate(manifest.tables):
                target = into / f"{index:04d}.copy"
                digest = CopyDigest()
                with _read_member(tar, path, table.file) as source, target.open("wb") as out:
                    while chunk := source.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                if (digest.rows, digest.hexdigest()) != (table.rows, table.sha256):
                    raise ArchiveInvalid(
                        f"archive {path} is corrupt: table {table.name} ({table.file}) has {digest.rows} rows"
                        f" with sha256 {digest.hexdigest()}, the manifest says {table.rows} rows with"
                        f" sha256 {table.sha256}"
                    )
                files.append(target)
    except FileNotFoundError as exc:
        raise ArchiveInvalid(f"archive {path} does not exist") from exc
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ArchiveInvalid(f"archive {path} is not a readable gzip tar: {exc}") from exc
    return manifest, files


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    return info


def _read_member(tar: tarfile.TarFile, path: Path, name: str) -> IO[bytes]:
    try:
        member = tar.getmember(name)
    except KeyError as exc:
        raise ArchiveInvalid(f"archive {path} has no {name}") from exc
    source = tar.extractfile(member) if member.isfile() else None
    if source is None:
        raise ArchiveInvalid(f"archive {path}: {name} is not a regular file")
    return source


# --- SQL that depends on nothing but names (pure) ------------------------------------------------


def select_rows_sql(
    schema: str, table: str, columns: Sequence[str], tenant_column: str | None = None, tenant_id: str | None = None
) -> str:
    """The query whose COPY output is a table's export: its `columns`, only `tenant_id`'s rows when
    `tenant_column` is given, ordered by every column's text under the "C" collation so the bytes
    are the same on any server (types without a btree order, such as json, sort too)."""
    listed = ", ".join(quote_ident(c) for c in columns)
    sql = f"SELECT {listed} FROM {quote_ident(schema)}.{quote_ident(table)}"
    if tenant_column is not None:
        if tenant_id is None:
            raise ValueError("tenant_column needs tenant_id")
        sql += f" WHERE {quote_ident(tenant_column)} = {quote_literal(tenant_id)}"
    if columns:
        sql += " ORDER BY " + ", ".join(f'{quote_ident(c)}::text COLLATE "C"' for c in columns)
    return sql


T = TypeVar("T")


def load_order(tables: Sequence[T], references: Mapping[T, Iterable[T]]) -> list[T]:
    """`tables` with every table after the tables it references (foreign keys), else in the given
    order: the order to load in (delete in reverse). Self-references are ignored (one COPY checks
    them at its end); tables caught in a cycle keep their given order after the others."""
    position = {t: i for i, t in enumerate(tables)}
    waiting = {t: {r for r in references.get(t, ()) if r in position and r != t} for t in tables}
    ordered: list[T] = []
    while waiting:
        ready = [t for t, needs in waiting.items() if not needs]
        if not ready:  # a cycle: its constraints must be deferrable for the load to work
            ready = list(waiting)
        ready.sort(key=position.__getitem__)
        for t in ready:
            del waiting[t]
            ordered.append(t)
        for needs in waiting.values():
            needs.difference_update(ready)
    return ordered


# --- the shard side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """A table on the shard, as found there."""

    oid: int
    schema: str
    table: str
    columns: tuple[str, ...]
    tenant_column: str | None

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"


# Ordinary, permanent tables: of one schema ($1), or of every non-system schema ($1 IS NULL);
# extension members are the extension's business.
_TABLES_SQL: Final = """
SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND CASE WHEN $1::text IS NULL
           THEN n.nspname <> ALL($2::text[]) AND n.nspname NOT LIKE 'pg\\_%'
           ELSE n.nspname = $1 END
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""
_RLS_TABLES_SQL: Final = f"""
SELECT c.oid, n.nspname, c.relname, r.column_name FROM {TABLES_TABLE} r
JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY n.nspname, c.relname
"""
# Columns a COPY can write (generated ones are computed by the server).
_COLUMNS_SQL: Final = """
SELECT attrelid, array_agg(attname::text ORDER BY attnum) FROM pg_attribute
WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
GROUP BY attrelid
"""
_REFERENCES_SQL: Final = """
SELECT conrelid, confrelid FROM pg_constraint
WHERE contype = 'f' AND conrelid = ANY($1::oid[]) AND confrelid = ANY($1::oid[])
"""
# Sequences owned by a table's columns (serial and identity), for moving them past loaded values.
_SEQUENCES_SQL: Final = """
SELECT s.oid, a.attname::text FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = $1
  AND d.deptype IN ('a', 'i')
"""


async def _find_tables(conn: Any, view: TenantView) -> list[_Table]:
    """The tables holding the tenant's rows on this connection's database, parents first."""
    tenant = view.tenant
    rows: list[tuple[int, str, str, str | None]]
    if tenant.isolation == "shared":
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", TABLES_TABLE):
            return []
        rows = [(r[0], r[1], r[2], r[3]) for r in await conn.fetch(_RLS_TABLES_SQL)]
    else:
        only = schema_name(tenant.id) if tenant.isolation == "schema" else None
        rows = [(r[0], r[1], r[2], None) for r in await conn.fetch(_TABLES_SQL, only, list(_SYSTEM_SCHEMAS))]
    return await _ordered(conn, [(oid, schema, table, column) for oid, schema, table, column in rows])


async def _ordered(conn: Any, found: list[tuple[int, str, str, str | None]]) -> list[_Table]:
    oids = [oid for oid, *_ in found]
    columns = {r[0]: tuple(r[1]) for r in await conn.fetch(_COLUMNS_SQL, oids)}
    tables = {oid: _Table(oid, schema, table, columns.get(oid, ()), col) for oid, schema, table, col in found}
    references: dict[int, set[int]] = {}
    for child, parent in await conn.fetch(_REFERENCES_SQL, oids):
        references.setdefault(child, set()).add(parent)
    return [tables[oid] for oid in load_order(oids, references)]


async def _resolve(conn: Any, view: TenantView, manifest: Manifest) -> list[tuple[_Table, TableData]]:
    """Each archived table's counterpart on the target, parents first; all missing ones named at once."""
    found: list[tuple[int, str, str, str | None]] = []
    entries: dict[int, TableData] = {}
    missing: list[str] = []
    for entry in manifest.tables:
        schema = entry.schema if entry.schema is not None else schema_name(view.tenant.id)
        oid = await conn.fetchval("SELECT to_regclass($1)::oid", f"{quote_ident(schema)}.{quote_ident(entry.table)}")
        if oid is None:
            missing.append(entry.name)
            continue
        found.append((oid, schema, entry.table, entry.tenant_column))
        entries[oid] = entry
    if missing:
        tenant = view.tenant
        where = {"shared": "the shard's database", "schema": f"schema {schema_name(tenant.id)}"}.get(
            tenant.isolation, f"database {database_name(tenant.id)}"
        )
        raise TenantLifecycleError(
            f"cannot import tenant {tenant.id!r}: {len(missing)} table(s) of the archive do not exist in {where}"
            f" on shard {view.shard}: {', '.join(missing)}",
            hint="create them first (for schema and database tenants: set tenant.schema_sql in router.yaml)",
        )
    tables = await _ordered(conn, found)
    return [(table, entries[table.oid]) for table in tables]


def _select(table: _Table, columns: Sequence[str], tenant_id: str) -> str:
    return select_rows_sql(table.schema, table.table, columns, table.tenant_column, tenant_id)


def _rows_filter(table: _Table, tenant_id: str) -> str:
    if table.tenant_column is None:
        return ""
    return f" WHERE {quote_ident(table.tenant_column)} = {quote_literal(tenant_id)}"


async def _copy_digest(conn: Any, query: str, out: IO[bytes] | None = None) -> CopyDigest:
    digest = CopyDigest()

    async def sink(chunk: bytes) -> None:
        digest.update(chunk)
        if out is not None:
            out.write(chunk)

    await conn.copy_from_query(query, output=sink)
    return digest


def _login(config: RouterConfig, view: TenantView | None = None) -> Login:
    """The admin (it must read and write every tenant's rows: a superuser, or at least one that
    owns or bypasses row-level security); without one, the router's own role.

    With `view`, a schema or database tenant that has a role of its own (tenant.context_secret) is
    served as that role instead: reading and writing its tables runs its own code (triggers, CHECK
    constraints, index expressions, rules, casts to text), which as the admin would have the
    admin's rights, e.g. to grant the tenant another tenant's schema. SET ROLE would not do: the
    code could RESET ROLE back to the session's superuser."""
    secret = config.tenant.context_secret
    if view is not None and secret is not None and view.tenant.isolation != "shared":
        return Login(tenant_role(view.tenant.id), tenant_role_password(secret, view.tenant.id))
    user = config.admin if config.admin is not None else config.server
    return Login(user.user, user.password)


def _session_settings(config: RouterConfig, view: TenantView) -> dict[str, str]:
    """Deterministic output, and the tenant's context as the router would set it (so defaults and
    triggers that read it see the tenant; a shared tenant is also entered, see _session)."""
    settings = dict(_OUTPUT_SETTINGS)
    settings[config.tenant.setting] = view.tenant.id
    if view.tenant.isolation == "schema":
        settings["search_path"] = quote_ident(schema_name(view.tenant.id))
    return settings


@contextlib.asynccontextmanager
async def _session(
    config: RouterConfig, topology: Topology, view: TenantView, *, own: bool = True, as_tenant: bool = False
) -> AsyncIterator[Any]:
    """An admin connection to the tenant's shard primary: to its own database when `own` and it is
    a database tenant, else to the shard's application database. `as_tenant`: as the tenant's own
    role where it has one (see _login), for work that may run the tenant's code."""
    primary = shard_primary(topology, view.shard, view.tenant.id)
    own_database = own and view.tenant.isolation == "database"
    login = _login(config, view if as_tenant else None)
    conn = await connect(primary, login, database_name(view.tenant.id) if own_database else None)
    try:
        settings = _session_settings(config, view)
        await conn.execute(
            "SELECT set_config(name, value, false) FROM unnest($1::text[], $2::text[]) AS s(name, value)",
            list(settings),
            list(settings.values()),
        )
        secret = config.tenant.context_secret
        # As the router's sessions do: what policies and router.current_tenant() read.
        shared = secret is not None and view.tenant.isolation == "shared" and not own_database
        if shared and await conn.fetchval("SELECT to_regprocedure($1) IS NOT NULL", ENTER_TENANT):
            assert secret is not None
            await conn.execute(ENTER_TENANT_SQL, view.tenant.id, sign_tenant(secret, view.tenant.id))
        yield conn
    finally:
        await close(conn)


@contextlib.contextmanager
def _shard_errors(action: str, topology: Topology, view: TenantView, after: str = "") -> Iterator[None]:
    """A failure talking to the shard -> TenantLifecycleError naming the tenant, shard and server."""
    try:
        yield
    except SHARD_ERRORS as exc:
        where = (
            describe(shard_primary(topology, view.shard)) if view.shard in topology.shards else "not in the topology"
        )
        raise TenantLifecycleError(
            f"could not {action} tenant {view.tenant.id!r} on shard {view.shard} ({where}): {reason(exc)}{after}"
        ) from exc


def _ring(topology: Topology) -> Ring:
    return Ring.from_topology(topology)


async def _locate(config: RouterConfig, topology: Topology, tenant_id: str) -> TenantView | None:
    async with _store(config) as store:
        tenant = await store.get(tenant_id)
    return None if tenant is None else _view(tenant, topology, _ring(topology))


# --- export --------------------------------------------------------------------------------------


async def export_tenant(config: RouterConfig, topology: Topology, tenant_id: str, path: Path) -> Manifest:
    """Write all of the tenant's rows on its shard to one archive at `path` (see read_archive).

    The tables are read in one repeatable-read, read-only transaction: a consistent snapshot.
    """
    view = await _locate(config, topology, tenant_id)
    if view is None:
        raise UnknownTenant(f"tenant {tenant_id!r} is not in the catalog")
    with tempfile.TemporaryDirectory(prefix="tenant-export-") as tmp:
        entries: list[TableData] = []
        data: dict[str, Path] = {}
        with _shard_errors("export", topology, view):
            async with (
                _session(config, topology, view, as_tenant=True) as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                for index, table in enumerate(await _find_tables(conn, view)):
                    file = f"{DATA_DIR}/{index:04d}.copy"
                    data[file] = Path(tmp) / f"{index:04d}.copy"
                    with data[file].open("wb") as out:
                        digest = await _copy_digest(conn, _select(table, table.columns, tenant_id), out)
                    entries.append(
                        TableData(
                            table=table.table,
                            schema=None if view.tenant.isolation == "schema" else table.schema,
                            columns=table.columns,
                            rows=digest.rows,
                            sha256=digest.hexdigest(),
                            file=file,
                            tenant_column=table.tenant_column,
                        )
                    )
        manifest = Manifest(
            tenant=tenant_id,
            isolation=view.tenant.isolation,
            source_shard=view.shard,
            created_at=datetime.now(UTC),
            tables=tuple(entries),
        )
        try:
            await asyncio.to_thread(write_archive, path, manifest, data)
        except OSError as exc:
            raise TenantLifecycleError(f"could not write the export of tenant {tenant_id!r} to {path}: {exc}") from exc
    log.info("exported tenant %r: %d tables, %d rows to %s", tenant_id, len(entries), manifest.total_rows, path)
    return manifest


# --- import --------------------------------------------------------------------------------------


async def import_tenant(
    config: RouterConfig, topology: Topology, tenant_id: str, path: Path, *, replace: bool = False
) -> Manifest:
    """Restore an archive of `tenant_id` onto the tenant's current shard.

    A tenant not in the catalog is added first with the archive's isolation (which provisions its
    schema or database). All rows load in one transaction, are read back and compared with the
    manifest (row counts and checksums), and any difference rolls everything back; a tenant this
    call added is then removed again, its schema or database with it. A tenant that already has
    rows in the archive's tables is refused unless `replace`, which deletes them first.
    """
    with tempfile.TemporaryDirectory(prefix="tenant-import-") as tmp:
        manifest, files = await asyncio.to_thread(read_archive, path, Path(tmp))
        if manifest.tenant != tenant_id:
            raise ArchiveInvalid(
                f"archive {path} holds tenant {manifest.tenant!r}, not {tenant_id!r}",
                hint="an archive is imported under the tenant id it was exported from",
            )
        view = await _locate(config, topology, tenant_id)
        added = view is None
        created = False  # whether adding the tenant created its schema or database (undo drops only that)
        if view is None:
            created = not await _namespace_exists(config, topology, tenant_id, manifest.isolation)
            view = await add_tenant(config, topology, tenant_id, manifest.isolation)
        elif view.tenant.isolation != manifest.isolation:
            raise ImportRefused(
                f"tenant {tenant_id!r} is a {view.tenant.isolation} tenant;"
                f" the archive holds a {manifest.isolation} one"
            )
        try:
            with _shard_errors("import", topology, view, "; nothing was imported"):
                async with _session(config, topology, view, as_tenant=True) as conn:
                    await _load(conn, view, manifest, files, replace)
        except BaseException:
            if added:  # leave nothing behind, whatever stopped us
                await asyncio.shield(_undo_add(config, topology, view, drop=created))
            raise
    log.info("imported tenant %r: %d tables, %d rows from %s", tenant_id, len(files), manifest.total_rows, path)
    return manifest


async def _load(conn: Any, view: TenantView, manifest: Manifest, files: list[Path], replace: bool) -> None:
    tenant_id = view.tenant.id
    source = {entry.file: file for entry, file in zip(manifest.tables, files, strict=True)}
    async with conn.transaction():
        await conn.execute("SET CONSTRAINTS ALL DEFERRED")
        pairs = await _resolve(conn, view, manifest)
        occupied = [
            entry.name
            for table, entry in pairs
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table.sql}{_rows_filter(table, tenant_id)})")
        ]
        if occupied and not replace:
            raise ImportRefused(
                f"tenant {tenant_id!r} already has rows on shard {view.shard} in: {', '.join(occupied)};"
                " nothing was imported",
                hint="import with replace (tenants import --replace) to delete them first",
            )
        for table, _entry in reversed(pairs):
            await conn.execute(f"DELETE FROM {table.sql}{_rows_filter(table, tenant_id)}")
        for index, (table, entry) in enumerate(pairs):
            with source[entry.file].open("rb") as f:
                await _copy_in(conn, table, entry.columns, f, index)
        await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred checks fail here, not at commit
        mismatched = []
        for table, entry in pairs:
            digest = await _copy_digest(conn, _select(table, entry.columns, tenant_id))
            if (digest.rows, digest.hexdigest()) != (entry.rows, entry.sha256):
                mismatched.append(
                    f"{entry.name}: read back {digest.rows} rows, sha256 {digest.hexdigest()};"
                    f" the manifest says {entry.rows} rows, sha256 {entry.sha256}"
                )
        if mismatched:
            raise VerificationFailed(
                f"import of tenant {tenant_id!r} failed verification and was rolled back: " + "; ".join(mismatched)
            )
        for table, _entry in pairs:
            await _advance_sequences(conn, table)


async def _copy_in(conn: Any, table: _Table, columns: Sequence[str], source: IO[bytes], index: int) -> None:
    """COPY `source` into `table`. PostgreSQL refuses COPY FROM into a table whose row-level
    security applies to us (no admin: the router's role on a shared table): then the rows go
    through a temporary table and an INSERT, which the policy checks row by row."""
    if not await conn.fetchval("SELECT row_security_active($1::oid::regclass)", table.oid):
        await conn.copy_to_table(table.table, schema_name=table.schema, columns=list(columns) or None, source=source)
        return
    listed = ", ".join(quote_ident(c) for c in columns)
    staging = f"tenant_import_{index}"
    await conn.execute(
        f"CREATE TEMPORARY TABLE {quote_ident(staging)} ON COMMIT DROP AS SELECT {listed} FROM {table.sql} WITH NO DATA"
    )
    await conn.copy_to_table(staging, schema_name="pg_temp", columns=list(columns) or None, source=source)
    staged = f"pg_temp.{quote_ident(staging)}"
    await conn.execute(f"INSERT INTO {table.sql} ({listed}) OVERRIDING SYSTEM VALUE SELECT {listed} FROM {staged}")


async def _advance_sequences(conn: Any, table: _Table) -> None:
    """Move each sequence owned by a column of `table` past the largest value now in it, so the
    next default does not collide with a loaded row (never backwards)."""
    for sequence, column in await conn.fetch(_SEQUENCES_SQL, table.oid):
        await conn.execute(
            f"SELECT setval($1::oid::regclass, m) FROM (SELECT max({quote_ident(column)})::bigint AS m"
            f" FROM {table.sql}) x WHERE m > coalesce(pg_sequence_last_value($1::oid::regclass), 0)",
            sequence,
        )


async def _namespace_exists(config: RouterConfig, topology: Topology, tenant_id: str, isolation: Isolation) -> bool:
    """Whether a tenant not in the catalog still has a schema or database where it would be placed
    (left by `tenants remove` without --drop-data): a failed import must not drop that."""
    if isolation == "shared":
        return False
    view = _view(Tenant(tenant_id, isolation, None, "active", datetime.now(UTC), {}), topology, _ring(topology))
    if isolation == "schema":
        sql, name = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema_name(tenant_id)
    else:
        sql, name = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", database_name(tenant_id)
    with _shard_errors("import", topology, view, "; nothing was imported"):
        async with _session(config, topology, view, own=False) as conn:
            return bool(await conn.fetchval(sql, name))


async def _undo_add(config: RouterConfig, topology: Topology, view: TenantView, *, drop: bool) -> None:
    """Remove a tenant the failed import added; with `drop`, its schema or database and role too
    (a shared tenant's rows went with the rolled back transaction)."""
    try:
        if drop and view.tenant.isolation != "shared":
            await _erase_data(config, topology, view)
        async with _store(config) as store:
            await store.remove(view.tenant.id)
    except Exception as exc:
        log.error(
            "tenant %r: the failed import could not remove the tenant it added: %s; erase it with"
            " `tenant-router tenants erase %s --confirm %s`",
            view.tenant.id,
            exc,
            view.tenant.id,
            view.tenant.id,
        )


# --- erase ---------------------------------------------------------------------------------------


async def erase_tenant(config: RouterConfig, topology: Topology, tenant_id: str, confirm: str) -> dict[str, int]:
    """Delete every row of the tenant on its shard, then its catalog entry; `confirm` must repeat
    `tenant_id`. Returns the rows deleted per table (named as in an export's manifest).

    Shared: its rows in every `router.rls_tables` table. Schema / database: the schema or database
    (WITH FORCE, ending sessions still in it) and the tenant's role. The tenant is suspended first
    and removed from the catalog only once its data is gone, so a failure leaves a suspended tenant
    the same command can erase again.
    """
    if confirm != tenant_id:
        raise ConfirmationMismatch(
            f"erasing tenant {tenant_id!r} needs its id repeated as confirmation (got {confirm!r}); nothing was done",
            hint=f"tenant-router tenants erase {tenant_id} --confirm {tenant_id}",
        )
    async with _store(config) as store:
        tenant = await _require(store, tenant_id)
        view = _view(tenant, topology, _ring(topology))
        await store.set_status(tenant_id, "suspended")
        deleted = await _erase_data(config, topology, view)
        if not await store.remove(tenant_id):
            raise UnknownTenant(f"tenant {tenant_id!r} is not in the catalog")
    log.warning("erased tenant %r: %d rows in %d tables", tenant_id, sum(deleted.values()), len(deleted))
    return deleted


async def _erase_data(config: RouterConfig, topology: Topology, view: TenantView) -> dict[str, int]:
    tenant = view.tenant
    after = "; the tenant is left suspended, run the same command again"
    with _shard_errors("erase", topology, view, after):
        if tenant.isolation == "shared":
            async with _session(config, topology, view) as conn, conn.transaction():
                tables = await _find_tables(conn, view)
                deleted = {}
                for table in reversed(tables):
                    status = await conn.execute(f"DELETE FROM {table.sql}{_rows_filter(table, tenant.id)}")
                    deleted[_name(view, table)] = int(status.split()[-1])
            return dict(sorted(deleted.items()))
        counts = await _count_rows(config, topology, view)
        await drop_tenant(config, topology, tenant.id, tenant.isolation, view.shard)  # and its role
    return counts


async def _count_rows(config: RouterConfig, topology: Topology, view: TenantView) -> dict[str, int]:
    try:
        async with _session(config, topology, view) as conn:
            tables = await _find_tables(conn, view)
            return {_name(view, t): await conn.fetchval(f"SELECT count(*) FROM {t.sql}") for t in tables}
    except asyncpg.InvalidCatalogNameError:  # its database is gone already (an erase run before)
        return {}


def erase_summary(tenant_id: str, deleted: Mapping[str, int]) -> list[str]:
    """Lines for the command line: rows deleted per table, then the total."""
    width = max((len(name) for name in deleted), default=0)
    lines = [f"{name:<{width}}  {count:>10} rows deleted" for name, count in deleted.items()]
    lines.append(
        f"erased tenant {tenant_id}: {sum(deleted.values())} rows in total from {len(deleted)} tables;"
        " removed from the catalog"
    )
    return lines


def _name(view: TenantView, table: _Table) -> str:
    return table.table if view.tenant.isolation == "schema" else f"{table.schema}.{table.table}"
