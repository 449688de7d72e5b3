"""The SQL of shard-side isolation: the entered tenant, row-level security, tenant roles.

Owns: the names of the security objects every shard gets (`tenant_router_rls`, schema `router`,
`router.context_key`, `router.rls_tables`, `router.enter_tenant()`, `router.leave_tenant()`,
`router.current_tenant()`, policy `tenant_isolation`), the HMAC key pads stored for the entering
function, the statements that create and protect them, and the DDL that gives a `schema` or
`database` tenant its own role and namespace.

Must not: do I/O, import a driver, or decide anything about shards, the catalog or credentials
(router/admin/provisioning.py and rls_enable.py run these statements with the admin role). Values
in, SQL text out; the key pads and signatures are always sent as bind parameters, never spliced
into SQL text, so they cannot appear in pg_stat_activity or a statement log.

How a shared tenant's server session is bound to its tenant (the "entered tenant"): every shared
tenant acts as the router's role, so nothing the router's role can do in SQL can be what tells
tenants apart; only knowledge can: the signature HMAC-SHA256(tenant.context_secret, tenant id),
which the router has and tenants do not. The router proves it once per tenant switch, not once per
statement: it calls `router.enter_tenant(tenant, signature)` (SECURITY DEFINER, owned by the NOLOGIN
role tenant_router_rls), which checks the signature and writes the tenant id into a setting that
only a superuser, or a role granted SET on it, can change: `backtrace_functions`. It is the only
superuser-set text setting every role can read, and its value has no effect unless it names a C
function in which an error is raised (it then adds a backtrace to the server log); a tenant id
becomes a value of it with `-` written as `D` (tenant ids are lower case, router/isolation.py),
which the setting's syntax needs. The policies compare the tenant column with that setting, read
inline: builtin calls per row, within 4 µs a statement of the unsigned
`current_setting('app.tenant_id')` that any session could set (see _carried_tenant_sql). A tenant
cannot write the setting (SET, set_config, ALTER ROLE ... SET are refused for lack of the
privilege), cannot make enter_tenant
write another tenant's id without that tenant's signature, and a value it did not enter is never
left for it: the router calls `router.leave_tenant()` (empty value) before it applies a new
client's settings, and enter_tenant after, each in a transaction of its own, so that a failing
enter leaves no tenant rather than the previous one. RESET ALL and DISCARD ALL empty it too (they
reset every setting without checking privileges); the router enters again after them. Needs
PostgreSQL 15 (GRANT SET ON PARAMETER) and a superuser admin for `rls enable`, once.

HMAC without pgcrypto: HMAC-SHA256(key, msg) is sha256(outer_pad || sha256(inner_pad || msg)) where
the pads are the key, padded to the 64-byte block, XOR 0x5c and 0x36. Python precomputes both pads
from `tenant.context_secret`; the shard only needs the builtin sha256(bytea) (PostgreSQL 11+).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from router.isolation import TENANT_ID_PATTERN, quote_ident, quote_literal, tenant_role
from router.protocol.pg.auth import scram_verifier
from router.sql.tenant_entry import CARRIER, ENTER_TENANT_SQL, LEAVE_TENANT, LEAVE_TENANT_SQL, RLS_SCHEMA

__all__ = [
    "CARRIER",
    "CURRENT_TENANT",
    "ENTER_TENANT",
    "ENTER_TENANT_SQL",
    "LARGE_OBJECT_FUNCTIONS_SQL",
    "LEAVE_TENANT",
    "LEAVE_TENANT_SQL",
    "MIN_SERVER_VERSION",
    "OLD_OBJECTS_SQL",
    "POLICY",
    "PROTECTED_TABLES_SQL",
    "PRUNE_TABLES_SQL",
    "RECORD_TABLE_SQL",
    "RLS_ROLE",
    "RLS_SCHEMA",
    "SCHEMA_TENANT_ROLES_SQL",
    "STORE_KEY_SQL",
    "QualifiedName",
    "carried_value",
    "close_large_objects_sql",
    "context_key_pads",
    "create_database_sql",
    "create_schema_sql",
    "drop_database_sql",
    "drop_role_sql",
    "drop_schema_sql",
    "ensure_rls_role_sql",
    "ensure_tenant_role_sql",
    "grant_carrier_sql",
    "grant_large_objects_sql",
    "hmac_from_pads",
    "lock_down_database_sql",
    "lock_down_public_schema_sql",
    "policy_sql",
    "protect_table_sql",
    "rls_schema_sql",
    "schema_sql_statements",
    "scram_verifier",
    "security_objects_sql",
]

RLS_ROLE: Final = "tenant_router_rls"
POLICY: Final = "tenant_isolation"
# GRANT SET ON PARAMETER, which lets tenant_router_rls (and no one else) write the carrier.
MIN_SERVER_VERSION: Final = 150000
ENTER_TENANT: Final = f"{RLS_SCHEMA}.enter_tenant(pg_catalog.text, pg_catalog.text)"
CURRENT_TENANT: Final = f"{RLS_SCHEMA}.current_tenant()"
# What router.current_tenant() calls when no tenant is entered: raises 42501 saying so.
NO_TENANT: Final = f"{RLS_SCHEMA}.no_tenant_context()"
KEY_TABLE: Final = f"{RLS_SCHEMA}.context_key"
TABLES_TABLE: Final = f"{RLS_SCHEMA}.rls_tables"
# pg_advisory_xact_lock key serialising concurrent `rls enable` runs on one database ("tr-rls").
ENABLE_LOCK: Final = 0x74722D726C73

_BLOCK: Final = 64  # SHA-256 block size in bytes
_INNER: Final = 0x36
_OUTER: Final = 0x5C
# The SQLSTATE of every refusal here: insufficient_privilege.
_REFUSED: Final = "42501"
# Tenant ids (router/isolation.py) are lower case; the carrier's syntax takes letters, digits and
# `_` only, so `-` travels as `D`.
_DASH: Final = "-"
_DASH_CARRIED: Final = "D"
_TENANT_ID_PATTERN: Final = f"^{TENANT_ID_PATTERN}$"


@dataclass(frozen=True)
class QualifiedName:
    """A relation's schema and name, unquoted; `sql` is the quoted `schema.name`."""

    schema: str
    name: str

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


