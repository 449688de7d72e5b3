"""Large results under back-pressure: thousands of queries with rows of 1 to 16 MiB, through clients
that read fast, slowly and in bursts, in the simple and extended protocols and COPY TO STDOUT, with
more clients than server connections. None may stall, and every byte must arrive as sent.

The clients speak the wire protocol on raw sockets with a small receive buffer, so a client that
reads slowly backs the router's output up after a few dozen kilobytes: the router pauses and
resumes reading from its server connections many times per query, and hands those connections
from client to client between transactions. Each row is made on the server (repeat()) and checked
on the client by length and SHA-256 against what it should be, without being kept whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from router.protocol.pg import backend as be
from router.protocol.pg import frontend as fe
from router.protocol.pg.auth import ScramClientExchange
from router.protocol.pg.startup import build_startup_message

from .conftest import RouterFactory, url

MIB = 1 << 20
CLIENTS = 6  # two fast, two slow, two bursty readers
QUERIES_PER_CLIENT = 334  # 2,004 queries in all
POOL_SIZE = 2  # fewer server connections than clients: they change hands between transactions
QUERY_DEADLINE = 30.0  # seconds for one query's whole answer; past it, the query has stalled
RECEIVE_BUFFER = 16 * 1024  # the clients' SO_RCVBUF: a slow client backs the router up quickly
CHUNK = 64 * 1024
MODES = ("simple", "extended", "copy")


def row_size(query: int) -> int:
    """1 MiB mostly, with 2, 4 and 16 MiB rows among them."""
    if query % 40 == 39:
        return 16 * MIB
    if query % 10 == 9:
        return 4 * MIB
    if query % 4 == 3:
        return 2 * MIB
    return MIB


class Stalled(AssertionError):
    pass


@dataclass
class Expected:
    """Digests of the rows' common prefixes (filler repeated), made once per filler and length."""

    prefixes: dict[tuple[str, int], hashlib._Hash] = field(default_factory=dict)

    def digest(self, filler: str, size: int, tag: str, suffix: bytes) -> bytes:
        key = (filler, size - len(tag))
        prefix = self.prefixes.get(key)
        if prefix is None:
            prefix = self.prefixes[key] = hashlib.sha256(filler.encode() * key[1])
        whole = prefix.copy()
        whole.update(tag.encode() + suffix)
        return whole.digest()


Pace = Callable[[int], Awaitable[None]]  # called after each chunk read, with the chunk's size


async def read_fast(_size: int) -> None:
    return None


async def read_slowly(_size: int) -> None:
    # Elapsed time on purpose: a slow reader is one that lets time pass between reads.
    await asyncio.sleep(0.0005)


def read_in_bursts(seed: int) -> Pace:
    rng = random.Random(seed)
    state = {"left": 0}

    async def pace(size: int) -> None:
        state["left"] -= size
        if state["left"] <= 0:
            # Elapsed time on purpose: the pause between bursts is what fills the router's buffers.
            await asyncio.sleep(rng.uniform(0.005, 0.03))
            state["left"] = rng.randrange(256 * 1024, 4 * MIB)

    return pace


