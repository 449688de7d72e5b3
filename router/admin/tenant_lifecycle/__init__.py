"""Tenant lifecycle: export a tenant's data to one archive, import it back, erase it for good.

What `tenant-router tenants export/import/erase` call (and an HTTP API may), one module each:

- archive.py: the export archive (a gzip tar of `manifest.json` and one PostgreSQL COPY text file
  per table), its `Manifest`, the checksum over COPY bytes (`CopyDigest`); no database.
- queries.py: the export query, the tenant's-rows filter and the load order; pure.
- shard.py: the session on the tenant's shard and which tables hold its rows under each isolation
  model (shared: the shard's `router.rls_tables`, rows whose tenant column is the tenant; schema:
  every ordinary table of its schema; database: every ordinary table of its database).
- export.py (`export_tenant`), restore.py (`import_tenant`), erase.py (`erase_tenant`).

This package must not: parse arguments or print (router/cli.py does), find a tenant or its shard
its own way (the catalog through router/admin/tenant_admin.py, the shard as placement puts it),
open shard connections other than through router/admin/shard_access.py (as `admin`, else
`server`; as the tenant's own role where it has one to read and write its tables, see
shard.session_login), create or drop a tenant's schema, database or role itself
(`tenant_admin.add_tenant` provisions them, with the application schema `tenant.schema_sql`;
`provisioning.drop_tenant` drops them), or run on the router's hot path: every call opens its own
connections and closes them. Replicas follow by streaming replication.
"""

from router.admin.tenant_lifecycle.archive import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    CopyDigest,
    Manifest,
    TableData,
    read_archive,
    write_archive,
)
from router.admin.tenant_lifecycle.erase import erase_summary, erase_tenant
from router.admin.tenant_lifecycle.export import export_tenant
from router.admin.tenant_lifecycle.queries import load_order, select_rows_sql
from router.admin.tenant_lifecycle.restore import import_tenant
from router.errors import (
    ArchiveInvalid,
    ConfirmationMismatch,
    ImportRefused,
    TenantLifecycleError,
    VerificationFailed,
)

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