# --- the entered tenant --------------------------------------------------------------------------


def carried_value(tenant_id: str) -> str:
    """The carrier's value for `tenant_id` (what enter_tenant writes)."""
    return tenant_id.replace(_DASH, _DASH_CARRIED)


def _carried_tenant_sql() -> str:
    """The entered tenant as the policies read it, NULL when none is entered: builtins inline, a
    setting look-up per row and no function call of ours (measured: 11 µs of planning and execution
    per point select over an unprotected table; the unsafe legacy policy 7; raising "no tenant
    context" inline instead of NULL 14). NULL, not "": no row matches it and the WITH CHECK refuses
    every write (42501), where "" would be a bucket that every session without a tenant shares."""
    return f"NULLIF(pg_catalog.translate(pg_catalog.current_setting('{CARRIER}'), '{_DASH_CARRIED}', '{_DASH}'), '')"


def _entered_tenant_sql() -> str:
    """The entered tenant, or a 42501 error when there is none (router.current_tenant())."""
    return f"COALESCE({_carried_tenant_sql()}, {NO_TENANT})"


# What the router sends to enter a tenant: $1 the tenant id, $2 its signature (bind values).


def context_key_pads(secret: str) -> tuple[bytes, bytes]:
    """(inner_pad, outer_pad) of HMAC-SHA256 under `secret`: the key (hashed first if longer than
    the 64-byte block, as HMAC requires), zero-padded to 64 bytes, XOR 0x36 and 0x5c."""
    key = secret.encode()
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\x00")
    return bytes(b ^ _INNER for b in key), bytes(b ^ _OUTER for b in key)


def hmac_from_pads(inner_pad: bytes, outer_pad: bytes, message: str) -> str:
    """Hex HMAC-SHA256 computed from the pads exactly as the shard's SQL does; equals
    `isolation.sign_tenant(secret, message)` for the pads of `secret`."""
    inner = hashlib.sha256(inner_pad + message.encode()).digest()
    return hashlib.sha256(outer_pad + inner).hexdigest()


