"""Prepared statements: content-derived server names, shared across clients, per namespace."""

from __future__ import annotations

import re

from router.protocol.pg.frontend import Parse, build_parse, parse_parse
from router.protocol.pg.prepared import ClientStatements, server_statement_for

INT4 = b"\x00\x01\x00\x00\x00\x17"
TEXT = b"\x00\x01\x00\x00\x00\x19"
NO_TYPES = b"\x00\x00"
SELECT = Parse("", "SELECT * FROM items WHERE id = $1", INT4)


def test_server_name_is_content_derived_and_stable() -> None:
    statement = server_statement_for(SELECT, "tenant_a")
    assert re.fullmatch(r"trs_[0-9a-f]{20}", statement.name)
    # The client's own name plays no part: only the text, the parameter types and the namespace.
    again = server_statement_for(Parse("__asyncpg_stmt_1__", SELECT.query, INT4), "tenant_a")
    assert again.name == statement.name
    assert again.parse_message == statement.parse_message


def test_server_statement_parse_message_uses_the_server_name() -> None:
    statement = server_statement_for(SELECT, "public")
    assert statement.parse_message == build_parse(statement.name, SELECT.query, INT4)
    assert parse_parse(statement.parse_message) == Parse(statement.name, SELECT.query, INT4)


def test_different_types_text_or_namespace_give_different_names() -> None:
    names = {
        server_statement_for(SELECT, "a").name,
        server_statement_for(Parse("", SELECT.query, TEXT), "a").name,
        server_statement_for(Parse("", SELECT.query, NO_TYPES), "a").name,
        server_statement_for(Parse("", SELECT.query + " ", INT4), "a").name,
        server_statement_for(SELECT, "b").name,  # same text, another tenant's schema
        server_statement_for(SELECT, "").name,
    }
    assert len(names) == 6


def test_same_statement_shares_one_server_name_across_clients() -> None:
    alice, bob = ClientStatements(), ClientStatements()
    alice.define("P_0", Parse("P_0", SELECT.query, INT4))
    bob.define("__asyncpg_stmt_7__", Parse("__asyncpg_stmt_7__", SELECT.query, INT4))
    a, b = alice.resolve("P_0", "public"), bob.resolve("__asyncpg_stmt_7__", "public")
    assert a is not None and b is not None
    assert a.name == b.name
    # ...but not across namespaces: names resolve before execution (schema-per-tenant).
    other = bob.resolve("__asyncpg_stmt_7__", "tenant_b")
    assert other is not None and other.name != a.name


def test_different_types_under_one_client_name_are_different_statements() -> None:
    client = ClientStatements()
    client.define("s", Parse("s", SELECT.query, INT4))
    first = client.resolve("s", "")
    client.define("s", Parse("s", SELECT.query, TEXT))  # redefined (after a Close, or by a careless client)
    second = client.resolve("s", "")
    assert first is not None and second is not None
    assert first.name != second.name
    assert second.name == server_statement_for(Parse("", SELECT.query, TEXT), "").name


def test_resolve_is_memoised() -> None:
    client = ClientStatements()
    client.define("s", SELECT)
    assert client.resolve("s", "x") is client.resolve("s", "x")


def test_unknown_statement_resolves_to_none() -> None:
    assert ClientStatements().resolve("nope", "") is None


def test_forget() -> None:
    client = ClientStatements()
    client.define("s1", SELECT)
    client.define("s2", Parse("s2", "SELECT 2", NO_TYPES))
    assert len(client) == 2
    assert client.resolve("s1", "") is not None
    client.forget("s1")
    assert client.resolve("s1", "") is None
    assert client.resolve("s2", "") is not None
    assert len(client) == 1
    client.forget("s1")  # forgetting twice (or an unknown name) is harmless
    client.forget("never")
    assert len(client) == 1


def test_redefine_after_forget() -> None:
    client = ClientStatements()
    client.define("s", SELECT)
    client.forget("s")
    client.define("s", Parse("s", "SELECT 2", NO_TYPES))
    statement = client.resolve("s", "")
    assert statement is not None
    assert statement.name == server_statement_for(Parse("", "SELECT 2", NO_TYPES), "").name


def test_last_unnamed_is_kept_apart_from_named_statements() -> None:
    client = ClientStatements()
    assert client.last_unnamed is None
    message = build_parse("", "SELECT 1", NO_TYPES)
    client.last_unnamed = message
    client.define("s", SELECT)
    client.forget("s")
    assert client.last_unnamed is message
    assert len(client) == 0
