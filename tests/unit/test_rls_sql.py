"""The pure SQL builders of router/rls.py: the HMAC pads the shard verifies with, and the statements
(parsed with PostgreSQL's own parser, so a typo fails here rather than on a shard)."""

from __future__ import annotations

import base64
import hashlib
import json

import pglast
import pytest
from scramp import ScramMechanism

from router import rls
from router.isolation import sign_tenant

SECRETS = [
    "s",
    "correct horse battery staple",
    "k" * 64,  # exactly one block: used as is
    "x" * 65,  # longer than a block: hashed first, as HMAC requires
    "clé secrète ünïcode",
]
TENANTS = ["acme", "a", "tenant-with-dashes_and_underscores", "9" * 48]


@pytest.mark.parametrize("secret", SECRETS)
def test_pads_reproduce_sign_tenant(secret: str) -> None:
    inner, outer = rls.context_key_pads(secret)
    assert len(inner) == len(outer) == 64
    assert bytes(a ^ b for a, b in zip(inner, outer, strict=True)) == bytes([0x36 ^ 0x5C]) * 64
    for tenant in TENANTS:
        # What the shard computes: sha256(outer || sha256(inner || id)), in hex.
        shard_side = hashlib.sha256(outer + hashlib.sha256(inner + tenant.encode()).digest()).hexdigest()
        assert shard_side == rls.hmac_from_pads(inner, outer, tenant) == sign_tenant(secret, tenant)


def test_pads_differ_per_secret() -> None:
    assert rls.context_key_pads("one") != rls.context_key_pads("two")


def test_signature_setting() -> None:
    assert rls.signature_setting("app.tenant_id") == "app.tenant_id_sig"


def _parses(sql: str) -> None:
    pglast.parse_sql(sql)


def _function(statements: list[str], name: str) -> str:
    return next(s for s in statements if s.startswith(f"CREATE OR REPLACE FUNCTION {name}"))


def test_security_objects_are_valid_sql_and_hold_no_key() -> None:
    statements = rls.security_objects_sql("myapp.tenant")
    for statement in statements:
        _parses(statement)
    fast = _function(statements, rls.CURRENT_TENANT)
    verify = _function(statements, rls.VERIFY_CONTEXT)
    # current_tenant() acts as the caller: it reads no key, it compares with the pair folded in.
    assert "SECURITY DEFINER" not in fast and "STABLE" in fast
    assert rls.VERIFIED_CONTEXT in fast and f"ELSE {rls.VERIFY_CONTEXT}" in fast
    assert "SECURITY DEFINER" in verify and f"RETURN {rls.CHECK_CONTEXT}" in verify
    for function in (fast, verify):
        assert "current_setting('myapp.tenant', true)" in function
        assert "current_setting('myapp.tenant_sig', true)" in function
    check = _function(statements, rls.CHECK_CONTEXT)
    assert "SET search_path = pg_catalog, pg_temp" in check
    assert "current_setting('myapp.tenant', true)" in check
    assert "current_setting('myapp.tenant_sig', true)" in check
    assert "ERRCODE = '42501'" in check
    for folded in (rls.INNER_PAD, rls.OUTER_PAD, rls.VERIFIED_CONTEXT):
        assert "IMMUTABLE" in _function(statements, folded)  # what the planner folds into a plan
    # The pads: the verifier's own plan, which it builds only when debug_print_plan is off; the
    # pair's function folds them into a plan of its own, which it never prints.
    guard = verify.index("current_setting('debug_print_plan')")
    assert guard < verify.index(rls.INNER_PAD) and guard < verify.index(rls.OUTER_PAD)
    assert "SET debug_print_plan = off" in _function(statements, rls.VERIFIED_CONTEXT)
    assert f"REVOKE ALL ON FUNCTION {rls.INNER_PAD}, {rls.OUTER_PAD} FROM PUBLIC" in statements
    assert f"REVOKE ALL ON FUNCTION {rls.CHECK_CONTEXT} FROM PUBLIC" in statements
    _parses(rls.ensure_rls_role_sql())
    _parses(rls.rls_schema_sql())
    # The key only ever travels as bind parameters.
    assert "$1" in rls.STORE_KEY_SQL and "$2" in rls.STORE_KEY_SQL
    _parses(rls.STORE_KEY_SQL)
    _parses(rls.RECORD_TABLE_SQL)
    _parses(rls.PRUNE_TABLES_SQL)