# --- the security objects ------------------------------------------------------------------------


def ensure_rls_role_sql() -> str:
    """Create the NOLOGIN owner of the security objects if it is missing (races included), and make
    sure it cannot log in even if someone created it earlier with LOGIN."""
    role = quote_ident(RLS_ROLE)
    return (
        "DO $$BEGIN\n"
        f"    CREATE ROLE {role} NOLOGIN NOINHERIT;\n"
        "EXCEPTION WHEN duplicate_object THEN NULL;\n"
        "END$$;\n"
        f"ALTER ROLE {role} NOLOGIN"
    )


def grant_carrier_sql() -> str:
    """Let tenant_router_rls write the carrier (run as a superuser; PostgreSQL 15+). A cluster-wide
    grant: the setting is one per server, whichever database."""
    return f"GRANT SET ON PARAMETER {CARRIER} TO {quote_ident(RLS_ROLE)}"


def rls_schema_sql() -> str:
    """Create schema `router` owned by the RLS role (run as the admin)."""
    return f"CREATE SCHEMA IF NOT EXISTS {quote_ident(RLS_SCHEMA)} AUTHORIZATION {quote_ident(RLS_ROLE)}"


# The objects of the earlier design (a signed setting checked by a plpgsql function on every
# statement), dropped by `rls enable` once the policies no longer use them.
OLD_OBJECTS_SQL: Final = [
    f"DROP FUNCTION IF EXISTS {RLS_SCHEMA}.context_verified_when_planned()",
    f"DROP FUNCTION IF EXISTS {RLS_SCHEMA}.verify_tenant_context()",
    f"DROP FUNCTION IF EXISTS {RLS_SCHEMA}.check_tenant_context()",
    f"DROP FUNCTION IF EXISTS {RLS_SCHEMA}.context_inner_pad()",
    f"DROP FUNCTION IF EXISTS {RLS_SCHEMA}.context_outer_pad()",
]


