"""Unit tests for the parts of router.admin.tenant_lifecycle that need no shard: the manifest, the
archive, the checksum, the export query, the rows filter and the load order, and how a lifecycle
session logs in and what it sets."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from router.admin.shard_access import Login
from router.admin.tenant_admin import TenantView
from router.admin.tenant_lifecycle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ArchiveInvalid,
    CopyDigest,
    Manifest,
    TableData,
    load_order,
    read_archive,
    select_rows_sql,
    write_archive,
)
from router.admin.tenant_lifecycle.archive import copy_file_name
from router.admin.tenant_lifecycle.queries import rows_filter
from router.admin.tenant_lifecycle.shard import OUTPUT_SETTINGS, ShardTable, session_login, session_settings
from router.catalog.store import Tenant
from router.config import RouterConfig, load_router_config
from router.errors import RouterError
from router.isolation import Isolation, tenant_role_password

ROWS = b"1\tacme\t\\N\n2\tline\\nbreak \\\\ tab\\t\t{}\n"
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def table(name: str = "items", data: bytes = ROWS, **overrides: Any) -> TableData:
    fields: dict[str, Any] = {
        "table": name,
        "schema": None,
        "columns": ("id", "name", "note"),
        "rows": data.count(b"\n"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "file": f"data/{name}.copy",
        **overrides,
    }
    return TableData(**fields)


def manifest(*tables: TableData, isolation: str = "schema", tenant: str = "lc-acme") -> Manifest:
    return Manifest(
        tenant=tenant,
        isolation=isolation,  # type: ignore[arg-type]
        source_shard="shard_a",
        created_at=CREATED,
        tables=tables,
    )


# --- checksum ------------------------------------------------------------------------------------


def test_digest_counts_rows_and_hashes_the_bytes_whatever_the_chunks() -> None:
    whole = CopyDigest.of([ROWS])
    assert whole.rows == 2
    assert whole.size == len(ROWS)
    assert whole.hexdigest() == hashlib.sha256(ROWS).hexdigest()
    byte_by_byte = CopyDigest.of(ROWS[i : i + 1] for i in range(len(ROWS)))
    assert (byte_by_byte.rows, byte_by_byte.hexdigest()) == (whole.rows, whole.hexdigest())


def test_digest_of_nothing() -> None:
    empty = CopyDigest.of([])
    assert (empty.rows, empty.size, empty.hexdigest()) == (0, 0, hashlib.sha256(b"").hexdigest())


def test_escaped_newlines_are_not_rows() -> None:
    # COPY text writes a newline inside a value as backslash-n: one line per row, always.
    assert CopyDigest.of([b"a\\nb\tc\\r\n"]).rows == 1


# --- manifest ------------------------------------------------------------------------------------


def test_manifest_round_trips_through_json() -> None:
    original = manifest(table("items"), table("notes", b""))
    text = original.to_json()
    document = json.loads(text)
    assert document["format"] == "tenant-router-export"
    assert document["format_version"] == FORMAT_VERSION
    assert document["created_at"] == "2026-01-02T03:04:05+00:00"
    assert document["tables"][0]["name"] == "items"
    assert document["tables"][1]["rows"] == 0
    assert Manifest.from_json(text) == original
    assert original.total_rows == 2


def test_qualified_names_for_database_and_shared_tenants() -> None:
    shared = manifest(table("notes", schema="public", tenant_column="tenant_id"), isolation="shared")
    assert shared.tables[0].name == "public.notes"
    assert Manifest.from_json(shared.to_json()) == shared
    database = manifest(table("notes", schema="billing"), isolation="database")
    assert Manifest.from_json(database.to_json()).tables[0].name == "billing.notes"


def test_created_at_keeps_its_instant() -> None:
    other_zone = Manifest.from_json(
        manifest().to_json().replace("2026-01-02T03:04:05+00:00", "2026-01-02T05:04:05+02:00")
    )
    assert other_zone.created_at == CREATED
    assert other_zone.created_at.utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)


def test_summary_lists_tables_rows_and_checksums() -> None:
    lines = manifest(table("items"), table("notes", b"")).summary()
    assert lines[0].startswith("items") and "2 rows" in lines[0] and hashlib.sha256(ROWS).hexdigest() in lines[0]
    assert "0 rows" in lines[1]
    assert "2 tables, 2 rows" in lines[-1] and "lc-acme" in lines[-1] and "shard_a" in lines[-1]


def _document(**changes: Any) -> str:
    document = json.loads(manifest(table()).to_json())
    for key, value in changes.items():
        if key.startswith("table_"):
            document["tables"][0][key.removeprefix("table_")] = value
        else:
            document[key] = value
    return json.dumps(document)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "does not describe"),
        (_document(format="pg_dump"), "does not describe"),
        (_document(format_version=FORMAT_VERSION + 1), "newer than this router reads"),
        (_document(format_version=0), "format_version"),
        (_document(isolation="cluster"), "isolation"),
        (_document(tenant="Not Valid"), "invalid tenant id"),
        (_document(created_at="yesterday"), "created_at"),
        (_document(created_at="2026-01-02T03:04:05"), "no time zone"),
        (_document(table_sha256="abc"), "sha256"),
        (_document(table_rows=-1), "rows"),
        (_document(table_schema="public"), "schema does not fit a schema tenant"),
        (_document(table_tenant_column="tenant_id"), "tenant_column belongs to shared tenants only"),
        (_document(tables=None), "tables"),
    ],
)
def test_invalid_manifests_are_refused_clearly(text: str, fragment: str) -> None:
    with pytest.raises(ArchiveInvalid, match=fragment) as info:
        Manifest.from_json(text)
    assert isinstance(info.value, RouterError)


def test_repeated_tables_are_refused() -> None:
    twice = manifest(table("items"), table("items", file="data/other.copy"))
    with pytest.raises(ArchiveInvalid, match="more than once: items"):
        Manifest.from_json(twice.to_json())


# --- archive -------------------------------------------------------------------------------------


def _write(tmp_path: Path, *tables: tuple[TableData, bytes]) -> tuple[Path, Manifest]:
    data = {}
    for entry, body in tables:
        source = tmp_path / f"src-{entry.table}"
        source.write_bytes(body)
        data[entry.file] = source
    archive = tmp_path / "export.tar.gz"
    m = manifest(*(entry for entry, _ in tables))
    write_archive(archive, m, data)
    return archive, m


def test_archive_layout_and_round_trip(tmp_path: Path) -> None:
    archive, written = _write(tmp_path, (table("items"), ROWS), (table("notes", b""), b""))
    assert archive.stat().st_mode & 0o777 == 0o600  # it holds a tenant's data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left
    with tarfile.open(archive, "r:gz") as tar:
        assert tar.getnames() == [MANIFEST_NAME, "data/items.copy", "data/notes.copy"]
        member = tar.extractfile("data/items.copy")
        assert member is not None and member.read() == ROWS
        assert all(m.isfile() and m.mtime == int(CREATED.timestamp()) for m in tar.getmembers())
    out = tmp_path / "out"
    out.mkdir()
    read, files = read_archive(archive, out)
    assert read == written
    assert [f.read_bytes() for f in files] == [ROWS, b""]
    assert all(f.parent == out for f in files)


def test_write_archive_needs_every_table_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data/items\.copy"):
        write_archive(tmp_path / "x.tar.gz", manifest(table()), {})
    assert list(tmp_path.iterdir()) == []


def _rewrite(archive: Path, replace: dict[str, bytes | None]) -> None:
    """Rewrite the archive with some members' contents replaced (None: left out)."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(archive, "w:gz") as tar:
        for member, body in members:
            new = replace.get(member.name, body)
            if new is None:
                continue
            member.size = len(new)
            tar.addfile(member, io.BytesIO(new))


