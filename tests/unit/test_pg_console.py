"""The admin console's wire protocol on bytes: commands parsed from query text, result sets rendered
as exact messages, and the connection's state machine fed whole, split, refused and malicious input."""

from __future__ import annotations

import struct

import pytest

from router.errors import ClientProtocolError, ConsoleSyntaxError
from router.protocol.pg import backend as be
from router.protocol.pg import frontend as fe
from router.protocol.pg.console import (
    BOOL,
    COMMANDS,
    FLOAT8,
    INT8,
    MAX_COMMAND_LENGTH,
    TEXT,
    Close,
    Command,
    ConsoleProtocol,
    Kind,
    Reply,
    Run,
    State,
    greeting,
    parse_command,
    render_failure,
    render_table,
    table_of,
)


def messages(data: bytes) -> list[tuple[str, bytes]]:
    """Split backend bytes into (type, body) pairs; fails on a truncated stream."""
    out = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("!I", data, pos + 1)
        out.append((chr(data[pos]), data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    assert pos == len(data)
    return out


def query(text: str) -> bytes:
    body = text.encode() + b"\x00"
    return b"Q" + struct.pack("!I", len(body) + 4) + body


# --- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SHOW POOLS", Command(Kind.SHOW_POOLS)),
        ("show pools;", Command(Kind.SHOW_POOLS)),
        ("  Show\n\tClients ;; ", Command(Kind.SHOW_CLIENTS)),
        ("SHOW SERVERS", Command(Kind.SHOW_SERVERS)),
        ("SHOW TENANTS", Command(Kind.SHOW_TENANTS)),
        ("SHOW STATS", Command(Kind.SHOW_STATS)),
        ("SHOW HOLDS", Command(Kind.SHOW_HOLDS)),
        ("reload", Command(Kind.RELOAD)),
        ("PAUSE acme", Command(Kind.PAUSE, "acme")),
        ("pause Acme-1;", Command(Kind.PAUSE, "Acme-1")),  # the tenant as written
        ('RESUME "acme"', Command(Kind.RESUME, "acme")),
        ("suspend 'acme'", Command(Kind.SUSPEND, "acme")),
    ],
)
def test_commands_parse(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


def test_every_kind_has_a_command() -> None:
    assert {kind for kind, _ in COMMANDS.values()} == set(Kind)


@pytest.mark.parametrize("text", ["", "  ", ";", " ; ;"])
def test_an_empty_query_is_no_command(text: str) -> None:
    assert parse_command(text) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SHOW FOO", 'unknown console command "SHOW FOO"'),
        ("SELECT 1", 'unknown console command "SELECT 1"'),
        ("DROP TABLE t", 'unknown console command "DROP TABLE t"'),
        ("SHOW POOLS now", 'SHOW POOLS takes no argument, got "SHOW POOLS now"'),
        ("PAUSE", 'PAUSE needs exactly one tenant, got "PAUSE"'),
        ("RESUME a b", 'RESUME needs exactly one tenant, got "RESUME a b"'),
        ("SHOW POOLS; RELOAD", "the console runs one command per query"),
        ("BEGIN", 'unknown console command "BEGIN": the console has no transactions'),
    ],
)
def test_what_is_not_a_command_is_a_42601_naming_it(text: str, message: str) -> None:
    with pytest.raises(ConsoleSyntaxError) as info:
        parse_command(text)
    assert info.value.message == message and info.value.sqlstate == "42601"


def test_an_unknown_command_lists_the_known_ones() -> None:
    with pytest.raises(ConsoleSyntaxError) as info:
        parse_command("SHOW EVERYTHING")
    assert info.value.hint is not None
    for words in ("SHOW POOLS", "SHOW HOLDS", "RELOAD", "PAUSE <tenant>", "RESUME <tenant>", "SUSPEND <tenant>"):
        assert words in info.value.hint


def test_a_long_unknown_command_is_shortened_in_the_message() -> None:
    with pytest.raises(ConsoleSyntaxError) as info:
        parse_command("X" * 1000)
    assert len(info.value.message) < 120 and info.value.message.endswith('..."')


# --- result sets ----------------------------------------------------------------------------------


def test_a_table_is_a_result_set_with_types_and_nulls() -> None:
    table = table_of(
        "SHOW",
        [("name", TEXT), ("n", INT8), ("ok", BOOL), ("secs", FLOAT8)],
        [("a", 1, True, 0.5), (None, -2, False, None)],
    )
    got = messages(render_table(table))
    assert [kind for kind, _ in got] == ["T", "D", "D", "C", "Z"]
    description = got[0][1]
    assert description == (
        struct.pack("!h", 4)
        + b"name\x00" + bytes(6) + struct.pack("!Ihih", 25, -1, -1, 0)
        + b"n\x00" + bytes(6) + struct.pack("!Ihih", 20, 8, -1, 0)
        + b"ok\x00" + bytes(6) + struct.pack("!Ihih", 16, 1, -1, 0)
        + b"secs\x00" + bytes(6) + struct.pack("!Ihih", 701, 8, -1, 0)
    )  # fmt: skip
    assert be.parse_data_row(got[1][1]) == ["a", "1", "t", "0.5"]
    assert be.parse_data_row(got[2][1]) == [None, "-2", "f", None]
    assert got[3][1] == b"SHOW 2\x00"  # psql prints "(2 rows)" from the table itself
    assert got[4] == ("Z", b"I")