def _names(node: object, kind: str) -> list[tuple[str, ...]]:
    """Every name list under `node` in pglast's JSON parse tree: `funcname` of function calls,
    `name` of operators (A_Expr) and `names` of type names."""
    found: list[tuple[str, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == kind and isinstance(value, list):
                found.append(tuple(part.get("String", {}).get("sval", "?") for part in value))
            found += _names(value, kind)
    elif isinstance(node, list):
        for item in node:
            found += _names(item, kind)
    return found


def _qualified(expression: str) -> None:
    tree = json.loads(pglast.parser.parse_sql_json(expression))
    for kind in ("funcname", "name", "names"):
        for name in _names(tree, kind):
            assert len(name) == 2, f"unqualified {kind} {'.'.join(name)} in: {expression}"


def test_current_tenant_names_nothing_a_search_path_could_replace() -> None:
    """current_tenant() and verify_tenant_context() have no SET search_path (it costs a GUC save
    and restore per call), so every function, operator and type in their SQL, and in the SQL
    functions they fold in, must be schema-qualified: otherwise a session's search_path (a schema
    it may create in, or a pg_temp type) could stand in for one."""
    statements = rls.security_objects_sql("app.tenant_id")
    expressions = []
    for name in (rls.CURRENT_TENANT, rls.VERIFY_CONTEXT):
        function = _function(statements, name)
        assert "SET " not in function.split("AS $fn$")[0]
        block = function.split("$fn$")[1].split("BEGIN", 1)[1]
        expressions += ["SELECT " + condition.split(" THEN")[0] for condition in block.split("IF ")[1:]]
        expressions += ["SELECT " + part.split(";")[0] for part in block.split("RETURN ")[1:]]
    assert len(expressions) == 5
    for folded in (rls.INNER_PAD, rls.OUTER_PAD, rls.VERIFIED_CONTEXT):
        expressions.append(_function(statements, folded).split("$fn$")[1])
    for expression in expressions:
        _qualified(expression)
    with pytest.raises(AssertionError, match="unqualified name"):
        _qualified("SELECT a || b")  # the check itself sees an unqualified operator


def test_protect_table_sql() -> None:
    table = rls.QualifiedName("public", 'odd "name"')
    sequence = rls.QualifiedName("public", "odd_seq")
    statements = rls.protect_table_sql(table, "tenant id", "uuid", "router role", (sequence,))
    for statement in statements:
        _parses(statement)
    text = "\n".join(statements)
    target = '"public"."odd ""name"""'
    assert f"ALTER TABLE {target} ENABLE ROW LEVEL SECURITY" in text
    assert f"ALTER TABLE {target} FORCE ROW LEVEL SECURITY" in text
    condition = '"tenant id" = (SELECT router.current_tenant())::uuid'
    assert f"USING ({condition}) WITH CHECK ({condition})" in text
    assert 'REVOKE TRUNCATE, REFERENCES, TRIGGER ON "public"."odd ""name""" FROM PUBLIC, "router role"' in text
    assert 'GRANT USAGE ON SEQUENCE "public"."odd_seq" TO "router role"' in text
    assert "TRUNCATE" not in next(s for s in statements if s.startswith("GRANT SELECT"))


def test_scram_verifier_matches_scramp() -> None:
    salt = bytes(range(16))
    verifier = rls.scram_verifier("derived-password", salt)
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt_b64 = iterations_salt.split(":")
    stored_b64, server_b64 = keys.split(":")
    expected_salt, stored, server, expected_iterations = ScramMechanism().make_auth_info(
        "derived-password", iteration_count=4096, salt=salt
    )
    assert method == "SCRAM-SHA-256" and int(iterations) == expected_iterations == 4096
    assert base64.b64decode(salt_b64) == expected_salt == salt
    assert (base64.b64decode(stored_b64), base64.b64decode(server_b64)) == (stored, server)


def test_tenant_role_sql_never_holds_the_password() -> None:
    sql = rls.ensure_tenant_role_sql("acme", "the-derived-password")
    _parses(sql)
    assert "the-derived-password" not in sql
    assert "PASSWORD 'SCRAM-SHA-256$4096:" in sql
    assert '"tenant_acme" LOGIN NOINHERIT' in sql


def test_namespace_statements_parse() -> None:
    for statement in [
        *rls.create_schema_sql("tenant_a-b", "tenant_a-b"),
        rls.create_database_sql("tenant_a-b", "tenant_a-b"),
        rls.create_database_sql("tenant_x", None),
        rls.lock_down_database_sql("tenant_x"),
        *rls.lock_down_public_schema_sql("tenant_x"),
        rls.drop_schema_sql("tenant_x"),
        rls.drop_database_sql("tenant_x", force=True),
        *rls.drop_role_sql("tenant_x"),
        *rls.schema_sql_statements("tenant_a-b"),
    ]:
        _parses(statement)
    assert rls.create_schema_sql("tenant_a-b", "tenant_a-b")[0].endswith('"tenant_a-b" AUTHORIZATION "tenant_a-b"')
    assert rls.drop_database_sql("tenant_x", force=False) == 'DROP DATABASE IF EXISTS "tenant_x"'
    assert rls.schema_sql_statements(None) == []
