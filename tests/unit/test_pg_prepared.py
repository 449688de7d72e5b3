"""Prepared statements: content-derived server names, shared across clients, per namespace; parse
epochs decide where a statement must be parsed again."""

from __future__ import annotations

import re

from router.protocol.pg.frontend import Parse, build_parse, parse_parse
from router.protocol.pg.prepared import UNKNOWN_EPOCH, ClientStatements, needs_parse, server_statement_for

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
    a = alice.define("P_0", Parse("P_0", SELECT.query, INT4), 1).on("public")
    b = bob.define("__asyncpg_stmt_7__", Parse("__asyncpg_stmt_7__", SELECT.query, INT4), 2).on("public")
    assert a.name == b.name
    # ...but not across namespaces: names resolve before execution (schema-per-tenant).
    statement = bob.get("__asyncpg_stmt_7__")
    assert statement is not None and statement.on("tenant_b").name != a.name


def test_server_statement_is_memoised_per_namespace() -> None:
    statement = ClientStatements().define("s", SELECT, 1)
    assert statement.on("x") is statement.on("x")
    other = statement.on("y")
    assert other.name == server_statement_for(SELECT, "y").name
    assert statement.on("x").name == server_statement_for(SELECT, "x").name


def test_define_records_the_parse_and_its_epoch() -> None:
    client = ClientStatements()
    statement = client.define("s", SELECT, 7)
    assert client.get("s") is statement
    assert statement.epoch == 7 and statement.parse == SELECT
    assert "s" in client and "t" not in client
    assert client.query_of("s") == SELECT.query
    assert client.query_of("t") is None


def test_unknown_statement_is_none() -> None:
    assert ClientStatements().get("nope") is None


def test_forget() -> None:
    client = ClientStatements()
    client.define("s1", SELECT, 1)
    client.define("s2", Parse("s2", "SELECT 2", NO_TYPES), 2)
    assert len(client) == 2
    client.forget("s1")
    assert client.get("s1") is None
    assert client.get("s2") is not None
    assert len(client) == 1
    client.forget("s1")  # forgetting twice (or an unknown name) is harmless
    client.forget("never")
    assert len(client) == 1


def test_redefine_after_forget_is_a_new_statement() -> None:
    client = ClientStatements()
    client.define("s", SELECT, 1)
    client.forget("s")
    statement = client.define("s", Parse("s", "SELECT 2", NO_TYPES), 2)
    assert statement.on("").name == server_statement_for(Parse("", "SELECT 2", NO_TYPES), "").name
    assert statement.epoch == 2


def test_forget_all_keeps_the_unnamed_statement() -> None:
    # DEALLOCATE ALL and DISCARD ALL drop the named statements; PostgreSQL keeps the unnamed one.
    client = ClientStatements()
    message = build_parse("", "SELECT 1", NO_TYPES)
    client.last_unnamed = message
    client.define("a", SELECT, 1)
    client.define("b", Parse("b", "SELECT 2", NO_TYPES), 2)
    client.forget_all()
    assert len(client) == 0 and client.get("a") is None
    assert client.last_unnamed is message


def test_a_missing_copy_needs_a_parse() -> None:
    assert needs_parse({}, "trs_a", 1)
    assert needs_parse({"trs_b": 9}, "trs_a", 1)


def test_a_copy_older_than_the_clients_parse_needs_a_parse() -> None:
    # The client parsed at 5 (after DDL, say); this connection's copy dates from 3.
    assert needs_parse({"trs_a": 3}, "trs_a", 5)


def test_a_copy_as_new_as_the_clients_parse_or_newer_is_used() -> None:
    # pgbench -M prepared: each client parses once; every copy parsed since serves them all.
    assert not needs_parse({"trs_a": 5}, "trs_a", 5)
    assert not needs_parse({"trs_a": 8}, "trs_a", 5)


def test_a_copy_of_unknown_age_is_parsed_again_for_any_client() -> None:
    assert needs_parse({"trs_a": UNKNOWN_EPOCH}, "trs_a", 1)