def test_a_tampered_table_file_is_caught(tmp_path: Path) -> None:
    archive, _ = _write(tmp_path, (table(), ROWS))
    _rewrite(archive, {"data/items.copy": ROWS.replace(b"acme", b"evil")})
    with pytest.raises(ArchiveInvalid, match=r"corrupt: table items .* the manifest says 2 rows"):
        read_archive(archive, tmp_path)


def test_a_missing_table_file_or_manifest_is_caught(tmp_path: Path) -> None:
    archive, _ = _write(tmp_path, (table(), ROWS))
    _rewrite(archive, {"data/items.copy": None})
    with pytest.raises(ArchiveInvalid, match=r"has no data/items\.copy"):
        read_archive(archive, tmp_path)
    _rewrite(archive, {MANIFEST_NAME: None})
    with pytest.raises(ArchiveInvalid, match=f"has no {MANIFEST_NAME}"):
        read_archive(archive, tmp_path)


def test_unreadable_archives(tmp_path: Path) -> None:
    with pytest.raises(ArchiveInvalid, match="does not exist"):
        read_archive(tmp_path / "nope.tar.gz", tmp_path)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not a tar file")
    with pytest.raises(ArchiveInvalid, match="not a readable gzip tar"):
        read_archive(garbage, tmp_path)
    archive, _ = _write(tmp_path, (table(), ROWS))
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(ArchiveInvalid):
        read_archive(truncated, tmp_path)


def test_member_names_never_choose_where_data_is_written(tmp_path: Path) -> None:
    archive, _ = _write(tmp_path, (table(file="../../escape.copy"), ROWS))
    out = tmp_path / "out"
    out.mkdir()
    _, files = read_archive(archive, out)
    assert [f.parent for f in files] == [out]
    assert not (tmp_path.parent / "escape.copy").exists()


# --- SQL and order -------------------------------------------------------------------------------


