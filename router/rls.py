"""The SQL of shard-side isolation: the signed tenant context, row-level security, tenant roles.

Owns: the names of the security objects every shard gets (`tenant_router_rls`, schema `router`,
`router.context_key`, `router.rls_tables`, `router.current_tenant()`, policy `tenant_isolation`),
the HMAC key pads stored for the verifying function, the statements that create and protect them,
and the DDL that gives a `schema` or `database` tenant its own role and namespace.

Must not: do I/O, import a driver, or decide anything about shards, the catalog or credentials
(router/provisioning.py runs these statements with the admin role). Values in, SQL text out; the
key pads are always sent as bind parameters, never spliced into SQL text, so they cannot appear in
pg_stat_activity or a statement log.

How the signature is checked without pgcrypto: HMAC-SHA256(key, msg) is
sha256(outer_pad || sha256(inner_pad || msg)) where the pads are the key, padded to the 64-byte
block, XOR 0x5c and 0x36. Python precomputes both pads from `tenant.context_secret`; the shard only
needs the builtin sha256(bytea) (PostgreSQL 11+). pgcrypto's hmac() would not be faster: measured
on PostgreSQL 15, one hmac() call cost more than the two sha256() calls.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Final

from router.isolation import quote_ident, quote_literal, tenant_role
from router.protocol.pg.auth import ScramVerifier

__all__ = [
    "CURRENT_TENANT",
    "LARGE_OBJECT_FUNCTIONS_SQL",
    "POLICY",
    "PRUNE_TABLES_SQL",
    "RECORD_TABLE_SQL",
    "RLS_ROLE",
    "RLS_SCHEMA",
    "SCHEMA_TENANT_ROLES_SQL",
    "STORE_KEY_SQL",
    "QualifiedName",
    "close_large_objects_sql",
    "context_key_pads",
    "create_database_sql",
    "create_schema_sql",
    "drop_database_sql",
    "drop_role_sql",
    "drop_schema_sql",
    "ensure_rls_role_sql",
    "ensure_tenant_role_sql",
    "grant_large_objects_sql",
    "hmac_from_pads",
    "lock_down_database_sql",
    "lock_down_public_schema_sql",
    "protect_table_sql",
    "rls_schema_sql",
    "schema_sql_statements",
    "scram_verifier",
    "security_objects_sql",
    "signature_setting",
]

RLS_ROLE: Final = "tenant_router_rls"
RLS_SCHEMA: Final = "router"
POLICY: Final = "tenant_isolation"
CURRENT_TENANT: Final = f"{RLS_SCHEMA}.current_tenant()"
KEY_TABLE: Final = f"{RLS_SCHEMA}.context_key"
TABLES_TABLE: Final = f"{RLS_SCHEMA}.rls_tables"
# The slow path of CURRENT_TENANT: the full check, raising what is wrong; and the key pads as
# functions whose values the planner folds into current_tenant()'s cached plan (see
# security_objects_sql).
CHECK_CONTEXT: Final = f"{RLS_SCHEMA}.check_tenant_context()"
INNER_PAD: Final = f"{RLS_SCHEMA}.context_inner_pad()"
OUTER_PAD: Final = f"{RLS_SCHEMA}.context_outer_pad()"
# The tenant context as it was when current_tenant()'s plan was built, if it was valid then: the
# verified (tenant, signature) pair a server session keeps (see security_objects_sql).
VERIFIED_CONTEXT: Final = f"{RLS_SCHEMA}.context_verified_when_planned()"
# What current_tenant() calls for any other context: the HMAC with the pads folded in.
VERIFY_CONTEXT: Final = f"{RLS_SCHEMA}.verify_tenant_context()"
# pg_advisory_xact_lock key serialising concurrent `rls enable` runs on one database ("tr-rls").
ENABLE_LOCK: Final = 0x74722D726C73

_BLOCK: Final = 64  # SHA-256 block size in bytes
_INNER: Final = 0x36
_OUTER: Final = 0x5C
# The SQLSTATE current_tenant() raises: insufficient_privilege, like any other refusal.
_REFUSED: Final = "42501"


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


# --- the signed context --------------------------------------------------------------------------


def signature_setting(setting: str) -> str:
    """The setting holding the signature of `setting`'s value (`app.tenant_id` -> `app.tenant_id_sig`)."""
    return setting + "_sig"


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


def rls_schema_sql() -> str:
    """Create schema `router` owned by the RLS role (run as the admin)."""
    return f"CREATE SCHEMA IF NOT EXISTS {quote_ident(RLS_SCHEMA)} AUTHORIZATION {quote_ident(RLS_ROLE)}"


