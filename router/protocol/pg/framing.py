"""Message framing: type bytes, length headers and the size limits the router enforces.

A regular message is one type byte, an int32 length that counts itself but not the type byte, then the
body. Startup-phase packets have no type byte. This module only names the constants and reads headers;
it never decodes bodies (pass-through traffic is forwarded by length, never parsed).
"""

from __future__ import annotations

import struct

INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")
INT16 = struct.Struct("!h")

# PostgreSQL itself refuses allocations of 1 GiB or more; so do we.
MAX_MESSAGE_LENGTH = (1 << 30) - 1
# The server refuses startup packets over 10 000 bytes (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_LENGTH = 10_000

# Frontend message types (as ints: indexing bytes yields ints).
QUERY = ord("Q")
PARSE = ord("P")
BIND = ord("B")
DESCRIBE = ord("D")
EXECUTE = ord("E")
CLOSE = ord("C")
SYNC = ord("S")
FLUSH = ord("H")
TERMINATE = ord("X")
COPY_DATA = ord("d")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")
FUNCTION_CALL = ord("F")
PASSWORD = ord("p")

# Backend message types.
AUTHENTICATION = ord("R")
PARAMETER_STATUS = ord("S")
BACKEND_KEY_DATA = ord("K")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
NOTIFICATION_RESPONSE = ord("A")
PARSE_COMPLETE = ord("1")
BIND_COMPLETE = ord("2")
CLOSE_COMPLETE = ord("3")
NO_DATA = ord("n")
PARAMETER_DESCRIPTION = ord("t")
ROW_DESCRIPTION = ord("T")
DATA_ROW = ord("D")
COMMAND_COMPLETE = ord("C")
EMPTY_QUERY = ord("I")
PORTAL_SUSPENDED = ord("s")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
FUNCTION_RESULT = ord("V")
NEGOTIATE_PROTOCOL_VERSION = ord("v")


class FramingError(ValueError):
    """The peer sent a header that cannot start a valid message."""


def read_header(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """Return (type, total size including the type byte) of the message at `pos`, or None if the
    header is not complete yet. Raises FramingError for an impossible length."""
    if len(buf) - pos < 5:
        return None
    mtype = buf[pos]
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