def security_objects_sql(setting: str) -> list[str]:
    """The key table, the table of protected tables and the functions that enter, leave and name
    the tenant, with their privileges; run as the RLS role (SET LOCAL ROLE) so it owns everything
    it creates. Re-created by every `rls enable`, which is how a deployment gets a new version.

    - `router.enter_tenant(tenant, signature)`: checks the signature against the key pads and the
      tenant id's syntax, then writes the carrier and the claim `setting` (which applications read
      with current_setting()); 42501 saying what is wrong otherwise (key not installed, forged
      signature), in which case the transaction, and with it any change, is undone. SECURITY
      DEFINER (it reads the key and writes the carrier), EXECUTE for PUBLIC: it tells a caller
      nothing, and enters only a tenant whose signature the caller already knows. Every name in it
      is schema-qualified, operators included (OPERATOR(pg_catalog.=)), so no search_path a caller
      sets and no object it creates (a schema tenant owns a schema it may create operators in) can
      stand in for anything it calls; hence no SET search_path clause either, which cost 9 µs of
      its 31 at every tenant switch (a SET clause saves and restores settings at every call).
    - `router.leave_tenant()`: empties the carrier; SECURITY DEFINER, EXECUTE for PUBLIC. plpgsql
      (its plan is cached per session; a SQL function is planned at every call) and without a SET
      clause (it names nothing but pg_catalog.set_config, qualified): it runs at every tenant
      switch, and each of those cost 9 µs.
    - `router.current_tenant()`: the entered tenant, for applications (a column DEFAULT, say) and
      for checks; 42501 "no tenant context" when none is entered. Policies read the carrier inline
      rather than call it (a SQL function is inlined anew at every planning; the error costs too).
    """
    schema = quote_ident(RLS_SCHEMA)
    claim = quote_literal(setting)
    hmac = (
        "pg_catalog.encode(pg_catalog.sha256(k.outer_pad OPERATOR(pg_catalog.||)"
        " pg_catalog.sha256(k.inner_pad OPERATOR(pg_catalog.||) pg_catalog.convert_to(p_tenant, 'UTF8'))), 'hex')"
    )
    return [
        f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC",
        f"""CREATE TABLE IF NOT EXISTS {KEY_TABLE} (
    id integer PRIMARY KEY CHECK (id = 1),
    inner_pad bytea NOT NULL CHECK (octet_length(inner_pad) = {_BLOCK}),
    outer_pad bytea NOT NULL CHECK (octet_length(outer_pad) = {_BLOCK}),
    written_at timestamptz NOT NULL DEFAULT now()
)""",
        f"REVOKE ALL ON {KEY_TABLE} FROM PUBLIC",
        f"""CREATE TABLE IF NOT EXISTS {TABLES_TABLE} (
    table_name regclass PRIMARY KEY,
    column_name text NOT NULL
)""",
        f"REVOKE ALL ON {TABLES_TABLE} FROM PUBLIC",
        f"GRANT SELECT ON {TABLES_TABLE} TO PUBLIC",
        f"""CREATE OR REPLACE FUNCTION {NO_TENANT} RETURNS pg_catalog.text
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'no tenant context: this session has not entered a tenant'
        USING ERRCODE = '{_REFUSED}',
              HINT = 'connect through tenant-router, which enters the tenant of each client;'
                     ' after RESET ALL or DISCARD ALL it enters it again with the next transaction';
END
$fn$""",
        f"REVOKE ALL ON FUNCTION {NO_TENANT} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION {NO_TENANT} TO PUBLIC",
        f"""CREATE OR REPLACE FUNCTION {RLS_SCHEMA}.enter_tenant(p_tenant pg_catalog.text, p_signature pg_catalog.text)
    RETURNS pg_catalog.text
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER PARALLEL UNSAFE
AS $fn$
DECLARE
    k record;
BEGIN
    IF p_tenant IS NULL OR p_tenant OPERATOR(pg_catalog.!~) '{_TENANT_ID_PATTERN}' THEN
        RAISE EXCEPTION 'cannot enter tenant %: not a tenant id', pg_catalog.quote_nullable(p_tenant)
            USING ERRCODE = '{_REFUSED}';
    END IF;
    SELECT c.inner_pad, c.outer_pad INTO k FROM {KEY_TABLE} AS c WHERE c.id OPERATOR(pg_catalog.=) 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the tenant context key is not installed in this database'
            USING ERRCODE = '{_REFUSED}', HINT = 'run: tenant-router rls enable TABLE';
    END IF;
    IF p_signature IS NULL OR {hmac} OPERATOR(pg_catalog.<>) p_signature THEN
        RAISE EXCEPTION 'forged tenant context: the signature does not match tenant %', p_tenant
            USING ERRCODE = '{_REFUSED}',
                  HINT = 'only tenant-router can enter a tenant; if it did, its tenant.context_secret'
                         ' differs from the key of the last rls enable here';
    END IF;
    PERFORM pg_catalog.set_config('{CARRIER}', pg_catalog.translate(p_tenant, '{_DASH}', '{_DASH_CARRIED}'), false);
    PERFORM pg_catalog.set_config({claim}, p_tenant, false);
    RETURN p_tenant;
END
$fn$""",
        f"REVOKE ALL ON FUNCTION {ENTER_TENANT} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION {ENTER_TENANT} TO PUBLIC",
        f"""CREATE OR REPLACE FUNCTION {LEAVE_TENANT} RETURNS pg_catalog.void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER PARALLEL UNSAFE
AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('{CARRIER}', '', false);
END
$fn$""",
        f"REVOKE ALL ON FUNCTION {LEAVE_TENANT} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION {LEAVE_TENANT} TO PUBLIC",
        f"""CREATE OR REPLACE FUNCTION {CURRENT_TENANT} RETURNS pg_catalog.text
    LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$SELECT {_entered_tenant_sql()}$fn$""",
        f"REVOKE ALL ON FUNCTION {CURRENT_TENANT} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION {CURRENT_TENANT} TO PUBLIC",
    ]


# The key pads go as bind parameters ($1 inner, $2 outer): never in the statement text.
STORE_KEY_SQL: Final = (
    f"INSERT INTO {KEY_TABLE} (id, inner_pad, outer_pad) VALUES (1, $1, $2)"
    " ON CONFLICT (id) DO UPDATE SET inner_pad = EXCLUDED.inner_pad, outer_pad = EXCLUDED.outer_pad,"
    " written_at = now()"
)


