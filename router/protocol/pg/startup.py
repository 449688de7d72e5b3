"""Startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest and CancelRequest.

These packets carry no type byte: an int32 length, then an int32 code that says which packet it is.
`parse_startup_packet` turns one complete packet into a value; builders do the reverse for the
router's own connections to servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.protocol.pg.framing import INT32, MAX_STARTUP_LENGTH, UINT32, FramingError

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
# What separates words in `options`: the server splits on C isspace() (ASCII), not on Unicode spaces.
_SPACES = frozenset(" \t\n\v\f\r")


@dataclass(frozen=True)
class StartupMessage:
    major: int
    minor: int
    parameters: dict[str, str] = field(default_factory=dict)
    # Protocol extension options ("_pq_.*") the client asked for; we support none.
    extensions: tuple[str, ...] = ()


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    process_id: int
    secret_key: bytes


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def startup_packet_length(buf: bytes | bytearray) -> int | None:
    """Total length of the startup packet at the start of buf, or None if not known yet."""
    if len(buf) < 4:
        return None
    (length,) = UINT32.unpack_from(buf, 0)
    if length < 8 or length > MAX_STARTUP_LENGTH:
        raise FramingError(f"invalid startup packet length {length}")
    return int(length)


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode one complete startup-phase packet (length prefix included)."""
    if len(packet) < 8:
        raise FramingError("startup packet too short")
    (code,) = UINT32.unpack_from(packet, 4)
    if code == SSL_REQUEST_CODE and len(packet) == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and len(packet) == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(packet) < 16 or len(packet) > 8 + 4 + 256:
            raise FramingError("malformed CancelRequest")
        (pid,) = INT32.unpack_from(packet, 8)
        return CancelRequest(pid, bytes(packet[12:]))
    major, minor = code >> 16, code & 0xFFFF
    body = packet[8:]
    if not body.endswith(b"\x00"):
        raise FramingError("startup parameters are not NUL-terminated")
    parts = body[:-1].split(b"\x00")
    # The list ends with an empty name, like PostgreSQL's "expected terminator as last byte".
    if parts.pop() != b"":
        raise FramingError("startup parameters lack their terminator")
    if len(parts) % 2:
        raise FramingError("startup parameters are not name/value pairs")
    params: dict[str, str] = {}
    extensions: list[str] = []
    for i in range(0, len(parts), 2):
        try:
            name, value = parts[i].decode(), parts[i + 1].decode()
        except UnicodeDecodeError as exc:
            raise FramingError("startup parameters are not valid UTF-8") from exc
        if not name:
            raise FramingError("empty startup parameter name")
        if name.startswith("_pq_."):
            extensions.append(name)
        else:
            params[name] = value
    return StartupMessage(major, minor, params, tuple(extensions))


def build_startup_message(parameters: dict[str, str]) -> bytes:
    body = UINT32.pack(PROTOCOL_3_0)
    for name, value in parameters.items():
        body += name.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return UINT32.pack(len(body) + 4) + body


def build_cancel_request(process_id: int, secret_key: bytes) -> bytes:
    body = UINT32.pack(CANCEL_REQUEST_CODE) + INT32.pack(process_id) + secret_key
    return UINT32.pack(len(body) + 4) + body


def parse_options(options: str) -> dict[str, str]:
    """Parse the `options` startup parameter (`-c name=value --name=value`), honouring backslash
    escapes of spaces as libpq does."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in _SPACES:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    settings: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            assignment = words[i + 1]
            i += 2
        elif word.startswith("-c") or word.startswith("--"):
            assignment = word[2:]
            i += 1
        else:
            i += 1
            continue
        name, sep, value = assignment.partition("=")
        if sep:
            settings[name.replace("-", "_").lower()] = value
    return settings