class RawClient:
    """A minimal PostgreSQL client on a socket with a small receive buffer, reading at its own pace."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pace: Pace) -> None:
        self.reader = reader
        self.writer = writer
        self.pace = pace

    @classmethod
    async def connect(cls, port: int, user: str, password: str, database: str, pace: Pace) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
        client = cls(reader, writer, pace)
        await client._login(user, password, database)
        return client

    async def _login(self, user: str, password: str, database: str) -> None:
        self.writer.write(build_startup_message({"user": user, "database": database}))
        scram: ScramClientExchange | None = None
        while True:
            mtype, body = await self._message()
            if mtype == ord("R"):
                code, payload = be.parse_authentication(body)
                if code == be.AUTH_SASL:
                    scram = ScramClientExchange(be.parse_sasl_mechanisms(payload), user, password)
                    self.writer.write(fe.sasl_initial_response("SCRAM-SHA-256", scram.first()))
                elif code == be.AUTH_SASL_CONTINUE and scram is not None:
                    self.writer.write(fe.password_message(scram.final(payload)))
                elif code == be.AUTH_SASL_FINAL and scram is not None:
                    scram.verify(payload)
                elif code != be.AUTH_OK:
                    raise AssertionError(f"unexpected authentication request {code}")
            elif mtype == ord("E"):
                raise AssertionError(f"login failed: {be.parse_error_fields(body).message}")
            elif mtype == ord("Z"):
                return

    async def _message(self) -> tuple[int, bytes]:
        header = await self.reader.readexactly(5)
        (length,) = struct.unpack_from("!I", header, 1)
        return header[0], await self.reader.readexactly(length - 4)

    async def _stream(self, size: int, digest: hashlib._Hash) -> None:
        """Read `size` bytes into `digest` at the client's pace, never holding them whole."""
        left = size
        while left:
            chunk = await self.reader.read(min(left, CHUNK))
            if not chunk:
                raise AssertionError("the router closed the connection in the middle of a row")
            digest.update(chunk)
            left -= len(chunk)
            await self.pace(len(chunk))

    async def run(self, mode: str, filler: str, size: int, tag: str) -> tuple[int, bytes]:
        """Send one query for a row of `size` bytes; return the row's length and SHA-256 as received
        (for COPY, with its line's newline)."""
        if mode == "simple":
            self.writer.write(fe.query(f"SELECT repeat('{filler}', {size - len(tag)}) || '{tag}'"))
        elif mode == "extended":
            self.writer.write(
                fe.build_parse("", "SELECT repeat($1::text, $2::int) || $3::text", b"\x00\x00")
                + fe.bind("", "", (filler, str(size - len(tag)), tag))
                + fe.describe(b"P", "")
                + fe.execute("")
                + fe.SYNC
            )
        else:
            self.writer.write(fe.query(f"COPY (SELECT repeat('{filler}', {size - len(tag)}) || '{tag}') TO STDOUT"))
        received: tuple[int, bytes] | None = None
        while True:
            header = await self.reader.readexactly(5)
            mtype = header[0]
            (length,) = struct.unpack_from("!I", header, 1)
            digest = hashlib.sha256()
            if mtype == ord("D"):
                count, column = struct.unpack("!hi", await self.reader.readexactly(6))
                assert count == 1 and length == 4 + 6 + column
                await self._stream(column, digest)
                received = (column, digest.digest())
            elif mtype == ord("d"):
                await self._stream(length - 4, digest)
                received = (length - 4, digest.digest())
            else:
                body = await self.reader.readexactly(length - 4)
                if mtype == ord("E"):
                    raise AssertionError(f"{mode} query failed: {be.parse_error_fields(body).message}")
                if mtype == ord("Z"):
                    assert received is not None, f"{mode} query answered without a row"
                    return received

    def close(self) -> None:
        self.writer.write(b"X\x00\x00\x00\x04")
        self.writer.close()


@dataclass
class Tally:
    queries: int = 0
    rows_bytes: int = 0
    by_mode: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))


async def _client(index: int, pace: Pace, port: int, login: tuple[str, str, str], tally: Tally) -> None:
    expected = Expected()
    filler = chr(ord("a") + index)
    client = await RawClient.connect(port, *login, pace)
    try:
        for query in range(QUERIES_PER_CLIENT):
            mode = MODES[(query + index) % len(MODES)]
            size = row_size(query)
            tag = f"<{index}.{query}>"
            try:
                async with asyncio.timeout(QUERY_DEADLINE):
                    length, digest = await client.run(mode, filler, size, tag)
            except TimeoutError:
                raise Stalled(
                    f"client {index} stalled on query {query} ({mode}, {size // MIB} MiB) "
                    f"after {tally.queries} queries in all"
                ) from None
            suffix = b"\n" if mode == "copy" else b""
            assert length == size + len(suffix), (index, query, mode, length)
            assert digest == expected.digest(filler, size, tag, suffix), (index, query, mode, "bytes differ")
            tally.queries += 1
            tally.rows_bytes += length
            tally.by_mode[mode] += 1
    finally:
        client.close()


def test_large_results_never_stall_and_arrive_intact(make_router: RouterFactory) -> None:
    # Clients wait for a server while others read 16 MiB slowly: a stall, not that wait, must fail the test.
    router = make_router(pool={"size": POOL_SIZE, "wait_timeout": 2 * QUERY_DEADLINE})
    address = urlsplit(url(router, "acme"))
    login = (unquote(address.username or ""), unquote(address.password or ""), address.path.lstrip("/"))
    paces: list[Pace] = [read_fast, read_fast, read_slowly, read_slowly, read_in_bursts(1), read_in_bursts(2)]
    tally = Tally()

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for index, pace in enumerate(paces):
                group.create_task(_client(index, pace, router.port, login, tally))

    started = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - started
    print(
        f"\n{tally.queries} queries, 0 stalls, {tally.rows_bytes / MIB:.0f} MiB in {elapsed:.1f} s "
        f"({', '.join(f'{mode} {count}' for mode, count in tally.by_mode.items())})"
    )
    assert tally.queries == CLIENTS * QUERIES_PER_CLIENT >= 2000
    assert min(tally.by_mode.values()) > 600
