"""Frontend messages: those a client sends, which the router also sends to servers.

Only the messages routing needs are decoded (Query text; the statement and portal names of the
extended protocol, so that prepared statements can be renamed per server connection). Parsers take
the whole message, header included, so that a message forwarded unchanged is never copied; a
renamed message copies its parameters once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from router.protocol.pg.framing import INT16, INT32, UINT32, FramingError, cstr, frame, read_cstr

SYNC: Final = b"S\x00\x00\x00\x04"
FLUSH: Final = b"H\x00\x00\x00\x04"
TERMINATE: Final = b"X\x00\x00\x00\x04"


def parse_query(msg: bytes) -> str:
    return query_bytes(msg).decode("utf-8", errors="replace")


def query_bytes(msg: bytes) -> bytes:
    """A Query's text as the client sent it, undecoded (parse_query decodes it)."""
    end = msg.find(b"\x00", 5)
    if end < 0:
        raise FramingError("string is not NUL-terminated")
    return msg[5:end]


def query(sql: str) -> bytes:
    return frame(b"Q", cstr(sql))


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    query: str
    # The parameter type OIDs exactly as sent (int16 count + int32s), kept as bytes.
    param_types: bytes


def parse_parse(msg: bytes) -> Parse:
    name, pos = read_cstr(msg, 5)
    # The query is in the client's encoding, which need not be UTF-8: keep its bytes exact.
    end = msg.find(b"\x00", pos)
    if end < 0:
        raise FramingError("string is not NUL-terminated")
    text = msg[pos:end].decode("utf-8", "surrogateescape")
    pos = end + 1
    types = msg[pos:]
    if len(types) < 2:
        raise FramingError("Parse message lacks its parameter type count")
    return Parse(name, text, bytes(types))


def build_parse(name: str, query_text: str, param_types: bytes) -> bytes:
    query_bytes = query_text.encode("utf-8", "surrogateescape")
    return frame(b"P", cstr(name) + query_bytes + b"\x00" + param_types)


def bind(portal: str, statement: str, values: tuple[str, ...]) -> bytes:
    """A Bind of text parameters (all non-null) with text results."""
    params = b"".join(INT32.pack(len(encoded)) + encoded for encoded in (v.encode() for v in values))
    body = cstr(portal) + cstr(statement) + INT16.pack(0) + INT16.pack(len(values)) + params + INT16.pack(0)
    return frame(b"B", body)


def execute(portal: str, max_rows: int = 0) -> bytes:
    return frame(b"E", cstr(portal) + INT32.pack(max_rows))


def split_bind(msg: bytes) -> tuple[str, str, int]:
    """Return (portal, statement, offset of the rest) of a Bind message."""
    portal, pos = read_cstr(msg, 5)
    statement, pos = read_cstr(msg, pos)
    return portal, statement, pos


def rename_bind(msg: bytes, portal: str, statement: str, rest_at: int) -> bytes:
    """A Bind with its statement name replaced; the parameters are copied once, untouched."""
    head = cstr(portal) + cstr(statement)
    return b"B" + UINT32.pack(len(head) + len(msg) - rest_at + 4) + head + msg[rest_at:]


def parse_target(msg: bytes) -> tuple[int, str]:
    """Describe and Close messages: (kind 'S' or 'P' as int, name)."""
    if len(msg) < 6:
        raise FramingError("Describe/Close without a target kind")
    kind = msg[5]
    if kind not in (ord("S"), ord("P")):
        raise FramingError(f"Describe/Close target kind must be 'S' or 'P', not {chr(kind)!r}")
    name, _ = read_cstr(msg, 6)
    return kind, name


def describe(kind: bytes, name: str) -> bytes:
    return frame(b"D", kind + cstr(name))


def close(kind: bytes, name: str) -> bytes:
    return frame(b"C", kind + cstr(name))


def password_message(payload: bytes) -> bytes:
    return frame(b"p", payload)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", cstr(mechanism) + INT32.pack(len(data)) + data)


def parse_sasl_initial_response(msg: bytes) -> tuple[str, bytes]:
    mechanism, pos = read_cstr(msg, 5)
    if len(msg) < pos + 4:
        raise FramingError("SASLInitialResponse too short")
    (length,) = INT32.unpack_from(msg, pos)
    data = msg[pos + 4 :]
    if length != -1 and length != len(data):
        raise FramingError("SASLInitialResponse length does not match its data")
    return mechanism, bytes(data)
