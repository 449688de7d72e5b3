"""Server connections that break are dropped and replaced; a server that dies under a query ends it
with an error, never a hang; notices pass through; GSSAPI encryption requests are declined."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, RouterFactory, url


def _terminate_router_backends(deployment: Deployment, shard: str) -> int:
    out = deployment.env.shards[shard].execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE usename = 'tenant_router' AND pid <> pg_backend_pid() AND datname = 'app'"
    )
    return int(out)


def test_broken_idle_server_connections_are_replaced(make_router: RouterFactory, deployment: Deployment) -> None:
    router = make_router(pool={"size": 2})
    shard = deployment.placement["acme"]
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        before = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert _terminate_router_backends(deployment, shard) >= 1
        wait_until(
            lambda: sum(p.total for p in router.router.iter_pools() if p.key.port == deployment.shard_port("acme")),
            "the router to drop its terminated server connections",
            within=5,
            until=lambda n: n == 0,
        )
        # The next transactions run on fresh server connections; the client never notices.
        for _ in range(5):
            after = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert after != before
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("acme",)


def test_server_dying_under_a_query_gives_an_error_not_a_hang(router: RouterThread, deployment: Deployment) -> None:
    shard = deployment.placement["globex"]
    conn = psycopg.connect(url(router, "globex"), autocommit=True)
    killer = threading.Timer(0.5, _terminate_router_backends, (deployment, shard))
    killer.start()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        conn.execute("SELECT pg_sleep(30)")
    assert time.monotonic() - started < 5
    # The server's own FATAL (57P01) reaches the client verbatim, then the router closes the session.
    assert info.value.sqlstate in ("57P01", "08006")
    conn.close()
    with psycopg.connect(url(router, "globex")) as fresh:  # service goes on
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_notices_pass_through(router: RouterThread) -> None:
    notices: list[str] = []
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("DO $$BEGIN RAISE NOTICE 'hello from %', current_setting('app.tenant_id'); END$$")
    assert notices == ["hello from acme"]


def test_server_errors_reach_the_client_verbatim(router: RouterThread) -> None:
    with psycopg.connect(url(router, "acme"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable) as info:
            conn.execute("SELECT * FROM no_such_table")
        assert info.value.sqlstate == "42P01"
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_gssenc_request_is_declined(router: RouterThread) -> None:
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(struct.pack("!II", 8, 80877104))
        assert sock.recv(1) == b"N"
        body = struct.pack("!I", 3 << 16) + b"user\x00app.acme\x00\x00"
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        reply = sock.recv(1024)
        assert reply[0:1] == b"R"  # the login carries on: an authentication request


def test_serve_refuses_an_invalid_config_with_the_check_messages(tmp_path: Path, deployment: Deployment) -> None:
    config = yaml.safe_load((deployment.directory / "router.yaml").read_text())
    config["pool"]["size"] = 0
    config["tenant"]["resolution"] = ["user", "user"]
    config["shards_file"] = str(deployment.directory / "shards.yaml")
    bad = tmp_path / "router.yaml"
    bad.write_text(yaml.safe_dump(config))
    outputs = []
    for command in ("check", "serve"):
        result = subprocess.run(
            [sys.executable, "-m", "router.cli", "--config", str(bad), command],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        outputs.append(result.stderr.replace("nothing was started", ""))
        assert f"{bad}: pool.size:" in result.stderr
        assert f"{bad}: tenant.resolution:" in result.stderr
    assert outputs[0] == outputs[1]


def test_a_server_that_speaks_garbage_is_unavailable_with_its_name() -> None:
    """A server whose first answer is not PostgreSQL's (a wrong port, say): the connection fails as
    BackendUnavailable (08006) naming the server, like one that is down."""
    import asyncio

    from router.errors import BackendUnavailable
    from router.net.server import open_server_connection

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"R\x00\x00\x00\x02")  # an authentication message shorter than its header
            time.sleep(0.5)

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()

    async def connect() -> None:
        await open_server_connection(
            "127.0.0.1", port, "db", "user", None, label="shard_x/primary", connect_timeout=5, on_closed=lambda c: None
        )

    try:
        with pytest.raises(BackendUnavailable, match="shard_x/primary: server sent garbage") as info:
            asyncio.run(connect())
        assert info.value.sqlstate == "08006"
    finally:
        listener.close()
        thread.join(timeout=2)
