"""Unit tests for the decisions of router/admin/ that need no shard: logins and shard look-ups
(shard_access), the role audit's findings (role_audit), the refusals of `rls enable` (rls_enable),
what provisioning checks before touching a shard (provisioning), and the admin errors' taxonomy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.admin import rls
from router.admin.provisioning import check_can_provision, load_schema_files, tenant_role_issues
from router.admin.rls_enable import check_table
from router.admin.role_audit import entering_findings, role_findings
from router.admin.shard_access import (
    Login,
    admin_login,
    admin_or_router_login,
    describe,
    reason,
    shard_primary,
)
from router.config import RouterConfig, load_router_config
from router.core.topology import RingConfig, ServerAddress, Shard, Topology
from router.errors import (
    AdminRequired,
    ArchiveInvalid,
    ConfirmationMismatch,
    ImportRefused,
    ProvisioningError,
    ProvisioningFailed,
    RouterError,
    TenantAdminError,
    TenantLifecycleError,
    UnknownShard,
    UnsafeLayout,
    VerificationFailed,
)

BASE = """\
catalog: {dsn: "postgresql://u:p@localhost/cat"}
auth:
  users: [{name: app, password: secret}]
server: {user: tenant_router, password: router-pw}
"""
ADMIN = "admin: {user: boss, password: boss-pw}\n"
SECRET = "tenant: {context_secret: s3cret}\n"


def config(tmp_path: Path, extra: str = "") -> RouterConfig:
    path = tmp_path / "router.yaml"
    path.write_text(BASE + extra)
    return load_router_config(path)


PRIMARY = ServerAddress("db-a.internal", 5433, "app")
TOPOLOGY = Topology(
    shards={"a": Shard("a", PRIMARY, (), 1), "b": Shard("b", ServerAddress("db-b", 5432, "app"), (), 1)},
    ring=RingConfig(),
    pins={},
    source=Path("shards.yaml"),
)


# --- shard access --------------------------------------------------------------------------------


def test_shard_primary_and_unknown_shards() -> None:
    assert shard_primary(TOPOLOGY, "a") == PRIMARY
    with pytest.raises(UnknownShard, match=r"^tenant 'acme' is placed on shard 'gone', which is not") as info:
        shard_primary(TOPOLOGY, "gone", "acme")
    assert info.value.hint == "known shards: a, b"
    with pytest.raises(UnknownShard, match=r"^shard 'gone', which is not in the topology"):
        shard_primary(TOPOLOGY, "gone")


def test_describe_and_reason() -> None:
    assert describe(PRIMARY) == "db-a.internal:5433/app"
    assert describe(PRIMARY, "tenant_acme") == "db-a.internal:5433/tenant_acme"
    assert reason(ConnectionRefusedError()) == "connection refused"
    assert reason(TimeoutError(), 2.5) == "no answer within 2.5s"
    assert reason(OSError("host unreachable")) == "host unreachable"
    assert reason(RuntimeError()) == "RuntimeError"


def test_logins(tmp_path: Path) -> None:
    without_admin = config(tmp_path)
    with pytest.raises(AdminRequired, match=r"^rls enable needs the admin role") as info:
        admin_login(without_admin, "rls enable")
    assert info.value.hint is not None and "admin: {user: ..., password: ...}" in info.value.hint
    assert admin_or_router_login(without_admin) == Login("tenant_router", "router-pw")
    with_admin = config(tmp_path, ADMIN)
    assert admin_login(with_admin, "anything") == Login("boss", "boss-pw")
    assert admin_or_router_login(with_admin) == Login("boss", "boss-pw")
    assert "boss-pw" not in repr(Login("boss", "boss-pw"))


# --- the role audit ------------------------------------------------------------------------------


def role_row(**changes: Any) -> dict[str, Any]:
    """A ROUTER_ROLE_SQL row of a role with nothing to report, changed where given."""
    row: dict[str, Any] = {
        "rolsuper": False,
        "rolbypassrls": False,
        "rolcreaterole": False,
        "creates_schemas": False,
        "creatable_schemas": [],
        "owned_objects": [],
        "database": "app",
        "version": 160004,
        "tracks_activities": False,
        "login_is_role": True,
        "role_defaults": [],
        "large_objects": [],
    }
    return row | changes


def test_a_clean_role_has_no_findings() -> None:
    assert role_findings("tenant_router", role_row()) == ((), ())
    assert role_findings("tenant_router", role_row(), hardened=True) == ((), ())


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"rolsuper": True}, "role tenant_router is a superuser: row-level security does not apply to it"),
        ({"rolbypassrls": True}, "role tenant_router has BYPASSRLS: row-level security does not apply to it"),
        ({"rolsuper": True, "rolbypassrls": True}, "role tenant_router is a superuser"),
    ],
)
def test_roles_that_rls_does_not_apply_to_are_problems(changes: dict[str, Any], problem: str) -> None:
    problems, warnings = role_findings("tenant_router", role_row(**changes))
    assert len(problems) == 1 and problems[0].startswith(problem)
    assert warnings == ()


@pytest.mark.parametrize(
    ("changes", "warning"),
    [
        ({"rolcreaterole": True, "version": 150007}, "has CREATEROLE on PostgreSQL 15: before 16"),
        ({"creates_schemas": True}, "may create schemas in database app"),
        ({"creatable_schemas": ["public"]}, "may create objects in schema public of database app"),
        ({"creatable_schemas": ["a", "b"]}, "may create objects in schemas a, b of database app"),
        ({"owned_objects": ["table public.t"]}, "owns table public.t in database app"),
        ({"tracks_activities": True}, "has track_activities on"),
        ({"role_defaults": ["app: work_mem=1GB"]}, "has session defaults it could have set itself (app: work_mem"),
    ],
)
def test_weaker_spots_are_warnings_and_problems_once_hardened(changes: dict[str, Any], warning: str) -> None:
    problems, warnings = role_findings("tenant_router", role_row(**changes))
    assert problems == () and len(warnings) == 1 and warning in warnings[0]
    hardened_problems, hardened_warnings = role_findings("tenant_router", role_row(**changes), hardened=True)
    assert hardened_problems == warnings and hardened_warnings == ()


def test_what_is_not_a_finding() -> None:
    # CREATEROLE is safe from 16 on; track_activities matters only for the role sessions log in as;
    # large objects only where isolation is promised against hostile SQL.
    assert role_findings("r", role_row(rolcreaterole=True, version=160000)) == ((), ())
    assert role_findings("r", role_row(tracks_activities=True, login_is_role=False)) == ((), ())
    assert role_findings("r", role_row(large_objects=["lo_create(oid)"])) == ((), ())
    problems, _ = role_findings("r", role_row(large_objects=["lo_create(oid)"]), hardened=True)
    assert len(problems) == 1 and "may use large objects (lo_create(oid)) in database app" in problems[0]


def test_long_lists_are_shortened() -> None:
    _, warnings = role_findings("r", role_row(owned_objects=[f"function f{i}()" for i in range(8)]))
    assert "owns function f0(), function f1(), function f2(), function f3(), function f4() and 3 more" in warnings[0]


def test_entering_findings() -> None:
    fine = {"router_sets": False, "enters": True, "carrier_default": ""}
    assert entering_findings("r", 150000, fine) == ((), ())
    problems, warnings = entering_findings("r", 140009, None)
    assert problems == () and warnings[0].startswith("PostgreSQL 14 cannot keep shared tenants apart")
    problems, warnings = entering_findings("r", 160000, fine | {"router_sets": True})
    assert warnings == () and problems[0].startswith(f"role r may set {rls.CARRIER}, which carries the entered")
    problems, warnings = entering_findings("r", 160000, fine | {"carrier_default": "acme"})
    assert warnings == () and problems[0].startswith(f"{rls.CARRIER} has a default (acme)")
    problems, warnings = entering_findings("r", 160000, fine | {"enters": False})
    assert problems == () and warnings[0].startswith("router.enter_tenant() is not installed")


# --- rls enable ----------------------------------------------------------------------------------


def table_row(**changes: Any) -> dict[str, Any]:
    """A _TABLE_SQL row of a table `rls enable` may protect, changed where given."""
    row: dict[str, Any] = {
        "oid": 16384,
        "relkind": "r",
        "schema": "public",
        "name": "notes",
        "owner": "boss",
        "router_owns_table": False,
        "schema_owner": "boss",
        "router_owns_schema": False,
        "column_type": "text",
        "other_policies": [],
    }
    return row | changes


def test_check_table_accepts_a_plain_table() -> None:
    qualified = check_table(table_row(), "notes", "tenant_id", "tenant_router", "boss", "shard a")
    assert qualified == rls.QualifiedName("public", "notes")


@pytest.mark.parametrize(
    ("row", "message", "hint"),
    [
        (None, "shard a: there is no table 'notes' in the shard's database", None),
        (table_row(relkind="p"), "shard a: public.notes is partitioned", "rls enable PARTITION"),
        (table_row(relkind="v"), "shard a: public.notes is not a table (relkind 'v')", None),
        (table_row(column_type=None), "shard a: table public.notes has no column 'tenant_id'", None),
        (
            table_row(router_owns_table=True),
            "shard a: table public.notes is owned by 'boss', and the router's role 'tenant_router' is",
            'ALTER TABLE "public"."notes" OWNER TO "boss"',
        ),
        (
            table_row(other_policies=["open", "wide"]),
            "shard a: table public.notes has other permissive policies (open, wide)",
            "AS RESTRICTIVE",
        ),
    ],
)
def test_check_table_refuses_what_a_policy_would_not_protect(
    row: dict[str, Any] | None, message: str, hint: str | None
) -> None:
    with pytest.raises(UnsafeLayout) as info:
        check_table(row, "notes", "tenant_id", "tenant_router", "boss", "shard a")
    assert info.value.message.startswith(message)
    assert (hint is None and info.value.hint is None) or (hint is not None and hint in str(info.value.hint))


# --- provisioning --------------------------------------------------------------------------------


def tenant_role_row(**changes: Any) -> dict[str, Any]:
    """A _TENANT_ROLE_SQL row of a role as provisioning makes it, changed where given."""
    row: dict[str, Any] = {
        "rolcanlogin": True,
        "rolsuper": False,
        "rolcreatedb": False,
        "rolcreaterole": False,
        "rolbypassrls": False,
        "rolreplication": False,
        "member_of": [],
        "members": ["boss"],
    }
    return row | changes


def test_tenant_role_issues() -> None:
    assert tenant_role_issues(tenant_role_row(), "boss") == ""  # the admin that created it is a member
    assert tenant_role_issues(tenant_role_row(rolsuper=True, rolcanlogin=False), "boss") == "SUPERUSER, NOLOGIN"
    assert tenant_role_issues(tenant_role_row(rolcreatedb=True, rolreplication=True), "boss") == (
        "CREATEDB, REPLICATION"
    )
    assert tenant_role_issues(tenant_role_row(member_of=["pg_read_all_data"], members=["boss", "mallory"]), "boss") == (
        "member of pg_read_all_data, mallory is a member of it"
    )
    assert tenant_role_issues(tenant_role_row(), "someone_else") == "boss is a member of it"


def test_check_can_provision(tmp_path: Path) -> None:
    plain = config(tmp_path)
    assert check_can_provision(plain, "acme", "shared") == ()
    assert check_can_provision(plain, "acme", "schema") == ()  # no secret: the router's role owns it
    with pytest.raises(ValueError, match="tenant id"):
        check_can_provision(plain, "Not Valid", "shared")
    hardened = config(tmp_path, SECRET)
    assert check_can_provision(hardened, "acme", "shared") == ()  # shared tenants get nothing on the shard
    with pytest.raises(AdminRequired, match=r"^provisioning the schema tenant 'acme' needs the admin role"):
        check_can_provision(hardened, "acme", "schema")
    with_admin = config(tmp_path, SECRET + ADMIN)
    assert check_can_provision(with_admin, "acme", "database") == ()
    for reserved in ("router", "router_rls"):  # tenant_router (server.user), tenant_router_rls
        with pytest.raises(UnsafeLayout, match=f"^tenant id '{reserved}' would act as role 'tenant_{reserved}'"):
            check_can_provision(with_admin, reserved, "schema")


def test_schema_files(tmp_path: Path) -> None:
    assert load_schema_files(config(tmp_path)) == ()
    with pytest.raises(ProvisioningError, match=r"tenant.schema_sql: .*missing\.sql does not exist"):
        load_schema_files(config(tmp_path, "tenant: {schema_sql: missing.sql}\n"))
    (tmp_path / "one.sql").write_text("CREATE TABLE one ();")
    single = load_schema_files(config(tmp_path, "tenant: {schema_sql: one.sql}\n"))
    assert [(f.path.name, f.sql) for f in single] == [("one.sql", "CREATE TABLE one ();")]
    folder = tmp_path / "schema"
    folder.mkdir()
    with pytest.raises(ProvisioningError, match=r"folder .*schema holds no \.sql files"):
        load_schema_files(config(tmp_path, "tenant: {schema_sql: schema}\n"))
    for name in ("20_b.sql", "10_a.sql", "notes.txt"):
        (folder / name).write_text(f"-- {name}")
    (folder / "30_dir.sql").mkdir()
    files = load_schema_files(config(tmp_path, "tenant: {schema_sql: schema}\n"))
    assert [f.path.name for f in files] == ["10_a.sql", "20_b.sql"]  # in name order, .sql files only
    (folder / "40_bad.sql").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ProvisioningError, match=r"cannot read .*40_bad\.sql"):
        load_schema_files(config(tmp_path, "tenant: {schema_sql: schema}\n"))


# --- the admin errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "base", "sqlstate"),
    [
        (ProvisioningError, RouterError, "55000"),
        (UnknownShard, ProvisioningError, "42704"),
        (AdminRequired, ProvisioningError, "F0000"),
        (UnsafeLayout, ProvisioningError, "42501"),
        (TenantAdminError, RouterError, "55000"),
        (ProvisioningFailed, TenantAdminError, "55000"),
        (TenantLifecycleError, TenantAdminError, "55000"),
        (ArchiveInvalid, TenantLifecycleError, "22000"),
        (ImportRefused, TenantLifecycleError, "55000"),
        (VerificationFailed, TenantLifecycleError, "XX001"),
        (ConfirmationMismatch, TenantLifecycleError, "22023"),
    ],
)
def test_admin_errors_in_the_taxonomy(error: type[RouterError], base: type[RouterError], sqlstate: str) -> None:
    assert error.__bases__ == (base,)
    assert (error.sqlstate, error.severity) == (sqlstate, "ERROR")  # the command failed, not the session
