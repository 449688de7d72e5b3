"""Whether a transaction's first request may go to a replica, decided on the client's bytes."""

from __future__ import annotations

from router.protocol.pg import frontend as fe
from router.protocol.pg.prepared import ClientStatements
from router.protocol.pg.read_intent import ReadPolicy, request_reads
from router.sql.read_statements import ReadClassifier

AUTO = ReadPolicy("auto", False, ReadClassifier())
EXPLICIT = ReadPolicy("explicit", False, ReadClassifier())
READ_ONLY = ReadPolicy("explicit", True, ReadClassifier())


def bind(statement: str = "") -> bytes:
    body = b"\x00" + statement.encode() + b"\x00" + b"\x00\x00" + b"\x00\x00" + b"\x00\x00"
    return b"B" + (len(body) + 4).to_bytes(4, "big") + body


def execute() -> bytes:
    body = b"\x00" + b"\x00\x00\x00\x00"
    return b"E" + (len(body) + 4).to_bytes(4, "big") + body


def batch(*messages: bytes) -> bytes:
    return b"".join(messages)


def test_simple_queries() -> None:
    statements = ClientStatements()
    assert request_reads(AUTO, fe.query("SELECT 1"), 0, statements)
    assert not request_reads(AUTO, fe.query("INSERT INTO t VALUES (1)"), 0, statements)
    assert not request_reads(AUTO, fe.query("BEGIN"), 0, statements)
    assert request_reads(AUTO, fe.query("BEGIN READ ONLY"), 0, statements)
    assert not request_reads(EXPLICIT, fe.query("SELECT 1"), 0, statements)
    assert request_reads(EXPLICIT, fe.query("START TRANSACTION READ ONLY"), 0, statements)
    assert request_reads(READ_ONLY, fe.query("INSERT INTO t VALUES (1)"), 0, statements)


def test_a_query_after_other_bytes_is_read_at_its_offset() -> None:
    data = fe.query("INSERT INTO t VALUES (1)") + fe.query("SELECT 1")
    assert request_reads(AUTO, data, len(fe.query("INSERT INTO t VALUES (1)")), ClientStatements())


def test_extended_batches_need_every_statement_to_read_and_a_sync() -> None:
    statements = ClientStatements()
    parse_read = fe.build_parse("", "SELECT $1::int", b"\x00\x00")
    parse_write = fe.build_parse("", "UPDATE t SET a = $1", b"\x00\x00")
    assert request_reads(AUTO, batch(parse_read, bind(), execute(), fe.SYNC), 0, statements)
    assert not request_reads(AUTO, batch(parse_read, bind(), execute()), 0, statements)  # no Sync yet
    assert not request_reads(
        AUTO, batch(parse_read, bind(), execute(), parse_write, bind(), execute(), fe.SYNC), 0, statements
    )
    # An unnamed Bind of a statement parsed in an earlier batch: not tracked, so the primary.
    assert not request_reads(AUTO, batch(bind(), execute(), fe.SYNC), 0, statements)


def test_named_statements_are_judged_by_their_text() -> None:
    statements = ClientStatements()
    statements.define("s_read", fe.parse_parse(fe.build_parse("s_read", "SELECT 1", b"\x00\x00")), 1)
    statements.define("s_write", fe.parse_parse(fe.build_parse("s_write", "DELETE FROM t", b"\x00\x00")), 1)
    assert request_reads(AUTO, batch(bind("s_read"), execute(), fe.SYNC), 0, statements)
    assert not request_reads(AUTO, batch(bind("s_write"), execute(), fe.SYNC), 0, statements)
    assert not request_reads(AUTO, batch(bind("unknown"), execute(), fe.SYNC), 0, statements)


def test_other_messages_go_to_the_primary() -> None:
    body = b"\x00\x00\x00\x01" + b"\x00\x00" + b"\x00\x00" + b"\x00\x00"
    function_call = b"F" + (len(body) + 4).to_bytes(4, "big") + body
    assert not request_reads(AUTO, function_call, 0, ClientStatements())


def test_a_running_transaction_is_followed_message_by_message() -> None:
    from router.protocol.pg.read_intent import message_reads

    statements = ClientStatements()
    statements.define("s_read", fe.parse_parse(fe.build_parse("s_read", "SELECT 1", b"\x00\x00")), 1)
    plain = AUTO.plain
    for text in (
        "BEGIN",
        "begin isolation level serializable",
        "COMMIT",
        "end;",
        "ROLLBACK TO SAVEPOINT a",
        "SAVEPOINT a",
        "RELEASE a",
        "SELECT 1",
    ):
        assert message_reads(plain, fe.query(text), statements), text
    for text in (
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "BEGIN; INSERT INTO t VALUES (1)",
        "UPDATE t SET a = 1",
    ):
        assert not message_reads(plain, fe.query(text), statements), text
    assert message_reads(plain, fe.build_parse("", "SELECT $1::int", b"\x00\x00"), statements)
    assert not message_reads(plain, fe.build_parse("", "DELETE FROM t", b"\x00\x00"), statements)
    assert message_reads(plain, bind("s_read"), statements)
    assert not message_reads(plain, bind("unknown"), statements)
    assert message_reads(plain, execute(), statements) and message_reads(plain, fe.SYNC, statements)
