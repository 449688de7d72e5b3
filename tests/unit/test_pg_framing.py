"""Message framing: header reading, size limits, C strings; hostile bytes only ever raise FramingError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.protocol.pg import framing as f
from router.protocol.pg.framing import UINT32, FramingError, cstr, frame, length_at, read_cstr, read_header


def test_frame_builds_type_length_body() -> None:
    # ReadyForQuery, idle: the length counts itself (4) and the status byte, not the type byte.
    assert frame(b"Z", b"I") == b"Z\x00\x00\x00\x05I"
    assert frame(b"S", b"") == b"S\x00\x00\x00\x04"
    assert frame(b"Q", b"x" * 300) == b"Q\x00\x00\x01\x30" + b"x" * 300


def test_read_header_returns_type_and_total_size() -> None:
    assert read_header(b"Z\x00\x00\x00\x05I", 0) == (ord("Z"), 6)
    assert read_header(b"S\x00\x00\x00\x04", 0) == (ord("S"), 5)  # empty body: the smallest message


def test_length_at_reads_big_endian_uint32_like_struct() -> None:
    for value in (0, 4, 255, 256, 65_536, 0x01020304, 0x7FFFFFFF, 0xFFFFFFFF):
        assert length_at(b"xx" + UINT32.pack(value) + b"yy", 2) == value


def test_read_header_at_an_offset() -> None:
    buf = b"S\x00\x00\x00\x04" + b"Z\x00\x00\x00\x05I"
    assert read_header(buf, 5) == (f.READY_FOR_QUERY, 6)


@pytest.mark.parametrize("partial", [b"", b"Z", b"Z\x00", b"Z\x00\x00\x00"])
def test_read_header_waits_for_five_bytes(partial: bytes) -> None:
    assert read_header(partial, 0) is None
    assert read_header(b"junk" + partial, 4) is None


def test_read_header_does_not_need_the_body() -> None:
    # The caller decides when the body is complete; a header alone is enough to know the size.
    assert read_header(b"D\x00\x01\x00\x00", 0) == (ord("D"), 65537)


def test_read_header_accepts_bytearray_and_memoryview() -> None:
    raw = b"xxC\x00\x00\x00\x0dSELECT 1\x00"
    assert read_header(bytearray(raw), 2) == (ord("C"), 14)
    assert read_header(memoryview(raw), 2) == (ord("C"), 14)


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_read_header_refuses_length_below_four(length: int) -> None:
    with pytest.raises(FramingError, match="invalid message length"):
        read_header(b"Q" + length.to_bytes(4, "big"), 0)


def test_read_header_length_limit() -> None:
    assert read_header(b"d" + f.MAX_MESSAGE_LENGTH.to_bytes(4, "big"), 0) == (ord("d"), f.MAX_MESSAGE_LENGTH + 1)
    for length in (f.MAX_MESSAGE_LENGTH + 1, 1 << 30, 0x7FFFFFFF, 0xFFFFFFFF):
        with pytest.raises(FramingError):
            read_header(b"d" + length.to_bytes(4, "big"), 0)


def test_limits_match_postgresql() -> None:
    assert f.MAX_MESSAGE_LENGTH == 0x3FFFFFFF  # MaxAllocSize - 1
    assert f.MAX_STARTUP_LENGTH == 10_000  # MAX_STARTUP_PACKET_LENGTH


def test_stream_split_anywhere_reassembles_into_the_same_messages() -> None:
    messages = [frame(b"T", b"\x00\x00"), frame(b"D", b"\x00\x01" + b"\x00" * 9), frame(b"C", cstr("SELECT 1"))]
    messages.append(b"Z\x00\x00\x00\x05I")
    stream = b"".join(messages)
    for cut in range(len(stream) + 1):
        buf = bytearray()
        seen: list[bytes] = []
        for chunk in (stream[:cut], stream[cut:]):
            buf += chunk
            while (header := read_header(buf, 0)) is not None and len(buf) >= header[1]:
                seen.append(bytes(buf[: header[1]]))
                del buf[: header[1]]
        assert seen == messages, cut
        assert not buf


def test_cstr_round_trip() -> None:
    assert cstr("héllo") == b"h\xc3\xa9llo\x00"
    assert cstr("") == b"\x00"
    assert read_cstr(b"ab\x00cd\x00", 0) == ("ab", 3)
    assert read_cstr(b"ab\x00cd\x00", 3) == ("cd", 6)
    assert read_cstr(b"\x00", 0) == ("", 1)


@pytest.mark.parametrize(("buf", "pos"), [(b"", 0), (b"abc", 0), (b"ab\x00cd", 3), (b"ab\x00", 3), (b"ab\x00", 99)])
def test_read_cstr_without_nul_raises(buf: bytes, pos: int) -> None:
    with pytest.raises(FramingError, match="NUL"):
        read_cstr(buf, pos)


def test_read_cstr_of_invalid_utf8_does_not_raise() -> None:
    # Bodies are in the client's encoding, which need not be UTF-8: never an exception here.
    text, pos = read_cstr(b"caf\xe9\x00", 0)
    assert isinstance(text, str)
    assert pos == 5


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=70))
def test_read_header_on_random_bytes_raises_only_framing_error(buf: bytes, pos: int) -> None:
    try:
        header = read_header(buf, pos)
    except FramingError:
        return
    if header is not None:
        mtype, size = header
        assert mtype == buf[pos]
        assert 5 <= size <= f.MAX_MESSAGE_LENGTH + 1


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=70))
def test_read_cstr_on_random_bytes_raises_only_framing_error(buf: bytes, pos: int) -> None:
    try:
        text, end = read_cstr(buf, pos)
    except FramingError:
        return
    assert isinstance(text, str)
    assert pos < end <= len(buf)
    assert buf[end - 1] == 0
