"""The router's own tenant statements, parsed from text; SHOW's answer, as bytes."""

from __future__ import annotations

import pytest

from router.protocol.pg import backend as be
from router.sql.tenant_statements import TenantStatement, parse_tenant_statement


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SET router.tenant = 'acme'", TenantStatement("set", "acme")),
        ("set session router.tenant to acme;", TenantStatement("set", "acme")),
        ("SET router.tenant = 'o''brien'", TenantStatement("set", "o'brien")),
        ('SET router.tenant TO "Globex"', TenantStatement("set", "Globex")),
        ("  RESET router.tenant ; ", TenantStatement("reset")),
        ("show ROUTER.TENANT", TenantStatement("show")),
    ],
)
def test_tenant_statements(sql: str, expected: TenantStatement) -> None:
    assert parse_tenant_statement(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'router.tenant'",
        "SET router.tenant = 'acme'; DROP TABLE t",
        "SET router.tenants = 'acme'",
        "SHOW router.tenant_id",
        "SET LOCAL router.tenant = 'acme'",
    ],
)
def test_anything_else_is_not_a_tenant_statement(sql: str) -> None:
    assert parse_tenant_statement(sql) is None


def test_show_result_is_a_whole_response() -> None:
    out = be.show_result("router.tenant", "acme")
    kinds = []
    pos = 0
    while pos < len(out):
        kinds.append(chr(out[pos]))
        pos += 1 + int.from_bytes(out[pos + 1 : pos + 5], "big")
    assert kinds == ["T", "D", "C", "Z"] and pos == len(out)
    assert b"router.tenant\x00" in out and out.endswith(be.READY_IDLE)
    assert b"\x00\x00\x00\x04acme" in out
