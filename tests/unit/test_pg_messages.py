"""Frontend and backend messages: exact bytes of builders (as in the PostgreSQL protocol docs), builder ->
parser round trips, and hostile bodies, which only ever raise FramingError."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.protocol.pg import backend as be
from router.protocol.pg import frontend as fe
from router.protocol.pg.framing import FramingError, frame, read_header

# --- backend builders -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (be.READY_IDLE, b"Z\x00\x00\x00\x05I"),
        (be.ready_for_query(), b"Z\x00\x00\x00\x05I"),
        (be.ready_for_query(be.TX_IN_TRANSACTION), b"Z\x00\x00\x00\x05T"),
        (be.ready_for_query(be.TX_FAILED), b"Z\x00\x00\x00\x05E"),
        (be.PARSE_COMPLETE, b"1\x00\x00\x00\x04"),
        (be.BIND_COMPLETE, b"2\x00\x00\x00\x04"),
        (be.CLOSE_COMPLETE, b"3\x00\x00\x00\x04"),
        (be.NO_DATA, b"n\x00\x00\x00\x04"),
        (be.authentication_ok(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
        (be.authentication_cleartext(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
        (be.authentication_md5(b"\x01\x02\x03\x04"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04"),
        (be.authentication_sasl(["SCRAM-SHA-256"]), b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"),
        (be.authentication_sasl_continue(b"r=ab"), b"R\x00\x00\x00\x0c\x00\x00\x00\x0br=ab"),
        (be.authentication_sasl_final(b"v=xy"), b"R\x00\x00\x00\x0c\x00\x00\x00\x0cv=xy"),
        (be.parameter_status("client_encoding", "UTF8"), b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"),
        (be.backend_key_data(1234, b"\x00\x00\x10\x00"), b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\x00\x00\x10\x00"),
        (be.command_complete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
        (
            be.negotiate_protocol_version(0, ("_pq_.foo",)),
            b"v\x00\x00\x00\x15\x00\x00\x00\x00\x00\x00\x00\x01_pq_.foo\x00",
        ),
        (be.negotiate_protocol_version(0, ()), b"v\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"),
        (be.error_response("42P01", "nope"), b"E\x00\x00\x00\x20SERROR\x00VERROR\x00C42P01\x00Mnope\x00\x00"),
        (
            be.error_response("01000", "hm", severity="WARNING", notice=True),
            b"N\x00\x00\x00\x22SWARNING\x00VWARNING\x00C01000\x00Mhm\x00\x00",
        ),
    ],
)
def test_backend_builder_exact_bytes(built: bytes, expected: bytes) -> None:
    assert built == expected


def test_every_backend_builder_is_correctly_framed() -> None:
    for message in (
        be.authentication_sasl(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]),
        be.error_response("28P01", "bad", detail="d", hint="h", severity="FATAL"),
        be.parameter_status("TimeZone", "Europe/Zürich"),
    ):
        assert read_header(message, 0) == (message[0], len(message))


def test_error_response_round_trip() -> None:
    raw = be.error_response("42P01", 'relation "t" does not exist', detail="dé", hint="h", severity="FATAL")
    error = be.parse_error_fields(raw[5:])
    assert error.sqlstate == "42P01"
    assert error.message == 'relation "t" does not exist'
    assert error.severity == "FATAL"
    assert error.fields["D"] == "dé"
    assert error.fields["H"] == "h"


def test_error_fields_defaults() -> None:
    error = be.parse_error_fields(b"\x00")
    assert (error.sqlstate, error.message, error.severity) == ("XX000", "", "ERROR")
    # Servers before 9.6 send no 'V' field: fall back to the localised 'S'.
    assert be.parse_error_fields(b"SFEHLER\x00\x00").severity == "FEHLER"
    assert be.parse_error_fields(b"").fields == {}


@pytest.mark.parametrize("body", [b"S", b"SERROR", b"SERROR\x00Mno terminator", b"\x01"])
def test_error_fields_hostile(body: bytes) -> None:
    with pytest.raises(FramingError):
        be.parse_error_fields(body)


def test_parameter_status_round_trip() -> None:
    assert be.parse_parameter_status(be.parameter_status("search_path", '"$user", public')[5:]) == (
        "search_path",
        '"$user", public',
    )
    for body in (b"", b"name", b"name\x00value"):
        with pytest.raises(FramingError):
            be.parse_parameter_status(body)


def test_backend_key_data_round_trip() -> None:
    assert be.parse_backend_key_data(be.backend_key_data(-7, b"abcd")[5:]) == (-7, b"abcd")
    long_key = bytes(range(32))  # protocol 3.2: longer secret keys
    assert be.parse_backend_key_data(be.backend_key_data(99, long_key)[5:]) == (99, long_key)
    with pytest.raises(FramingError):
        be.parse_backend_key_data(b"\x00\x00\x00\x01abc")


def test_authentication_round_trip() -> None:
    assert be.parse_authentication(be.authentication_ok()[5:]) == (be.AUTH_OK, b"")
    assert be.parse_authentication(be.authentication_md5(b"salt")[5:]) == (be.AUTH_MD5, b"salt")
    code, payload = be.parse_authentication(be.authentication_sasl(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])[5:])
    assert code == be.AUTH_SASL
    assert be.parse_sasl_mechanisms(payload) == ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
    with pytest.raises(FramingError):
        be.parse_authentication(b"\x00\x00\x00")


# --- frontend builders and parsers -------------------------------------------------------------------


def test_frontend_constants() -> None:
    assert fe.SYNC == b"S\x00\x00\x00\x04"
    assert fe.FLUSH == b"H\x00\x00\x00\x04"
    assert fe.TERMINATE == b"X\x00\x00\x00\x04"


def test_query_round_trip() -> None:
    assert fe.query("SELECT 1") == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert fe.parse_query(fe.query("SELECT 'é'")) == "SELECT 'é'"
    assert fe.parse_query(fe.query("")) == ""


def test_query_without_nul_is_refused() -> None:
    with pytest.raises(FramingError):
        fe.parse_query(b"Q\x00\x00\x00\x0cSELECT 1")
    with pytest.raises(FramingError):
        fe.query_bytes(b"Q\x00\x00\x00\x0cSELECT 1")


def test_query_bytes_are_the_text_as_sent() -> None:
    assert fe.query_bytes(fe.query("SELECT 'é'")) == "SELECT 'é'".encode()
    assert fe.query_bytes(fe.query("")) == b""


def test_parse_exact_bytes_and_round_trip() -> None:
    types = b"\x00\x01\x00\x00\x00\x17"  # one parameter, int4
    raw = fe.build_parse("s1", "SELECT $1", types)
    assert raw == b"P\x00\x00\x00\x17s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"
    assert fe.parse_parse(raw) == fe.Parse("s1", "SELECT $1", types)
    unnamed = fe.build_parse("", "SELECT 1", b"\x00\x00")
    assert unnamed == b"P\x00\x00\x00\x10\x00SELECT 1\x00\x00\x00"
    assert fe.parse_parse(unnamed) == fe.Parse("", "SELECT 1", b"\x00\x00")


@pytest.mark.parametrize(
    "raw",
    [
        b"P\x00\x00\x00\x04",  # empty body
        frame(b"P", b"s1"),  # name not terminated
        frame(b"P", b"s1\x00SELECT 1"),  # query not terminated
        frame(b"P", b"s1\x00SELECT 1\x00"),  # no parameter type count
        frame(b"P", b"s1\x00SELECT 1\x00\x00"),  # half a count
    ],
)
def test_malformed_parse(raw: bytes) -> None:
    with pytest.raises(FramingError):
        fe.parse_parse(raw)


def test_parse_in_a_non_utf8_client_encoding_round_trips_byte_exactly() -> None:
    raw = frame(b"P", b"\x00SELECT 'caf\xe9'\x00\x00\x00")  # LATIN1 text, as PostgreSQL accepts it
    parse = fe.parse_parse(raw)
    assert fe.build_parse(parse.name, parse.query, parse.param_types) == raw
    assert fe.parse_parse(frame(b"P", b"\x00SELECT 'caf\xfc'\x00\x00\x00")) != parse


def _bind(portal: bytes, statement: bytes) -> bytes:
    rest = b"\x00\x01\x00\x00" + b"\x00\x01\x00\x00\x00\x0242" + b"\x00\x01\x00\x01"
    return frame(b"B", portal + b"\x00" + statement + b"\x00" + rest)


def test_bind_split_and_rename() -> None:
    raw = _bind(b"", b"S_1")
    # Hand-built per the docs: 1 text format code; 1 parameter "42"; 1 binary result format.
    assert raw == b"B\x00\x00\x00\x19\x00S_1\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x01\x00\x01"
    portal, statement, rest_at = fe.split_bind(raw)
    assert (portal, statement, rest_at) == ("", "S_1", 10)
    renamed = fe.rename_bind(raw, portal, "trs_1", rest_at)
    assert renamed == b"B\x00\x00\x00\x1b\x00trs_1\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x01\x00\x01"
    assert read_header(renamed, 0) == (ord("B"), len(renamed))
    assert fe.split_bind(renamed) == ("", "trs_1", 12)
    # Renaming to the same name is the identity.
    assert fe.rename_bind(raw, portal, statement, rest_at) == raw


def test_bind_with_a_named_portal_keeps_it() -> None:
    raw = _bind(b"C_7", b"S_1")
    portal, statement, rest_at = fe.split_bind(raw)
    assert (portal, statement) == ("C_7", "S_1")
    assert fe.split_bind(fe.rename_bind(raw, portal, "", rest_at))[:2] == ("C_7", "")


@pytest.mark.parametrize("raw", [b"B\x00\x00\x00\x04", frame(b"B", b"portal"), frame(b"B", b"\x00stmt")])
def test_malformed_bind(raw: bytes) -> None:
    with pytest.raises(FramingError):
        fe.split_bind(raw)


def test_describe_and_close_exact_bytes_and_round_trip() -> None:
    assert fe.describe(b"S", "s1") == b"D\x00\x00\x00\x08Ss1\x00"
    assert fe.describe(b"P", "") == b"D\x00\x00\x00\x06P\x00"
    assert fe.close(b"S", "s1") == b"C\x00\x00\x00\x08Ss1\x00"
    assert fe.close(b"P", "") == b"C\x00\x00\x00\x06P\x00"
    assert fe.parse_target(fe.describe(b"S", "s1")) == (ord("S"), "s1")
    assert fe.parse_target(fe.close(b"P", "")) == (ord("P"), "")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"D\x00\x00\x00\x04", "kind"),
        (b"D\x00\x00\x00\x06X\x00", "'S' or 'P'"),
        (b"C\x00\x00\x00\x06s\x00", "'S' or 'P'"),  # kinds are case-sensitive
        (b"C\x00\x00\x00\x06\x00\x00", "'S' or 'P'"),
        (b"D\x00\x00\x00\x07Ss1", "NUL"),
        (b"D\x00\x00\x00\x05S", "NUL"),
    ],
)
def test_malformed_describe_or_close(raw: bytes, match: str) -> None:
    with pytest.raises(FramingError, match=match):
        fe.parse_target(raw)


def test_password_and_sasl_messages() -> None:
    assert fe.password_message(b"secret\x00") == b"p\x00\x00\x00\x0bsecret\x00"
    initial = fe.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert initial == b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc"
    assert fe.parse_sasl_initial_response(initial) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    no_data = frame(b"p", b"SCRAM-SHA-256\x00\xff\xff\xff\xff")  # length -1: no initial response
    assert fe.parse_sasl_initial_response(no_data) == ("SCRAM-SHA-256", b"")


@pytest.mark.parametrize(
    "raw",
    [
        frame(b"p", b"SCRAM-SHA-256"),  # mechanism not terminated
        frame(b"p", b"SCRAM-SHA-256\x00\x00\x00"),  # half a length
        frame(b"p", b"SCRAM-SHA-256\x00\x00\x00\x00\x05abc"),  # length says 5, 3 bytes follow
        frame(b"p", b"SCRAM-SHA-256\x00\x00\x00\x00\x01abc"),  # length says 1, 3 bytes follow
        frame(b"p", b"SCRAM-SHA-256\x00\xff\xff\xff\xfeabc"),  # negative length other than -1
    ],
)
def test_malformed_sasl_initial_response(raw: bytes) -> None:
    with pytest.raises(FramingError):
        fe.parse_sasl_initial_response(raw)


# --- hostile input: only FramingError, whatever the bytes ---------------------------------------------

_pieces = st.lists(st.sampled_from([b"\x00", b"S", b"P", b"s1", b"\xff", b"\xe9", b"\x00\x01", b"SELECT"]), max_size=10)


def _bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=40), _pieces.map(b"".join))


@given(st.sampled_from(b"PBDCQp"), _bodies(), st.booleans())
def test_frontend_parsers_raise_only_framing_error(mtype: int, body: bytes, framed: bool) -> None:
    raw = frame(bytes((mtype,)), body) if framed else bytes((mtype,)) + body
    for parser in (fe.parse_parse, fe.split_bind, fe.parse_target, fe.parse_query, fe.parse_sasl_initial_response):
        with contextlib.suppress(FramingError):
            parser(raw)


@given(_bodies())
def test_parse_target_accepts_only_s_or_p(body: bytes) -> None:
    raw = frame(b"D", body)
    try:
        kind, name = fe.parse_target(raw)
    except FramingError:
        return
    assert kind in (ord("S"), ord("P"))
    assert isinstance(name, str)


@given(_bodies())
def test_backend_parsers_raise_only_framing_error(body: bytes) -> None:
    for parser in (
        be.parse_error_fields,
        be.parse_parameter_status,
        be.parse_backend_key_data,
        be.parse_authentication,
    ):
        with contextlib.suppress(FramingError):
            parser(body)


@given(
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20),
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=60),
    st.lists(st.integers(min_value=0, max_value=0xFFFFFFFF), max_size=5),
)
def test_parse_round_trips(name: str, text: str, oids: list[int]) -> None:
    types = struct.pack(f"!h{len(oids)}I", len(oids), *oids)
    assert fe.parse_parse(fe.build_parse(name, text, types)) == fe.Parse(name, text, types)
