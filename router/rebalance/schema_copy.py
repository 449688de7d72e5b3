"""A schema or database tenant's objects, recreated on a move's target with PostgreSQL's own tools.

Owns: finding `pg_dump` and `pg_restore` (PATH first, then the newest /usr/lib/postgresql/*/bin),
and `copy_objects`: pg_dump's schema-only archive of the tenant's schema (or of its whole database,
less the move's marker schema) restored into the target, which provisioning has prepared (role,
namespace, privileges) as `tenants add` would; the namespace's own entries are left out of the
restore for that reason. Tables, sequences, indexes, constraints, views, functions, triggers,
types and grants come across exactly as the source has them; the rows come by replication.

Must not: provision (router/admin/provisioning.py does), copy rows, or touch the catalog.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Final

from router.admin.shard_access import Login
from router.errors import MoveError
from router.isolation import Isolation, schema_name
from router.rebalance.replication import MARKER_SCHEMA, Side

_TIMEOUT: Final = 600.0
# A TOC line of `pg_restore --list`: "<id>; <catalog oid> <oid> <DESC...> <schema> <name> <owner>".
_SCHEMA_ENTRY: Final = re.compile(r"^\d+; \d+ \d+ (SCHEMA|ACL - SCHEMA|COMMENT - SCHEMA) ")


def find_tool(name: str) -> str:
    """The path of a PostgreSQL client tool; MoveError if the machine has none."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if p.parent.parent.name.isdigit()),
        key=lambda p: int(p.parent.parent.name),
    )
    if versions:
        return str(versions[-1])
    raise MoveError(
        f"{name} was not found (PATH, /usr/lib/postgresql/*/bin): moving schema and database tenants needs it",
        hint="install the PostgreSQL client tools (Debian: postgresql-client)",
    )


async def copy_objects(isolation: Isolation, tenant_id: str, source: Side, target: Side, login: Login) -> None:
    """Recreate the tenant's objects (no rows) from `source` on `target`, in one transaction."""
    if isolation == "shared":
        return
    env = {**os.environ, "PGPASSWORD": login.password or "", "PGCONNECT_TIMEOUT": "10"}
    with tempfile.TemporaryDirectory(prefix="tenant-router-move-") as tmp:
        dump, listing = Path(tmp) / "objects.dump", Path(tmp) / "objects.list"
        selection = ["--schema", schema_name(tenant_id)] if isolation == "schema" else []
        await _run(
            [
                find_tool("pg_dump"),
                *_where(source, login),
                "--schema-only",
                "--format=custom",
                "--no-publications",
                "--no-subscriptions",
                f"--exclude-schema={MARKER_SCHEMA}",
                *selection,
                f"--file={dump}",
            ],
            env,
            f"pg_dump of tenant {tenant_id!r} on {source.describe()}",
        )
        toc = await _run([find_tool("pg_restore"), "--list", str(dump)], env, "pg_restore --list")
        # Provisioning made the namespace (schema, or the database's public schema) with its
        # owner and privileges: restore what is in it.
        kept = [line for line in toc.splitlines() if line and not _SCHEMA_ENTRY.match(line)]
        listing.write_text("\n".join(kept) + "\n")
        await _run(
            [
                find_tool("pg_restore"),
                *_where(target, login),
                "--single-transaction",
                "--exit-on-error",
                f"--use-list={listing}",
                str(dump),
            ],
            env,
            f"restoring tenant {tenant_id!r}'s objects on {target.describe()}",
        )


def _where(side: Side, login: Login) -> list[str]:
    return [
        f"--host={side.address.host}",
        f"--port={side.address.port}",
        f"--username={login.user}",
        f"--dbname={side.database}",
        "--no-password",
    ]


async def _run(argv: list[str], env: dict[str, str], what: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        async with asyncio.timeout(_TIMEOUT):
            out, err = await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        raise MoveError(f"{what} failed: {err.decode(errors='replace').strip() or f'exit code {process.returncode}'}")
    return out.decode(errors="replace")
