"""Every bad input and fault gets a clear error with a fitting SQLSTATE, fast, and the router keeps
serving everyone else."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from router.catalog.store import CatalogStore
from router.protocol.pg.backend import parse_error_fields
from router.protocol.pg.startup import build_startup_message
from router.testing.pgcluster import free_port
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, RouterFactory, url


def _read_error(sock: socket.socket) -> dict[str, str]:
    """Read messages until an ErrorResponse; return its fields."""
    sock.settimeout(10)
    buf = b""
    while True:
        while len(buf) >= 5:
            mtype = buf[0:1]
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                break
            body, buf = buf[5 : 1 + length], buf[1 + length :]
            if mtype == b"E":
                return parse_error_fields(body).fields
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed without an ErrorResponse")
        buf += chunk


def _raw(router: RouterThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", router.port), timeout=10)


def _still_serving(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_unknown_tenant(router: RouterThread) -> None:
    with pytest.raises(psycopg.OperationalError, match='unknown tenant "nobody"') as info:
        psycopg.connect(url(router, "nobody"))
    assert "tenant-router tenants add nobody" in str(info.value)
    _still_serving(router)


def test_unknown_tenant_sqlstate(router: RouterThread) -> None:
    with _raw(router) as sock:
        sock.sendall(build_startup_message({"user": "app.nobody", "database": "app"}))
        # SCRAM first; the tenant is checked after authentication, so drive a trust-free path:
        # a wrong password is reported before the tenant is even looked up.
        fields = _read_error_after_auth(sock)
    assert fields["C"] in ("28P01", "3D000")


def _read_error_after_auth(sock: socket.socket) -> dict[str, str]:
    # The router asks for SCRAM; answering with garbage must give a clean auth error.
    sock.recv(1024)
    sock.sendall(b"p" + struct.pack("!I", 4 + 14 + 4 + 5) + b"SCRAM-SHA-256\x00" + struct.pack("!i", 5) + b"junk!")
    return _read_error(sock)


def test_suspended_tenant(router: RouterThread) -> None:
    with pytest.raises(psycopg.OperationalError, match='tenant "hooli" is suspended'):
        psycopg.connect(url(router, "hooli"))
    _still_serving(router)


def test_wrong_password(router: RouterThread) -> None:
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "app"'):
        psycopg.connect(url(router, "acme", password="nope"))
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "ghost"'):
        psycopg.connect(url(router, "acme", user="ghost"))
    _still_serving(router)


def test_missing_tenant_for_untrusted_user(router: RouterThread) -> None:
    with pytest.raises(psycopg.OperationalError, match='no tenant given for user "reporting"'):
        psycopg.connect(url(router, None, user="reporting", password="reporting-secret"))


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack("!I", 3),  # length too small
        struct.pack("!I", 1_000_000) + b"x" * 100,  # length beyond the startup limit
        struct.pack("!II", 12, 196608) + b"user",  # parameters not terminated
        struct.pack("!II", 18, 196608) + b"user\x00ab\x00c\x00",  # odd number of strings
    ],
)
def test_malformed_startup_packet(router: RouterThread, packet: bytes) -> None:
    with _raw(router) as sock:
        sock.sendall(packet)
        fields = _read_error(sock)
    assert fields["C"] == "08P01"
    assert "startup packet" in fields["M"]
    _still_serving(router)


def test_unsupported_protocol_version(router: RouterThread) -> None:
    with _raw(router) as sock:
        body = struct.pack("!I", 2 << 16) + b"user\x00app.acme\x00\x00"
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        fields = _read_error(sock)
    assert fields["C"] == "0A000"
    assert "unsupported frontend protocol 2.0" in fields["M"]


def test_newer_minor_version_is_negotiated_down(router: RouterThread) -> None:
    with _raw(router) as sock:
        body = struct.pack("!I", (3 << 16) | 2) + b"user\x00app.acme\x00_pq_.something\x00on\x00\x00"
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        sock.settimeout(10)
        reply = sock.recv(4096)
    assert reply[0:1] == b"v"
    (minor, count) = struct.unpack("!ii", reply[5:13])
    assert (minor, count) == (0, 1)
    assert b"_pq_.something" in reply


def test_ssl_request_is_declined_then_login_works(router: RouterThread) -> None:
    # sslmode=prefer sends SSLRequest first; 'N' makes libpq continue in plain text.
    with psycopg.connect(url(router, "acme") + "?sslmode=prefer") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_protocol_violation_after_login(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme")) as conn:
        fd = conn.pgconn.socket
        sock = socket.socket(fileno=socket.dup(fd))
        try:
            sock.sendall(b"\x07" + struct.pack("!I", 4))  # no such message type
            fields = _read_error(sock)
        finally:
            sock.close()
    assert fields["C"] == "08P01"
    assert "unexpected message type" in fields["M"]
    _still_serving(router)


def test_absurd_message_length_after_login(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme")) as conn:
        sock = socket.socket(fileno=socket.dup(conn.pgconn.socket))
        try:
            sock.sendall(b"Q" + struct.pack("!I", 2))
            fields = _read_error(sock)
        finally:
            sock.close()
    assert fields["C"] == "08P01"
    _still_serving(router)


def test_pool_exhausted_gives_53300_then_recovers(make_router: RouterFactory) -> None:
    router = make_router(pool={"size": 1, "wait_timeout": 0.5})
    holder = psycopg.connect(url(router, "acme"))
    holder.execute("SELECT 1")  # transaction open: the only server connection is taken
    try:
        with psycopg.connect(url(router, "acme"), autocommit=True) as waiter:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.TooManyConnections, match=r"became free within 0\.5s"):
                waiter.execute("SELECT 2")
            assert time.monotonic() - started < 3
            holder.commit()
            assert waiter.execute("SELECT 3").fetchone() == (3,)  # the same client carries on
    finally:
        holder.close()


@pytest.fixture
def unreachable_shards(deployment: Deployment) -> Iterator[dict[str, tuple[str, int]]]:
    """shard_down: a closed port; shard_blackhole: accepts TCP and never answers."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(100)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        blackhole.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(blackhole.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield {"shard_down": ("127.0.0.1", free_port()), "shard_blackhole": ("127.0.0.1", blackhole.getsockname()[1])}
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    blackhole.close()


