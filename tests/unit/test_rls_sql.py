"""The pure SQL builders of router/admin/rls.py: the HMAC pads the shard verifies with, and the statements
(parsed with PostgreSQL's own parser, so a typo fails here rather than on a shard)."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pglast
import pytest
from scramp import ScramMechanism

from router.admin import rls
from router.isolation import sign_tenant, validate_tenant_id

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


def test_carried_value_is_the_tenant_id_with_dashes_written_as_d() -> None:
    assert rls.carried_value("tenant-with-dashes_and_underscores") == "tenantDwithDdashes_and_underscores"
    assert rls.carried_value("acme") == "acme"
    for tenant in TENANTS:
        carried = rls.carried_value(tenant)
        # What backtrace_functions accepts: letters, digits and `_` (no `-`) ...
        assert re.fullmatch(r"[A-Za-z0-9_]+", carried), carried
        # ... and what the policies read back: translate(D -> -) gives the id again. A tenant id is
        # lower case, so no `D` in one can be mistaken for a dash.
        assert carried.replace("D", "-") == tenant
    with pytest.raises(ValueError):
        validate_tenant_id("aDb")


def _parses(sql: str) -> None:
    pglast.parse_sql(sql)


def _function(statements: list[str], name: str) -> str:
    return next(s for s in statements if s.startswith(f"CREATE OR REPLACE FUNCTION {name}"))


def test_security_objects_are_valid_sql_and_hold_no_key() -> None:
    statements = rls.security_objects_sql("myapp.tenant")
    for statement in statements:
        _parses(statement)
    text = "\n".join(statements)
    enter = _function(statements, f"{rls.RLS_SCHEMA}.enter_tenant(")
    leave = _function(statements, rls.LEAVE_TENANT)
    current = _function(statements, rls.CURRENT_TENANT)
    header = {
        name: function.split("AS $fn$")[0]
        for name, function in (("enter", enter), ("leave", leave), ("current", current))
    }
    # enter_tenant: reads the key and writes the carrier, so SECURITY DEFINER with a pinned path;
    # checks the id's syntax and the signature, refusing with 42501; writes the carrier (dashes as
    # D) and then the claim only after both checks.
    assert "SECURITY DEFINER" in header["enter"] and "VOLATILE" in header["enter"]
    # No SET clause (it costs a third of a call at every tenant switch): every name is qualified.
    assert "SET " not in header["enter"]
    _qualified_plpgsql(body_of(enter))
    body = enter.split("$fn$")[1]
    syntax = body.index("not a tenant id")
    key = body.index(f"FROM {rls.KEY_TABLE}")
    forged = body.index("forged tenant context")
    carrier = body.index(f"pg_catalog.set_config('{rls.CARRIER}', pg_catalog.translate(p_tenant, '-', 'D'), false)")
    claim = body.index("pg_catalog.set_config('myapp.tenant', p_tenant, false)")
    assert syntax < key < forged < carrier < claim
    assert body.count("ERRCODE = '42501'") == 3
    assert "'^[a-z0-9][a-z0-9_-]*$'" in body
    # NULL and '' signatures are forged, not let through.
    assert "IF p_signature IS NULL OR " in body and "OPERATOR(pg_catalog.<>) p_signature" in body
    # leave_tenant: empties the carrier, nothing else; plpgsql without a SET clause (it runs at
    # every tenant switch), so it names nothing unqualified.
    assert "SECURITY DEFINER" in header["leave"] and "LANGUAGE plpgsql" in header["leave"]
    assert "SET " not in header["leave"]
    assert leave.split("$fn$")[1].split() == [
        "BEGIN",
        "PERFORM",
        f"pg_catalog.set_config('{rls.CARRIER}',",
        "'',",
        "false);",
        "END",
    ]
    # current_tenant: as the caller, no SET clause (so it can be inlined), reads the carrier only:
    # the claim a session can set decides nothing.
    assert "SECURITY DEFINER" not in header["current"] and "SET " not in header["current"]
    assert "LANGUAGE sql" in header["current"] and "STABLE" in header["current"]
    assert f"current_setting('{rls.CARRIER}')" in current and "myapp.tenant" not in current
    assert rls.NO_TENANT in current
    no_tenant = _function(statements, rls.NO_TENANT)
    assert "no tenant context" in no_tenant and "ERRCODE = '42501'" in no_tenant
    for function in (rls.ENTER_TENANT, rls.LEAVE_TENANT, rls.CURRENT_TENANT, rls.NO_TENANT):
        revoke = statements.index(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        assert statements[revoke + 1] == f"GRANT EXECUTE ON FUNCTION {function} TO PUBLIC"
    assert f"REVOKE ALL ON {rls.KEY_TABLE} FROM PUBLIC" in statements
    assert f"GRANT SELECT ON {rls.KEY_TABLE}" not in text
    # Nothing of the earlier design: no signature setting, no plan-folded key.
    assert "myapp.tenant_sig" not in text and "debug_print_plan" not in text and "IMMUTABLE" not in text
    for secret in SECRETS:  # the key is never in the statements (it travels as bind values)
        inner, outer = rls.context_key_pads(secret)
        assert inner.hex() not in text and outer.hex() not in text
    _parses(rls.ensure_rls_role_sql())
    _parses(rls.rls_schema_sql())
    assert rls.grant_carrier_sql() == 'GRANT SET ON PARAMETER backtrace_functions TO "tenant_router_rls"'
    _parses(rls.grant_carrier_sql())
    # The key and the signature only ever travel as bind parameters.
    assert "$1" in rls.STORE_KEY_SQL and "$2" in rls.STORE_KEY_SQL
    assert rls.ENTER_TENANT_SQL == "SELECT router.enter_tenant($1, $2)"
    assert rls.LEAVE_TENANT_SQL == "SELECT router.leave_tenant()"
    for statement in (
        rls.STORE_KEY_SQL,
        rls.RECORD_TABLE_SQL,
        rls.PRUNE_TABLES_SQL,
        rls.PROTECTED_TABLES_SQL,
        rls.ENTER_TENANT_SQL,
        rls.LEAVE_TENANT_SQL,
        *rls.OLD_OBJECTS_SQL,
    ):
        _parses(statement)


def test_old_objects_are_the_earlier_designs_functions() -> None:
    dropped = [statement.removeprefix("DROP FUNCTION IF EXISTS ") for statement in rls.OLD_OBJECTS_SQL]
    assert dropped == [
        "router.context_verified_when_planned()",
        "router.verify_tenant_context()",
        "router.check_tenant_context()",
        "router.context_inner_pad()",
        "router.context_outer_pad()",
    ]
    # Never one of the current objects.
    current = {rls.ENTER_TENANT, rls.LEAVE_TENANT, rls.CURRENT_TENANT, rls.NO_TENANT}
    assert not current & set(dropped)


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


def _qualified(expression: str, unqualified_operators: int = 0) -> None:
    tree = json.loads(pglast.parser.parse_sql_json(expression))
    for kind in ("funcname", "names"):
        for name in _names(tree, kind):
            assert len(name) == 2, f"unqualified {kind} {'.'.join(name)} in: {expression}"
    # NULLIF's `=` cannot be written qualified; every other operator must be.
    operators = [name for name in _names(tree, "name") if len(name) != 2]
    assert len(operators) == unqualified_operators, f"unqualified name {operators} in: {expression}"


def test_current_tenant_names_nothing_a_search_path_could_replace() -> None:
    """current_tenant() has no SET search_path (it would stop it being inlined), so every function
    and type in its SQL must be schema-qualified: otherwise a session's search_path could stand in
    for one. The one operator is NULLIF's implicit `=` (text = text): SQL has no qualified form of
    it, and pg_temp, the one schema the router's role may create in, is never searched for
    operators."""
    statements = rls.security_objects_sql("app.tenant_id")
    current = _function(statements, rls.CURRENT_TENANT)
    assert "SET " not in current.split("AS $fn$")[0]
    body = current.split("$fn$")[1]
    tree = json.loads(pglast.parser.parse_sql_json(body))
    assert "AEXPR_NULLIF" in json.dumps(tree)
    assert sorted(_names(tree, "funcname")) == [
        ("pg_catalog", "current_setting"),
        ("pg_catalog", "translate"),
        ("router", "no_tenant_context"),
    ]
    _qualified(body, unqualified_operators=1)
    with pytest.raises(AssertionError, match="unqualified name"):
        _qualified("SELECT a || b")  # the check itself sees an unqualified operator
    with pytest.raises(AssertionError, match="unqualified funcname"):
        _qualified("SELECT current_setting('x')")


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
    assert f'DROP POLICY IF EXISTS "tenant_isolation" ON {target}' in statements
    # The entered tenant, read inline from the carrier (no function call; NULL when none is
    # entered, so no row matches and no write passes); never the claim app.tenant_id, never
    # router.current_tenant() (no InitPlan, no function call).
    entered = "NULLIF(pg_catalog.translate(pg_catalog.current_setting('backtrace_functions'), 'D', '-'), '')"
    condition = f'"tenant id" = ({entered})::uuid'
    policy = f'CREATE POLICY "tenant_isolation" ON {target} AS PERMISSIVE FOR ALL TO PUBLIC'
    assert f"{policy} USING ({condition}) WITH CHECK ({condition})" in statements
    assert "current_tenant" not in text and "app.tenant_id" not in text and "no_tenant_context" not in text
    assert 'REVOKE TRUNCATE, REFERENCES, TRIGGER ON "public"."odd ""name""" FROM PUBLIC, "router role"' in text
    assert 'GRANT USAGE ON SEQUENCE "public"."odd_seq" TO "router role"' in text
    assert "TRUNCATE" not in next(s for s in statements if s.startswith("GRANT SELECT"))
    assert rls.policy_sql(table, "tenant id", "uuid") == statements[2:4]


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


def body_of(function: str) -> str:
    return function.split("$fn$")[1]


def _qualified_plpgsql(body: str) -> None:
    """Every function, operator and type in a plpgsql body is schema-qualified: its SQL expressions
    (IF conditions, PERFORM, SELECT ... INTO) parsed one by one, as plpgsql hands them to SQL."""
    statements = [line.strip() for line in body.splitlines()]
    expressions = []
    for line in statements:
        if line.startswith("IF ") and line.endswith(" THEN"):
            expressions.append("SELECT " + line[3:-5])
        elif line.startswith("PERFORM "):
            expressions.append("SELECT " + line[8:].rstrip(";"))
        elif line.startswith("SELECT ") and " INTO " in line:
            head, _, tail = line.partition(" INTO ")
            expressions.append(head + " " + tail.split(" ", 1)[1].rstrip(";"))
    assert len(expressions) >= 5, expressions
    for expression in expressions:
        _qualified(expression)