def test_select_rows_sql() -> None:
    assert select_rows_sql("tenant_a-b", "items", ["id", 'we"ird']) == (
        'SELECT "id", "we""ird" FROM "tenant_a-b"."items" ORDER BY "id"::text COLLATE "C", "we""ird"::text COLLATE "C"'
    )
    assert select_rows_sql("public", "notes", ["tenant_id", "body"], "tenant_id", "o'brien") == (
        'SELECT "tenant_id", "body" FROM "public"."notes" WHERE "tenant_id" = \'o\'\'brien\''
        ' ORDER BY "tenant_id"::text COLLATE "C", "body"::text COLLATE "C"'
    )
    assert select_rows_sql("s", "empty", []) == 'SELECT  FROM "s"."empty"'
    with pytest.raises(ValueError, match="needs tenant_id"):
        select_rows_sql("s", "t", ["a"], "a")


def test_load_order_puts_referenced_tables_first() -> None:
    assert load_order(["entries", "people", "tags"], {"entries": ["people", "tags"]}) == ["people", "tags", "entries"]
    # independent tables keep their order; self references and unknown tables are ignored
    assert load_order(["b", "a", "c"], {"b": ["b", "elsewhere"]}) == ["b", "a", "c"]
    chain = load_order(["c", "b", "a"], {"c": ["b"], "b": ["a"]})
    assert chain == ["a", "b", "c"]


def test_load_order_survives_cycles() -> None:
    ordered = load_order(["x", "y", "z", "root"], {"x": ["y"], "y": ["x"], "z": ["root"]})
    assert sorted(ordered) == ["root", "x", "y", "z"]
    assert ordered.index("root") < ordered.index("z")


def test_rows_filter() -> None:
    assert rows_filter(None, "acme") == ""
    assert rows_filter("tenant_id", "o'brien") == " WHERE \"tenant_id\" = 'o''brien'"


def test_copy_files_are_named_by_position_only() -> None:
    assert [copy_file_name(i) for i in (0, 7, 1234)] == ["0000.copy", "0007.copy", "1234.copy"]


def test_shard_tables_name_and_select_as_the_archive_does() -> None:
    shared = ShardTable(1, "public", "notes", ("tenant_id", "body"), "tenant_id")
    assert shared.sql == '"public"."notes"'
    assert shared.name("shared") == "public.notes"
    assert shared.rows_filter("acme") == " WHERE \"tenant_id\" = 'acme'"
    assert shared.select_sql(["body"], "acme") == select_rows_sql("public", "notes", ["body"], "tenant_id", "acme")
    own = ShardTable(2, "tenant_acme", "items", ("id",), None)
    assert own.name("schema") == "items"  # as TableData names it: the schema differs per target
    assert own.name("database") == "tenant_acme.items"
    assert own.rows_filter("acme") == ""
    assert own.select_sql(["id"], "acme") == 'SELECT "id" FROM "tenant_acme"."items" ORDER BY "id"::text COLLATE "C"'


# --- the lifecycle session -----------------------------------------------------------------------

CONFIG = """\
catalog: {dsn: "postgresql://u:p@localhost/cat"}
auth:
  users: [{name: app, password: secret}]
server: {user: tenant_router, password: router-pw}
"""


def config(tmp_path: Path, extra: str = "") -> RouterConfig:
    path = tmp_path / "router.yaml"
    path.write_text(CONFIG + extra)
    return load_router_config(path)


def view(isolation: Isolation, tenant_id: str = "acme") -> TenantView:
    return TenantView(Tenant(tenant_id, isolation, None, "active", CREATED, {}), "shard_a", "hashed")


def test_session_settings_make_output_deterministic_and_carry_the_tenant(tmp_path: Path) -> None:
    plain = config(tmp_path)
    assert session_settings(plain, view("shared")) == {**dict(OUTPUT_SETTINGS), "app.tenant_id": "acme"}
    assert session_settings(plain, view("database"))["app.tenant_id"] == "acme"
    assert "search_path" not in session_settings(plain, view("database"))
    assert session_settings(plain, view("schema"))["search_path"] == '"tenant_acme"'
    custom = config(tmp_path, "tenant: {setting: myapp.tenant}\n")
    assert session_settings(custom, view("shared"))["myapp.tenant"] == "acme"
    assert dict(OUTPUT_SETTINGS)["TimeZone"] == "UTC"


def test_session_login(tmp_path: Path) -> None:
    router_role = Login("tenant_router", "router-pw")
    admin = Login("boss", "boss-pw")
    plain = config(tmp_path)
    assert session_login(plain) == router_role
    assert session_login(plain, view("schema")) == router_role  # no secret: no tenant role exists
    with_admin = config(tmp_path, "admin: {user: boss, password: boss-pw}\n")
    assert session_login(with_admin, view("database")) == admin
    hardened = config(tmp_path, "admin: {user: boss, password: boss-pw}\ntenant: {context_secret: s3cret}\n")
    assert session_login(hardened) == admin
    assert session_login(hardened, view("shared")) == admin  # shared tenants have no role of their own
    for isolation in ("schema", "database"):
        # the tenant's own code runs as the tenant, never with the admin's rights
        own = session_login(hardened, view(isolation))  # type: ignore[arg-type]
        assert own == Login("tenant_acme", tenant_role_password("s3cret", "acme"))