def test_shard_down_gives_a_fast_clear_error(
    make_router: RouterFactory, deployment: Deployment, unreachable_shards: dict[str, tuple[str, int]]
) -> None:
    router = make_router(extra_shards=unreachable_shards, pool={"connect_timeout": 1.0})

    async def pin() -> None:
        async with CatalogStore(deployment.env.catalog_dsn()) as store:
            for tenant, shard in (("downco", "shard_down"), ("holeco", "shard_blackhole")):
                if await store.get(tenant) is None:
                    await store.add(tenant, "shared", shard=shard)
                else:
                    await store.set_shard(tenant, shard)

    asyncio.run(pin())
    _wait_for_tenant(router, "holeco")
    for tenant, shard, limit in (("downco", "shard_down", 1.0), ("holeco", "shard_blackhole", 2.5)):
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(url(router, tenant), connect_timeout=10)
        elapsed = time.monotonic() - started
        assert f"shard {shard}" in str(info.value)
        assert elapsed < limit, f"{tenant}: error took {elapsed:.1f}s"
        # libpq hides the SQLSTATE of login errors; asyncpg shows it.
        with pytest.raises(asyncpg.ConnectionFailureError, match=f"shard {shard}"):
            asyncio.run(asyncpg.connect(url(router, tenant), timeout=10))
    _still_serving(router)


def _wait_for_tenant(router: RouterThread, tenant: str, timeout: float = 5) -> None:
    wait_until(lambda: router.router.catalog.get(tenant), f"the router to see tenant {tenant}", within=timeout)


def test_clients_of_other_shards_are_unaffected_by_a_dead_shard(
    make_router: RouterFactory, deployment: Deployment, unreachable_shards: dict[str, tuple[str, int]]
) -> None:
    router = make_router(extra_shards=unreachable_shards, pool={"connect_timeout": 2.0})
    _wait_for_tenant(router, "acme")
    results: list[object] = []

    def blocked() -> None:
        try:
            psycopg.connect(url(router, "holeco"), connect_timeout=10)
        except psycopg.OperationalError as exc:
            results.append(exc)

    async def pin() -> None:
        async with CatalogStore(deployment.env.catalog_dsn()) as store:
            if await store.get("holeco") is None:
                await store.add("holeco", "shared", shard="shard_blackhole")

    asyncio.run(pin())
    _wait_for_tenant(router, "holeco")
    threads = [threading.Thread(target=blocked) for _ in range(5)]
    for t in threads:
        t.start()
    started = time.monotonic()
    for _ in range(20):
        _still_serving(router)
    assert time.monotonic() - started < 2.0  # while 5 logins hang on the dead shard
    for t in threads:
        t.join()
    assert len(results) == 5


@pytest.mark.parametrize("option", ["-c role=postgres", "-c session_authorization=postgres"])
def test_startup_options_that_change_the_server_identity_are_refused(router: RouterThread, option: str) -> None:
    async def attempt() -> str:
        with pytest.raises(asyncpg.PostgresError) as info:
            await asyncpg.connect(url(router, "acme"), server_settings={"options": option}, ssl=False)
        return str(info.value.sqlstate)

    assert asyncio.run(attempt()) == "28000"
    _still_serving(router)
