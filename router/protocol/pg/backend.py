"""Backend messages: those a server sends, which the router also sends to its own clients.

Builders produce exact bytes; parsers decode the few control messages the router must read
(authentication requests, ParameterStatus, BackendKeyData, ErrorResponse). Rows and other
pass-through traffic never come here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from router.protocol.pg.framing import INT16, INT32, UINT32, FramingError, cstr, frame, read_cstr

# Authentication request codes (the int32 after the 'R' header).
AUTH_OK: Final = 0
AUTH_CLEARTEXT: Final = 3
AUTH_MD5: Final = 5
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12

TX_IDLE: Final = ord("I")
TX_IN_TRANSACTION: Final = ord("T")
TX_FAILED: Final = ord("E")

READY_IDLE: Final = b"Z\x00\x00\x00\x05I"
PARSE_COMPLETE: Final = b"1\x00\x00\x00\x04"
BIND_COMPLETE: Final = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE: Final = b"3\x00\x00\x00\x04"
NO_DATA: Final = b"n\x00\x00\x00\x04"


def authentication_ok() -> bytes:
    return frame(b"R", INT32.pack(AUTH_OK))


def authentication_md5(salt: bytes) -> bytes:
    return frame(b"R", INT32.pack(AUTH_MD5) + salt)


def authentication_cleartext() -> bytes:
    return frame(b"R", INT32.pack(AUTH_CLEARTEXT))


def authentication_sasl(mechanisms: list[str]) -> bytes:
    body = INT32.pack(AUTH_SASL) + b"".join(cstr(m) for m in mechanisms) + b"\x00"
    return frame(b"R", body)


def authentication_sasl_continue(data: bytes) -> bytes:
    return frame(b"R", INT32.pack(AUTH_SASL_CONTINUE) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    return frame(b"R", INT32.pack(AUTH_SASL_FINAL) + data)


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", cstr(name) + cstr(value))


def backend_key_data(process_id: int, secret_key: bytes) -> bytes:
    return frame(b"K", INT32.pack(process_id) + secret_key)


def ready_for_query(status: int = TX_IDLE) -> bytes:
    return frame(b"Z", bytes((status,)))


# Type OIDs of the columns the router's own result sets use (pg_type).
BOOL_OID: Final = 16
INT8_OID: Final = 20
TEXT_OID: Final = 25
FLOAT8_OID: Final = 701
# pg_type.typlen of those types (-1: variable length).
_TYPE_LENGTHS: Final = {BOOL_OID: 1, INT8_OID: 8, TEXT_OID: -1, FLOAT8_OID: 8}


def row_description(columns: Sequence[tuple[str, int]]) -> bytes:
    """A RowDescription of (name, type oid) columns, all in text format, from no table."""
    body = bytearray(INT16.pack(len(columns)))
    for name, oid in columns:
        body += cstr(name) + bytes(6) + UINT32.pack(oid) + INT16.pack(_TYPE_LENGTHS.get(oid, -1))
        body += INT32.pack(-1) + INT16.pack(0)
    return frame(b"T", bytes(body))


def data_row(values: Sequence[bytes | None]) -> bytes:
    """A DataRow of text-format values (None: NULL)."""
    body = bytearray(INT16.pack(len(values)))
    for value in values:
        if value is None:
            body += INT32.pack(-1)
        else:
            body += INT32.pack(len(value)) + value
    return frame(b"D", bytes(body))


def show_result(name: str, value: str) -> bytes:
    """The whole response to a one-value SHOW (a text column named `name`), ending ready and idle."""
    head = row_description([(name, TEXT_OID)]) + data_row([value.encode()])
    return head + command_complete("SHOW") + READY_IDLE


def command_complete(tag: str) -> bytes:
    return frame(b"C", cstr(tag))


def negotiate_protocol_version(minor: int, unsupported: tuple[str, ...]) -> bytes:
    body = INT32.pack(minor) + INT32.pack(len(unsupported)) + b"".join(cstr(o) for o in unsupported)
    return frame(b"v", body)


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    notice: bool = False,
) -> bytes:
    """An ErrorResponse (or NoticeResponse) with the fields clients display."""
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate), b"M" + cstr(message)]
    if detail:
        fields.append(b"D" + cstr(detail))
    if hint:
        fields.append(b"H" + cstr(hint))
    return frame(b"N" if notice else b"E", b"".join(fields) + b"\x00")


@dataclass(frozen=True)
class ServerError:
    """The fields of an ErrorResponse/NoticeResponse, by their one-letter codes."""

    fields: dict[str, str]

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "XX000")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V", self.fields.get("S", "ERROR"))


def parse_error_fields(body: bytes) -> ServerError:
    """Decode the body (after the header) of an ErrorResponse or NoticeResponse."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = read_cstr(body, pos + 1)
        fields[code] = value
    return ServerError(fields)


def is_fatal_error(msg: bytes | memoryview) -> bool:
    """Whether an ErrorResponse (whole message) has severity FATAL or PANIC: the server is ending
    the session. The non-localized severity field (V) is checked when present, else S."""
    fields = parse_error_fields(bytes(msg[5:])).fields
    return fields.get("V", fields.get("S", "")) in ("FATAL", "PANIC")


def naming_server(msg: bytes | memoryview, server: str) -> bytes:
    """An ErrorResponse (whole message) with `server` named in its DETAIL, every other field kept:
    a client of the router cannot otherwise tell which server ended its session. The message and
    SQLSTATE stay the server's own: drivers and applications match on them."""
    fields = parse_error_fields(bytes(msg[5:])).fields
    sent_by = f"Sent by {server}."
    fields["D"] = f"{fields['D']}\n{sent_by}" if fields.get("D") else sent_by
    body = b"".join(code.encode() + cstr(value) for code, value in fields.items())
    return frame(b"E", body + b"\x00")


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = read_cstr(body, 0)
    value, _ = read_cstr(body, pos)
    return name, value


def parse_data_row(body: bytes) -> list[str | None]:
    """A DataRow in text format (the router's own internal queries only; client rows are never
    decoded)."""
    if len(body) < 2:
        raise FramingError("DataRow too short")
    (count,) = INT16.unpack_from(body, 0)
    pos = 2
    values: list[str | None] = []
    for _ in range(count):
        if len(body) < pos + 4:
            raise FramingError("DataRow truncated")
        (length,) = INT32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        if len(body) < pos + length:
            raise FramingError("DataRow truncated")
        values.append(body[pos : pos + length].decode("utf-8", "replace"))
        pos += length
    return values


def parse_backend_key_data(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8:
        raise FramingError("BackendKeyData too short")
    (pid,) = INT32.unpack_from(body, 0)
    return pid, bytes(body[4:])


def parse_authentication(body: bytes) -> tuple[int, bytes]:
    """Return (request code, payload) of an Authentication message body."""
    if len(body) < 4:
        raise FramingError("Authentication message too short")
    (code,) = UINT32.unpack_from(body, 0)
    return int(code), bytes(body[4:])


def parse_sasl_mechanisms(payload: bytes) -> list[str]:
    return [m.decode() for m in payload.split(b"\x00") if m]