# Record a protected table ($1: its oid, $2: the tenant column); by oid, so no name look-up is needed.
RECORD_TABLE_SQL: Final = (
    f"INSERT INTO {TABLES_TABLE} (table_name, column_name) VALUES ($1::oid::regclass, $2)"
    " ON CONFLICT (table_name) DO UPDATE SET column_name = EXCLUDED.column_name"
)


# A regclass does not keep its table alive: forget tables dropped since they were protected.
PRUNE_TABLES_SQL: Final = (
    f"DELETE FROM {TABLES_TABLE} AS t"
    " WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = t.table_name)"
)


# Every protected table with its tenant column and that column's type, for re-creating their
# policies (after pruning the dropped ones).
PROTECTED_TABLES_SQL: Final = (
    f"SELECT n.nspname AS schema, c.relname AS name, t.column_name,"
    f" pg_catalog.format_type(a.atttypid, a.atttypmod) AS column_type"
    f" FROM {TABLES_TABLE} AS t JOIN pg_catalog.pg_class c ON c.oid = t.table_name"
    f" JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    f" JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = t.column_name AND NOT a.attisdropped"
    f" ORDER BY 1, 2"
)


def policy_sql(table: QualifiedName, column: str, column_type: str) -> list[str]:
    """(Re-)create the policy on `table`: rows whose `column` is the entered tenant, for every
    command, in USING and WITH CHECK.

    The entered tenant is read inline per row (see _carried_tenant_sql), or once per scan where an
    index on `column` takes it as its key. A statement cannot change it halfway through to see
    another tenant's rows: only enter_tenant writes it, and only with a valid signature."""
    target = table.sql
    condition = f"{quote_ident(column)} = ({_carried_tenant_sql()})::{column_type}"
    return [
        f"DROP POLICY IF EXISTS {quote_ident(POLICY)} ON {target}",
        f"CREATE POLICY {quote_ident(POLICY)} ON {target} AS PERMISSIVE FOR ALL TO PUBLIC"
        f" USING ({condition}) WITH CHECK ({condition})",
    ]


def protect_table_sql(
    table: QualifiedName, column: str, column_type: str, router_role: str, sequences: tuple[QualifiedName, ...] = ()
) -> list[str]:
    """Row-level security on `table` keyed by `column`, and the router role's privileges on it.

    The router role gets SELECT, INSERT, UPDATE, DELETE (all filtered by the policy) and USAGE on
    the table's own sequences (nextval for serial/identity columns, not their value); TRUNCATE,
    REFERENCES and TRIGGER are revoked from it and from PUBLIC, since TRUNCATE ignores row-level
    security and foreign keys or triggers could observe other tenants' rows.
    """
    target = table.sql
    role = quote_ident(router_role)
    statements = [
        f"ALTER TABLE {target} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {target} FORCE ROW LEVEL SECURITY",
        *policy_sql(table, column, column_type),
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {target} TO {role}",
        f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON {target} FROM PUBLIC, {role}",
    ]
    statements += [f"GRANT USAGE ON SEQUENCE {sequence.sql} TO {role}" for sequence in sequences]
    return statements


# --- large objects -------------------------------------------------------------------------------

# The built-in large-object functions of the current database, as `pg_catalog.name(argument types)`,
# and whether each reads or writes server files (lo_import, lo_export: never granted to anyone).
LARGE_OBJECT_FUNCTIONS_SQL: Final = (
    "SELECT 'pg_catalog.' || quote_ident(p.proname) || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid)"
    " || ')' AS signature, p.proname IN ('lo_import', 'lo_export') AS server_files"
    " FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace"
    " AND (p.proname LIKE 'lo\\_%' OR p.proname IN ('loread', 'lowrite')) ORDER BY 1"
)
# Schema tenants in the current database: roles owning the schema of their own name, which keep
# large objects of their own (they act as their own role). $1: the router's role, never one of them.
SCHEMA_TENANT_ROLES_SQL: Final = (
    "SELECT r.rolname::text FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner"
    " WHERE n.nspname = r.rolname AND r.rolname <> $1 AND NOT r.rolsuper ORDER BY 1"
)
_LARGE_OBJECT_CATALOG: Final = "pg_catalog.pg_largeobject_metadata"


