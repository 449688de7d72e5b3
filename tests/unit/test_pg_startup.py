"""Startup-phase packets: StartupMessage (3.0 and 3.2), SSLRequest, GSSENCRequest, CancelRequest, the
`options` parameter, and hostile packets, which only ever raise FramingError."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.protocol.pg.framing import MAX_STARTUP_LENGTH, FramingError
from router.protocol.pg.startup import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    build_cancel_request,
    build_startup_message,
    parse_options,
    parse_startup_packet,
    startup_packet_length,
)

SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # length 8, code 1234.5679
GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"  # length 8, code 1234.5680
PROTOCOL_3_2 = (3 << 16) | 2


def packet(code: int, body: bytes) -> bytes:
    """A startup-phase packet: int32 length (counting itself), int32 code, body."""
    return struct.pack("!II", len(body) + 8, code) + body


def test_codes_match_postgresql() -> None:
    assert PROTOCOL_3_0 == 196608
    assert SSL_REQUEST_CODE == (1234 << 16) | 5679
    assert GSSENC_REQUEST_CODE == (1234 << 16) | 5680
    assert CANCEL_REQUEST_CODE == (1234 << 16) | 5678


def test_build_startup_message_exact_bytes() -> None:
    assert build_startup_message({"user": "bob", "database": "app"}) == (
        b"\x00\x00\x00\x1f\x00\x03\x00\x00user\x00bob\x00database\x00app\x00\x00"
    )
    assert build_startup_message({}) == b"\x00\x00\x00\x09\x00\x03\x00\x00\x00"


def test_startup_message_round_trip() -> None:
    params = {"user": "bob", "database": "app", "application_name": "psql", "options": "-c x=y"}
    raw = build_startup_message(params)
    assert startup_packet_length(raw) == len(raw)
    assert parse_startup_packet(raw) == StartupMessage(3, 0, params, ())


def test_startup_message_without_parameters() -> None:
    assert parse_startup_packet(packet(PROTOCOL_3_0, b"\x00")) == StartupMessage(3, 0, {}, ())


def test_empty_parameter_value_is_kept() -> None:
    parsed = parse_startup_packet(packet(PROTOCOL_3_0, b"user\x00bob\x00options\x00\x00\x00"))
    assert parsed == StartupMessage(3, 0, {"user": "bob", "options": ""}, ())


def test_later_duplicate_parameter_wins() -> None:
    parsed = parse_startup_packet(packet(PROTOCOL_3_0, b"user\x00a\x00user\x00b\x00\x00"))
    assert isinstance(parsed, StartupMessage)
    assert parsed.parameters == {"user": "b"}


def test_utf8_parameters() -> None:
    parsed = parse_startup_packet(packet(PROTOCOL_3_0, "user\x00jürgen\x00\x00".encode()))
    assert isinstance(parsed, StartupMessage)
    assert parsed.parameters == {"user": "jürgen"}


def test_protocol_3_2_with_extensions() -> None:
    body = b"user\x00bob\x00_pq_.compression\x00zstd\x00_pq_.other\x00on\x00database\x00app\x00\x00"
    parsed = parse_startup_packet(packet(PROTOCOL_3_2, body))
    assert parsed == StartupMessage(3, 2, {"user": "bob", "database": "app"}, ("_pq_.compression", "_pq_.other"))


def test_unknown_major_version_is_reported_not_refused() -> None:
    # The login refuses it with a proper error; the codec just reports the version.
    assert parse_startup_packet(packet(2 << 16, b"\x00")) == StartupMessage(2, 0, {}, ())


def test_ssl_and_gssenc_requests() -> None:
    assert parse_startup_packet(SSL_REQUEST) == SSLRequest()
    assert parse_startup_packet(GSSENC_REQUEST) == GSSENCRequest()
    assert startup_packet_length(SSL_REQUEST) == 8


def test_ssl_request_with_trailing_bytes_is_not_an_ssl_request() -> None:
    try:
        parsed = parse_startup_packet(packet(SSL_REQUEST_CODE, b"x\x00y\x00\x00"))
    except FramingError:
        return
    assert not isinstance(parsed, SSLRequest)


def test_cancel_request_exact_bytes_and_round_trip() -> None:
    raw = build_cancel_request(1234, b"\xde\xad\xbe\xef")
    assert raw == b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\xde\xad\xbe\xef"
    assert parse_startup_packet(raw) == CancelRequest(1234, b"\xde\xad\xbe\xef")


def test_cancel_request_with_negative_pid_and_3_2_long_key() -> None:
    key = bytes(range(256))  # protocol 3.2 allows secret keys up to 256 bytes
    assert parse_startup_packet(build_cancel_request(-5, key)) == CancelRequest(-5, key)


@pytest.mark.parametrize("key_length", [0, 3, 257, 1000])
def test_cancel_request_with_bad_key_length(key_length: int) -> None:
    raw = packet(CANCEL_REQUEST_CODE, b"\x00\x00\x00\x01" + b"k" * key_length)
    with pytest.raises(FramingError, match="CancelRequest"):
        parse_startup_packet(raw)


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00", b"\x00\x00"])
def test_startup_packet_length_waits_for_four_bytes(raw: bytes) -> None:
    assert startup_packet_length(raw) is None


@pytest.mark.parametrize("length", [8, 9, MAX_STARTUP_LENGTH])
def test_startup_packet_length_accepts(length: int) -> None:
    assert startup_packet_length(struct.pack("!I", length)) == length
    assert startup_packet_length(bytearray(struct.pack("!I", length) + b"more")) == length


@pytest.mark.parametrize("length", [0, 4, 7, MAX_STARTUP_LENGTH + 1, 1 << 20, 0xFFFFFFFF])
def test_startup_packet_length_refuses(length: int) -> None:
    with pytest.raises(FramingError, match="invalid startup packet length"):
        startup_packet_length(struct.pack("!I", length))


def test_oversized_startup_message_is_refused_by_its_header() -> None:
    raw = build_startup_message({"user": "bob", "application_name": "x" * MAX_STARTUP_LENGTH})
    with pytest.raises(FramingError):
        startup_packet_length(raw)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "too short"),
        (b"\x00\x00\x00\x08\x00\x03", "too short"),
        (packet(PROTOCOL_3_0, b""), "NUL"),  # no terminator at all
        (packet(PROTOCOL_3_0, b"user\x00bob"), "NUL"),  # value not NUL-terminated
        (packet(PROTOCOL_3_0, b"user\x00bob\x00"), "terminator"),  # list without its final NUL
        (packet(PROTOCOL_3_0, b"user\x00\x00"), "pairs|terminator"),  # name without a value
        (packet(PROTOCOL_3_0, b"user\x00bob\x00database\x00\x00"), "pairs"),  # odd number of strings
        (packet(PROTOCOL_3_0, b"\x00bob\x00\x00"), "name"),  # empty name before a value
        (packet(PROTOCOL_3_0, b"user\x00bob\x00\x00x\x00y\x00\x00"), "pairs|name"),  # data after terminator
        (packet(PROTOCOL_3_0, b"user\x00b\xffb\x00\x00"), "UTF-8"),
        (packet(PROTOCOL_3_0, b"us\xc3er\x00bob\x00\x00"), "UTF-8"),
        (packet(PROTOCOL_3_2, b"_pq_.x\x00\x00"), "pairs|terminator"),
    ],
)
def test_malformed_startup_message(raw: bytes, match: str) -> None:
    with pytest.raises(FramingError, match=match):
        parse_startup_packet(raw)


@given(st.binary(max_size=300))
def test_parse_startup_packet_on_random_bytes_raises_only_framing_error(raw: bytes) -> None:
    with contextlib.suppress(FramingError):
        parse_startup_packet(raw)


@given(
    st.sampled_from([PROTOCOL_3_0, PROTOCOL_3_2, CANCEL_REQUEST_CODE, SSL_REQUEST_CODE, GSSENC_REQUEST_CODE]),
    st.lists(st.sampled_from([b"\x00", b"user", b"_pq_.x", b"\xff", b"\xc3", b"a"]), max_size=12),
)
def test_parse_startup_packet_on_plausible_garbage_raises_only_framing_error(code: int, pieces: list[bytes]) -> None:
    with contextlib.suppress(FramingError):
        parse_startup_packet(packet(code, b"".join(pieces)))


@given(st.binary(max_size=8))
def test_startup_packet_length_on_random_bytes_raises_only_framing_error(raw: bytes) -> None:
    try:
        length = startup_packet_length(raw)
    except FramingError:
        return
    assert length is None or 8 <= length <= MAX_STARTUP_LENGTH


_names = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=10)
_values = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)


@given(st.dictionaries(_names.filter(lambda n: not n.startswith("_pq_.")), _values, max_size=6))
def test_startup_message_round_trips_any_parameters(params: dict[str, str]) -> None:
    assert parse_startup_packet(build_startup_message(params)) == StartupMessage(3, 0, params, ())


# --- the `options` startup parameter ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", {}),
        ("-c a=b --x=y", {"a": "b", "x": "y"}),
        ("-c router.tenant=acme", {"router.tenant": "acme"}),
        ("-csearch_path=app", {"search_path": "app"}),
        ("--statement-timeout=5s", {"statement_timeout": "5s"}),  # dashes in names become underscores
        ("-c lock-timeout=1-2", {"lock_timeout": "1-2"}),  # ...but not in values
        ("-c DateStyle=ISO", {"datestyle": "ISO"}),  # GUC names are case-insensitive
        ("-c application_name=my\\ app", {"application_name": "my app"}),  # backslash-escaped space
        ("-c search_path=a\\,\\ b  -c x=1", {"search_path": "a, b", "x": "1"}),
        ("-c x=a\\\\b", {"x": "a\\b"}),  # an escaped backslash
        ("-c x=\\", {"x": ""}),  # a trailing lone backslash is dropped, as the server does
        ("\t-c\ta=1\n--b=2 ", {"a": "1", "b": "2"}),  # any ASCII whitespace separates
        ("-c application_name=a\u00a0b", {"application_name": "a\u00a0b"}),  # a no-break space does not
        ("-c x=1 -c x=2", {"x": "2"}),
        ("-c x=", {"x": ""}),
        ("-c x=a=b", {"x": "a=b"}),
        ("-c", {}),  # switch without its argument
        ("-c novalue --alsonovalue", {}),
        ("-B 100 -e -c a=b", {"a": "b"}),  # other postgres switches are ignored
        ("plainword", {}),
    ],
)
def test_parse_options(options: str, expected: dict[str, str]) -> None:
    assert parse_options(options) == expected


@given(st.text(max_size=60))
def test_parse_options_never_raises(options: str) -> None:
    assert isinstance(parse_options(options), dict)