def _hmac_sql(tenant: str) -> str:
    """Hex HMAC-SHA256 of the text expression `tenant` under the key pads, every name qualified."""
    return (
        f"pg_catalog.encode(pg_catalog.sha256({OUTER_PAD} OPERATOR(pg_catalog.||)"
        f" pg_catalog.sha256({INNER_PAD} OPERATOR(pg_catalog.||) pg_catalog.convert_to({tenant}, 'UTF8'))), 'hex')"
    )


def security_objects_sql(setting: str) -> list[str]:
    """The key table, the table of protected tables and the verifying functions, with their
    privileges; run as the RLS role (SET LOCAL ROLE) so it owns everything it creates.

    `router.current_tenant()` returns the tenant id when its signature is right; for anything else
    `router.check_tenant_context()` raises 42501 saying what is wrong (the setting or its signature
    missing, the key not installed, a forged signature). All of them are re-created by every `rls
    enable`, which is how a deployment gets a new version of them.

    current_tenant() runs once per statement on a protected table; as a plpgsql function with a SET
    clause reading the key table and computing the HMAC on every call it was a third of a point
    select's cost. Now each call does as little as a plpgsql call can:
    - It compares the session's (tenant, signature) with `router.context_verified_when_planned()`:
      the pair in the session's settings when current_tenant()'s plan was built, if its HMAC was
      right then, else NULL. That function is IMMUTABLE, so the planner runs it once and its result
      is a constant of the plan plpgsql keeps for the session: a verified pair cached per server
      session, in server memory no session can write. A session cannot get a pair in there whose
      signature it does not know (the HMAC is checked when the pair is folded in, and both halves
      must match); forging a context and forcing a new plan (DISCARD PLANS) folds in NULL, after
      which that session checks every context by HMAC. The pair is whatever was current when the
      plan was built (typically the session's first tenant); a plan printed by debug_print_plan
      shows only that, the session's own settings. It is SECURITY DEFINER (it needs the key) with
      EXECUTE for PUBLIC (it tells a session nothing it does not know) and `SET debug_print_plan =
      off`, so the plan of its own query, which holds the key, is never printed.
    - Any other context goes to `router.verify_tenant_context()` (SECURITY DEFINER): the HMAC with
      the key pads from `router.context_inner_pad()` / `context_outer_pad()`, IMMUTABLE SQL
      functions reading the key table which EXECUTE is revoked on, folded into that function's
      cached plan the same way: the key is read once per session, not once per statement. A plan
      holding the pads must never be printed (debug_print_plan is settable by any session and
      printed to it with client_min_messages = log), so that plan is only built (first use, or
      after an invalidation such as DISCARD PLANS) when debug_print_plan is off; otherwise, and
      when the HMAC does not match, the check goes to check_tenant_context(), which reads the key
      when it runs, not when it is planned.
    - `rls enable` replaces these functions, which makes every session compile them again and read
      the key again: a rotated secret applies to the next call.
    - current_tenant() and verify_tenant_context() have no SET clause (a SET search_path costs a
      GUC save and restore and a search path recomputation on every call): every name in them is
      schema-qualified, operators included (OPERATOR(pg_catalog.=)), so no search_path a session
      sets and no object it creates (a pg_temp type, a schema it can create in) can stand in for
      anything they call. current_tenant() is not SECURITY DEFINER: it reads nothing private.
    The policies call it as `(SELECT router.current_tenant())`, an InitPlan: once per statement.
    """
    schema = quote_ident(RLS_SCHEMA)
    tenant_setting = quote_literal(setting)
    sig_setting = quote_literal(signature_setting(setting))
    pad_functions = [
        f"""CREATE OR REPLACE FUNCTION {pad_function} RETURNS pg_catalog.bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$SELECT k.{column} FROM {KEY_TABLE} AS k WHERE k.id OPERATOR(pg_catalog.=) 1$fn$"""
        for pad_function, column in ((INNER_PAD, "inner_pad"), (OUTER_PAD, "outer_pad"))
    ]
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
        *pad_functions,
        f"REVOKE ALL ON FUNCTION {INNER_PAD}, {OUTER_PAD} FROM PUBLIC",
        f"""CREATE OR REPLACE FUNCTION {CHECK_CONTEXT} RETURNS text
    LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_tenant text := pg_catalog.current_setting({tenant_setting}, true);
    v_signature text := pg_catalog.current_setting({sig_setting}, true);
    v_key record;
BEGIN
    IF v_tenant IS NULL OR v_tenant = '' THEN
        RAISE EXCEPTION 'no tenant context: % is not set', {tenant_setting}
            USING ERRCODE = '{_REFUSED}',
                  HINT = 'connect through tenant-router, which sets a signed tenant context';
    END IF;
    IF v_signature IS NULL OR v_signature = '' THEN
        RAISE EXCEPTION 'unsigned tenant context: % is set but % is not', {tenant_setting}, {sig_setting}
            USING ERRCODE = '{_REFUSED}',
                  HINT = 'only tenant-router can set a valid tenant context';
    END IF;
    SELECT k.inner_pad, k.outer_pad INTO v_key FROM {KEY_TABLE} AS k WHERE k.id = 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the tenant context key is not installed in this database'
            USING ERRCODE = '{_REFUSED}', HINT = 'run: tenant-router rls enable TABLE';
    END IF;
    IF pg_catalog.encode(pg_catalog.sha256(v_key.outer_pad
            || pg_catalog.sha256(v_key.inner_pad || pg_catalog.convert_to(v_tenant, 'UTF8'))), 'hex')
            IS DISTINCT FROM v_signature THEN
        RAISE EXCEPTION 'forged tenant context: the signature in % does not match %', {sig_setting}, {tenant_setting}
            USING ERRCODE = '{_REFUSED}',
                  HINT = 'only tenant-router can set a valid tenant context';
    END IF;
    RETURN v_tenant;
END
$fn$""",
        f"REVOKE ALL ON FUNCTION {CHECK_CONTEXT} FROM PUBLIC",
        f"""CREATE OR REPLACE FUNCTION {VERIFIED_CONTEXT} RETURNS pg_catalog.text[]
    LANGUAGE sql IMMUTABLE SECURITY DEFINER PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    SET debug_print_plan = off
AS $fn$SELECT ARRAY[c.tenant, c.signature]
FROM (SELECT pg_catalog.current_setting({tenant_setting}, true) AS tenant,
             pg_catalog.current_setting({sig_setting}, true) AS signature) AS c
WHERE {_hmac_sql("c.tenant")} OPERATOR(pg_catalog.=) c.signature$fn$""",
        f"REVOKE ALL ON FUNCTION {VERIFIED_CONTEXT} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION {VERIFIED_CONTEXT} TO PUBLIC",
        f"""CREATE OR REPLACE FUNCTION {VERIFY_CONTEXT} RETURNS pg_catalog.text
    LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
AS $fn$
BEGIN
    IF pg_catalog.current_setting('debug_print_plan') OPERATOR(pg_catalog.=) 'off' THEN
        IF {_hmac_sql(f"pg_catalog.current_setting({tenant_setting}, true)")}
                OPERATOR(pg_catalog.=) pg_catalog.current_setting({sig_setting}, true) THEN
            RETURN pg_catalog.current_setting({tenant_setting}, true);
        END IF;
    END IF;
    RETURN {CHECK_CONTEXT};
END
$fn$""",
        f"REVOKE ALL ON FUNCTION {VERIFY_CONTEXT} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION {VERIFY_CONTEXT} TO PUBLIC",
        f"""CREATE OR REPLACE FUNCTION {CURRENT_TENANT} RETURNS pg_catalog.text
    LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
AS $fn$
BEGIN
    RETURN CASE
        WHEN ARRAY[pg_catalog.current_setting({tenant_setting}, true), pg_catalog.current_setting({sig_setting}, true)]
                OPERATOR(pg_catalog.=) {VERIFIED_CONTEXT}
            THEN pg_catalog.current_setting({tenant_setting}, true)
        ELSE {VERIFY_CONTEXT}
    END;
END
$fn$""",
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


