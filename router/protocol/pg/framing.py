"""Message framing: type bytes, length headers and the size limits the router enforces.

A regular message is one type byte, an int32 length that counts itself but not the type byte, then the
body. Startup-phase packets have no type byte. This module only names the constants and reads headers;
it never decodes bodies (pass-through traffic is forwarded by length, never parsed).
"""

from __future__ import annotations

import struct
from typing import Final

# Defined with the router's other errors; part of this module's interface, as its callers catch
# `framing.FramingError`.
from router.errors import FramingError as FramingError

INT32: Final = struct.Struct("!i")
UINT32: Final = struct.Struct("!I")
INT16: Final = struct.Struct("!h")

# PostgreSQL itself refuses allocations of 1 GiB or more; so do we.
MAX_MESSAGE_LENGTH: Final = (1 << 30) - 1
# The server refuses startup packets over 10 000 bytes (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_LENGTH: Final = 10_000

# Frontend message types (as ints: indexing bytes yields ints).
QUERY: Final = ord("Q")
PARSE: Final = ord("P")
BIND: Final = ord("B")
DESCRIBE: Final = ord("D")
EXECUTE: Final = ord("E")
CLOSE: Final = ord("C")
SYNC: Final = ord("S")
FLUSH: Final = ord("H")
TERMINATE: Final = ord("X")
COPY_DATA: Final = ord("d")
COPY_DONE: Final = ord("c")
COPY_FAIL: Final = ord("f")
FUNCTION_CALL: Final = ord("F")
PASSWORD: Final = ord("p")

# Backend message types.
AUTHENTICATION: Final = ord("R")
PARAMETER_STATUS: Final = ord("S")
BACKEND_KEY_DATA: Final = ord("K")
READY_FOR_QUERY: Final = ord("Z")
ERROR_RESPONSE: Final = ord("E")
NOTICE_RESPONSE: Final = ord("N")
NOTIFICATION_RESPONSE: Final = ord("A")
PARSE_COMPLETE: Final = ord("1")
BIND_COMPLETE: Final = ord("2")
CLOSE_COMPLETE: Final = ord("3")
NO_DATA: Final = ord("n")
PARAMETER_DESCRIPTION: Final = ord("t")
ROW_DESCRIPTION: Final = ord("T")
DATA_ROW: Final = ord("D")
COMMAND_COMPLETE: Final = ord("C")
EMPTY_QUERY: Final = ord("I")
PORTAL_SUSPENDED: Final = ord("s")
COPY_IN_RESPONSE: Final = ord("G")
COPY_OUT_RESPONSE: Final = ord("H")
COPY_BOTH_RESPONSE: Final = ord("W")
FUNCTION_RESULT: Final = ord("V")
NEGOTIATE_PROTOCOL_VERSION: Final = ord("v")


def length_at(buf: bytes, pos: int) -> int:
    """The unsigned 32-bit big-endian length at `pos`. Compiled (router/native.py), four byte reads
    of bytes cost less than a struct call and the tuple it returns."""
    return (buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]


def read_header(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """Return (type, total size including the type byte) of the message at `pos`, or None if the
    header is not complete yet. Raises FramingError for an impossible length."""
    if len(buf) - pos < 5:
        return None
    mtype = buf[pos]
    if isinstance(buf, bytes):
        length = length_at(buf, pos + 1)
    else:
        (length,) = UINT32.unpack_from(buf, pos + 1)
    if length < 4 or length > MAX_MESSAGE_LENGTH:
        raise FramingError(f"invalid message length {length} for message type {chr(mtype)!r}")
    return mtype, length + 1


def frame(mtype: bytes, body: bytes) -> bytes:
    """Build one regular message."""
    return mtype + UINT32.pack(len(body) + 4) + body


def cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


def read_cstr(buf: bytes, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at pos; return it and the position after the NUL."""
    end = buf.find(b"\x00", pos)
    if end < 0:
        raise FramingError("string is not NUL-terminated")
    return buf[pos:end].decode("utf-8", errors="replace"), end + 1
