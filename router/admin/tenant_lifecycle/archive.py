"""The export archive: its format, its manifest and the checksum over its COPY files (no database).

Owns: the archive (a gzip tar holding `manifest.json` and one PostgreSQL COPY text file per table,
under `data/`), its `Manifest` and `TableData` (parsed and validated: a manifest that does not fit
its tenant's isolation, names a file twice or is of a newer format is refused with ArchiveInvalid),
`CopyDigest` (SHA-256 and row count over COPY text), and writing and reading archives
(`write_archive`: complete or not at all, owner-readable only; `read_archive`: only the members
the manifest names, each checked against its checksum, into names of our own).

Must not: talk to a database or know which tables a tenant has (router/admin/tenant_lifecycle/
shard.py), or let anything inside an archive choose a path on this machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Final, Literal

from pydantic import Field, TypeAdapter, ValidationError

from router.errors import ArchiveInvalid
from router.isolation import Isolation, validate_tenant_id

FORMAT: Final = "tenant-router-export"
FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "manifest.json"
DATA_DIR: Final = "data"


def copy_file_name(index: int) -> str:
    """The name of the `index`th table's COPY file: in the archive under DATA_DIR, and unpacked."""
    return f"{index:04d}.copy"


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
                target = into / copy_file_name(index)
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