def protect_table_sql(
    table: QualifiedName, column: str, column_type: str, router_role: str, sequences: tuple[QualifiedName, ...] = ()
) -> list[str]:
    """Row-level security on `table` keyed by `column`, and the router role's privileges on it.

    The policy compares with `(SELECT router.current_tenant())`, a scalar subquery the planner runs
    once per statement (an InitPlan), not once per row, and which an index on `column` can use.
    The router role gets SELECT, INSERT, UPDATE, DELETE (all filtered by the policy) and USAGE on
    the table's own sequences (nextval for serial/identity columns, not their value); TRUNCATE,
    REFERENCES and TRIGGER are revoked from it and from PUBLIC, since TRUNCATE ignores row-level
    security and foreign keys or triggers could observe other tenants' rows.
    """
    target = table.sql
    condition = f"{quote_ident(column)} = (SELECT {CURRENT_TENANT})::{column_type}"
    role = quote_ident(router_role)
    statements = [
        f"ALTER TABLE {target} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {target} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {quote_ident(POLICY)} ON {target}",
        f"CREATE POLICY {quote_ident(POLICY)} ON {target} AS PERMISSIVE FOR ALL TO PUBLIC"
        f" USING ({condition}) WITH CHECK ({condition})",
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


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password`: given to CREATE/ALTER ROLE
    instead of the password, so the password itself never reaches the server or its logs."""
    verifier = ScramVerifier(password, salt)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return (
        f"SCRAM-SHA-256${verifier.ITERATIONS}:{b64(verifier.salt)}"
        f"${b64(verifier.stored_key)}:{b64(verifier.server_key)}"
    )


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