def test_an_action_table_keeps_its_tag() -> None:
    got = messages(render_table(table_of("PAUSE", [("tenant", TEXT)], [("acme",)])))
    assert got[-2] == ("C", b"PAUSE\x00")


def test_a_row_of_the_wrong_width_is_a_bug_not_bytes() -> None:
    with pytest.raises(ValueError, match="a row of 1 values for 2 columns"):
        render_table(table_of("SHOW", [("a", TEXT), ("b", TEXT)], [("x",)]))


def test_a_failure_is_an_error_then_ready() -> None:
    got = messages(render_failure(ConsoleSyntaxError("unknown console command", hint="try SHOW POOLS")))
    assert [kind for kind, _ in got] == ["E", "Z"]
    error = be.parse_error_fields(got[0][1])
    assert (error.severity, error.sqlstate, error.fields["H"]) == ("ERROR", "42601", "try SHOW POOLS")


def test_the_greeting_reports_what_psql_reads() -> None:
    got = messages(greeting("ops", "psql", (1234, b"\x01\x02\x03\x04")))
    assert got[0] == ("R", struct.pack("!I", 0))
    params = dict(be.parse_parameter_status(body) for kind, body in got if kind == "S")
    assert params["server_version"].startswith("15.") and params["client_encoding"] == "UTF8"
    assert params["session_authorization"] == "ops" and params["application_name"] == "psql"
    assert got[-2] == ("K", struct.pack("!i", 1234) + b"\x01\x02\x03\x04") and got[-1] == ("Z", b"I")


# --- the state machine ----------------------------------------------------------------------------


def events(console: ConsoleProtocol, data: bytes) -> list[object]:
    console.receive(data)
    out = []
    while (event := console.next_event()) is not None:
        out.append(event)
    return out


def test_queries_become_runs_even_split_byte_by_byte() -> None:
    console = ConsoleProtocol()
    data = query("SHOW POOLS") + query("pause acme;")
    got: list[object] = []
    for i in range(len(data)):
        got += events(console, data[i : i + 1])
    assert got == [Run(Command(Kind.SHOW_POOLS)), Run(Command(Kind.PAUSE, "acme"))]


def test_a_bad_command_is_answered_at_once_and_the_console_goes_on() -> None:
    console = ConsoleProtocol()
    got = events(console, query("SHOW FOO") + query("") + query("RELOAD"))
    assert isinstance(got[0], Reply) and [k for k, _ in messages(got[0].data)] == ["E", "Z"]
    assert got[1] == Reply(b"I\x00\x00\x00\x04" + be.READY_IDLE)  # EmptyQueryResponse
    assert got[2] == Run(Command(Kind.RELOAD))


def test_the_extended_protocol_is_refused_up_to_sync() -> None:
    console = ConsoleProtocol()
    extended = fe.build_parse("", "SHOW POOLS", b"\x00\x00") + fe.bind("", "", ()) + fe.execute("", 0) + fe.SYNC
    got = events(console, extended + query("SHOW HOLDS"))
    assert len(got) == 3
    assert isinstance(got[0], Reply)
    error = be.parse_error_fields(messages(got[0].data)[0][1])
    assert error.sqlstate == "0A000" and "extended query protocol" in error.message
    assert got[1] == Reply(be.READY_IDLE)  # the Sync's
    assert got[2] == Run(Command(Kind.SHOW_HOLDS))
    assert console.state is State.READY


def test_terminate_closes_and_nothing_after_it_is_read() -> None:
    console = ConsoleProtocol()
    assert events(console, fe.TERMINATE + query("RELOAD")) == [Close()]
    assert console.state is State.CLOSED
    assert events(console, query("RELOAD")) == []


def test_a_function_call_is_refused() -> None:
    console = ConsoleProtocol()
    call = b"F" + struct.pack("!I", 4 + 4 + 2 + 2 + 2) + struct.pack("!Ihhh", 1234, 0, 0, 0)
    (reply,) = events(console, call)
    assert isinstance(reply, Reply)
    assert be.parse_error_fields(messages(reply.data)[0][1]).sqlstate == "0A000"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"Q" + struct.pack("!I", MAX_COMMAND_LENGTH + 10), "the console reads at most"),
        (b"Q" + struct.pack("!I", 2), "invalid message on the admin console"),
        (b"Q" + struct.pack("!I", 8) + b"SHOW", "not NUL-terminated"),
        (b"?" + struct.pack("!I", 4), "unexpected message '?'"),
    ],
)
def test_bytes_no_client_sends_end_the_connection(data: bytes, message: str) -> None:
    console = ConsoleProtocol()
    console.receive(data)
    with pytest.raises(ClientProtocolError, match=message):
        console.next_event()


def test_invalid_utf8_is_an_error_not_a_crash() -> None:
    console = ConsoleProtocol()
    (reply,) = events(console, b"Q" + struct.pack("!I", 7) + b"\xff\xfe\x00")
    assert isinstance(reply, Reply)
    assert be.parse_error_fields(messages(reply.data)[0][1]).sqlstate == "42601"
