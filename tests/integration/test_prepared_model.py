"""Property: whatever several clients do with prepared statements on ONE server connection (random
Parse/Bind/Describe/Execute/Close/Sync, errors mid-pipeline, transactions, savepoints, DDL a
rollback undoes, DEALLOCATE, DISCARD ALL, hand-overs), the router's record of the statements it has
prepared on that connection equals the server's own pg_prepared_statements, after every step."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.net.server import ServerConnection, ServerState
from router.protocol.pg import frontend as fe
from router.protocol.pg.framing import read_header
from router.protocol.pg.startup import build_startup_message
from router.testing.deploy import APP_USER, load, write_configs
from router.testing.routerthread import RouterThread

from .conftest import Deployment

TENANT = "initech"
# The server's own list, read on the connection itself (pg_prepared_statements is per session).
SERVER_NAMES_SQL = "SELECT name FROM pg_prepared_statements WHERE NOT from_sql"
CLIENTS = 3
TEXTS = ["SELECT 1", "SELECT $1::int + 1", "SELECT count(*) FROM pg_class", "SELECT * FROM model_t", "SELEC broken"]


@pytest.fixture(scope="module")
def router(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    directory: Path = tmp_path_factory.mktemp("prepared-model")
    config, topology = load(
        write_configs(directory, deployment.env, pool={"size": 1, "wait_timeout": 5.0}, auth_method="trust")
    )
    thread = RouterThread(config, topology).start()
    yield thread
    thread.stop()


class Wire:
    """A raw protocol client: sends messages, reads up to ReadyForQuery."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.sock.sendall(build_startup_message({"user": f"{APP_USER}.{TENANT}", "database": "app"}))
        self.until_ready()

    def until_ready(self) -> list[str]:
        seen: list[str] = []
        while True:
            header = read_header(self.buf, 0)
            if header is not None and len(self.buf) >= header[1]:
                seen.append(chr(header[0]))
                status = self.buf[5 : header[1]]
                self.buf = self.buf[header[1] :]
                if seen[-1] == "Z":
                    self.status = status
                    return seen
                continue
            chunk = self.sock.recv(65536)
            assert chunk, "the router closed the connection"
            self.buf += chunk

    def send(self, *messages: bytes) -> list[str]:
        self.sock.sendall(b"".join(messages))
        return self.until_ready()

    def query(self, sql: str) -> list[str]:
        return self.send(fe.query(sql))


def _parse(name: str, text: str) -> bytes:
    return fe.build_parse(name, text, b"\x00\x00")


def _bind(name: str, text: str) -> bytes:
    return fe.bind("", name, ("41",) if "$1" in text else ())


# One step: (client, kind, statement slot, text index)
steps = st.tuples(
    st.integers(0, CLIENTS - 1),
    st.sampled_from(
        [
            "parse",
            "run",
            "describe",
            "close",
            "pipeline_error",
            "begin",
            "commit",
            "rollback",
            "savepoint",
            "rollback_to",
            "ddl",
            "deallocate_all",
            "discard_all",
            "sql_error",
        ]
    ),
    st.integers(0, 2),
    st.integers(0, len(TEXTS) - 1),
)


def _step(wire: Wire, kind: str, slot: int, text: str) -> None:
    name = f"s{slot}"
    if kind == "parse":
        wire.send(fe.close(b"S", name), _parse(name, text), fe.SYNC)
    elif kind == "run":
        wire.send(_bind(name, text), fe.describe(b"P", ""), fe.execute(""), fe.SYNC)
    elif kind == "describe":
        wire.send(fe.describe(b"S", name), fe.SYNC)
    elif kind == "close":
        wire.send(fe.close(b"S", name), fe.SYNC)
    elif kind == "pipeline_error":
        # An error in the middle: what follows up to the Sync is skipped, by the server and the router.
        wire.send(
            _parse(name + "x", "SELECT 1/0"), _bind(name + "x", ""), fe.execute(""), _parse(name + "y", text), fe.SYNC
        )
        wire.send(fe.close(b"S", name + "x"), fe.close(b"S", name + "y"), fe.SYNC)
    elif kind == "ddl":
        wire.query("CREATE TABLE IF NOT EXISTS model_t (a int)")
    elif kind in ("begin", "commit", "rollback"):
        wire.query(kind.upper())
    elif kind == "savepoint":
        wire.query("SAVEPOINT sp")
    elif kind == "rollback_to":
        wire.query("ROLLBACK TO SAVEPOINT sp")
    elif kind == "deallocate_all":
        wire.query("DEALLOCATE ALL")
    elif kind == "discard_all":
        wire.query("DISCARD ALL")
    elif kind == "sql_error":
        wire.query("SELECT 1/0")


async def _compare(thread: RouterThread) -> tuple[set[str], set[str]] | None:
    """The router's record and the server's own list, read on the idle connection; None while the
    connection is busy (a client holds it: a transaction is open)."""
    for pool in thread.router.iter_pools():
        for conn in pool.connections():
            if conn.state is not ServerState.IDLE or conn.plan:
                return None
            believed = set(conn.session.prepared)
            _reported, error, rows = await conn.query_internal(SERVER_NAMES_SQL)
            assert error is None
            return believed, {str(row[0]) for row in rows}
    return set(), set()


def _server_connections(thread: RouterThread) -> list[ServerConnection]:
    return [conn for pool in thread.router.iter_pools() for conn in pool.connections()]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(steps, min_size=5, max_size=30))
def test_the_record_of_prepared_statements_never_drifts(
    router: RouterThread, ops: list[tuple[int, str, int, int]]
) -> None:
    wires = [Wire(router.port) for _ in range(CLIENTS)]
    try:
        wires[0].query("DROP TABLE IF EXISTS model_t")
        for who, kind, slot, text in ops:
            wire = wires[who]
            if kind == "begin" and any(w.status != b"I" for w in wires):
                continue  # one transaction at a time: the others would wait for the connection
            if kind != "begin" and wire.status == b"I" and any(w.status != b"I" for w in wires):
                continue
            _step(wire, kind, slot, TEXTS[text])
            if all(w.status == b"I" for w in wires):
                compared = None
                for _ in range(100):  # the router may still be reading back after the transaction
                    compared = router.call(_compare(router))
                    if compared is not None:
                        break
                    router.call(asyncio.sleep(0.01))
                assert compared is not None
                believed, actual = compared
                assert believed == actual, (who, kind, slot, text)
        for wire in wires:
            if wire.status != b"I":
                wire.query("ROLLBACK")
    finally:
        for wire in wires:
            wire.sock.sendall(fe.TERMINATE)
            wire.sock.close()