def close_large_objects_sql(functions: list[str]) -> list[str]:
    """Take the large-object functions (`functions`, signatures) and the catalog of large objects
    from PUBLIC in the current database (run as a superuser). Shared tenants all act as the
    router's role and large objects have no row-level security: one tenant's large object would be
    every shared tenant's. The router refuses the calls it sees; this stops those it cannot see (a
    DO block, a function). Schema tenants get them back one by one (`grant_large_objects_sql`);
    database tenants have databases of their own, untouched."""
    statements = [f"REVOKE ALL ON {_LARGE_OBJECT_CATALOG} FROM PUBLIC"]
    if functions:
        statements.insert(0, f"REVOKE EXECUTE ON FUNCTION {', '.join(functions)} FROM PUBLIC")
    return statements


def grant_large_objects_sql(functions: list[str], role: str) -> list[str]:
    """Give a schema tenant's own role back what `close_large_objects_sql` took from PUBLIC
    (`functions`: those not touching server files)."""
    name = quote_ident(role)
    statements = [f"GRANT SELECT ON {_LARGE_OBJECT_CATALOG} TO {name}"]
    if functions:
        statements.insert(0, f"GRANT EXECUTE ON FUNCTION {', '.join(functions)} TO {name}")
    return statements


# --- tenant roles and namespaces -----------------------------------------------------------------


def ensure_tenant_role_sql(tenant_id: str, password: str, salt: bytes | None = None) -> str:
    """Create the tenant's login role if missing and (re)set its password: NOINHERIT, and created
    with no other attribute (no CREATEDB, CREATEROLE, BYPASSRLS...) and no membership."""
    role = quote_ident(tenant_role(tenant_id))
    secret = quote_literal(scram_verifier(password, salt))
    return (
        "DO $$BEGIN\n"
        f"    CREATE ROLE {role} LOGIN NOINHERIT;\n"
        "EXCEPTION WHEN duplicate_object THEN NULL;\n"
        "END$$;\n"
        f"ALTER ROLE {role} LOGIN NOINHERIT PASSWORD {secret}"
    )


def create_schema_sql(schema: str, owner: str) -> list[str]:
    """A schema owned by `owner` that no one else may use."""
    name = quote_ident(schema)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {name} AUTHORIZATION {quote_ident(owner)}",
        f"REVOKE ALL ON SCHEMA {name} FROM PUBLIC",
    ]


def create_database_sql(database: str, owner: str | None) -> str:
    """CREATE DATABASE (it cannot run inside a transaction block: send it on its own)."""
    owned = f" OWNER {quote_ident(owner)}" if owner is not None else ""
    return f"CREATE DATABASE {quote_ident(database)}{owned}"


def lock_down_database_sql(database: str) -> str:
    """Only the owner (and superusers) may connect to, create in or make temp tables in `database`."""
    return f"REVOKE ALL ON DATABASE {quote_ident(database)} FROM PUBLIC"


def lock_down_public_schema_sql(owner: str) -> list[str]:
    """Run inside a tenant's own database: its schema `public` belongs to the tenant role alone."""
    return ["REVOKE ALL ON SCHEMA public FROM PUBLIC", f"ALTER SCHEMA public OWNER TO {quote_ident(owner)}"]


def drop_schema_sql(schema: str) -> str:
    return f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"


def drop_database_sql(database: str, force: bool) -> str:
    """`force` (PostgreSQL 13+) ends sessions still connected, such as pooled router ones."""
    return f"DROP DATABASE IF EXISTS {quote_ident(database)}{' WITH (FORCE)' if force else ''}"


def drop_role_sql(role: str) -> list[str]:
    """Drop what `role` still owns or was granted in the current database, then the role."""
    name = quote_ident(role)
    return [f"DROP OWNED BY {name}", f"DROP ROLE IF EXISTS {name}"]


def schema_sql_statements(search_path: str | None) -> list[str]:
    """What runs before the application's schema files in a tenant's namespace."""
    return [] if search_path is None else [f"SET LOCAL search_path = {quote_ident(search_path)}"]
