"""Unit tests for router.isolation: tenant id rules, tenant object names, PostgreSQL quoting."""

from __future__ import annotations

import pytest

from router.isolation import (
    ISOLATIONS,
    database_name,
    quote_ident,
    quote_literal,
    schema_name,
    validate_isolation,
    validate_tenant_id,
)


@pytest.mark.parametrize("tenant_id", ["a", "0", "acme", "acme-corp", "acme_corp", "9lives", "a" * 48, "x-_-y"])
def test_valid_tenant_ids(tenant_id: str) -> None:
    validate_tenant_id(tenant_id)


@pytest.mark.parametrize(
    ("tenant_id", "fragment"),
    [
        ("", "empty"),
        ("a" * 49, "at most 48"),
        ("Acme", "invalid tenant id"),
        ("-acme", "starting with a letter or digit"),
        ("_acme", "starting with a letter or digit"),
        ("ac me", "invalid tenant id"),
        ("acme;drop", "invalid tenant id"),
        ('ac"me', "invalid tenant id"),
        ("acme\n", "invalid tenant id"),
        ("caf\u00e9", "invalid tenant id"),
        ("\u0661", "invalid tenant id"),  # a non-ASCII digit must not pass as [0-9]
    ],
)
def test_invalid_tenant_ids(tenant_id: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        validate_tenant_id(tenant_id)


def test_invalid_tenant_id_is_a_plain_value_error() -> None:
    from router.errors import RouterError

    with pytest.raises(ValueError) as info:
        validate_tenant_id("BAD")
    assert not isinstance(info.value, RouterError)


def test_names() -> None:
    assert schema_name("acme") == "tenant_acme"
    assert database_name("acme-1") == "tenant_acme-1"
    with pytest.raises(ValueError):
        schema_name("Nope")
    # the longest tenant id still fits in a PostgreSQL identifier
    assert quote_ident(database_name("z" * 48)) == '"tenant_' + "z" * 48 + '"'


def test_validate_isolation() -> None:
    assert ISOLATIONS == ("shared", "schema", "database")
    for level in ISOLATIONS:
        assert validate_isolation(level) == level
    with pytest.raises(ValueError, match="shared, schema, database"):
        validate_isolation("table")


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("tenant_acme", '"tenant_acme"'),
        ("tenant_acme-1", '"tenant_acme-1"'),
        ("MixedCase", '"MixedCase"'),
        ('we"ird', '"we""ird"'),
        ('"', '""""'),
        ("select", '"select"'),
        ("\u00e9t\u00e9", '"\u00e9t\u00e9"'),
    ],
)
def test_quote_ident(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


@pytest.mark.parametrize("name", ["", "a\x00b", "x" * 64, "\u00e9" * 32])
def test_quote_ident_refuses(name: str) -> None:
    with pytest.raises(ValueError):
        quote_ident(name)


def test_quote_ident_max_length() -> None:
    assert quote_ident("x" * 63) == '"' + "x" * 63 + '"'


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("", "''"),
        ("abc", "'abc'"),
        ("it's", "'it''s'"),
        ("''", "''''''"),
        ("back\\slash", "'back\\slash'"),  # standard_conforming_strings: backslash is literal
        ('dq"', "'dq\"'"),
        ("line\nbreak", "'line\nbreak'"),
    ],
)
def test_quote_literal(value: str, quoted: str) -> None:
    assert quote_literal(value) == quoted


def test_quote_literal_refuses_nul() -> None:
    with pytest.raises(ValueError):
        quote_literal("a\x00")
