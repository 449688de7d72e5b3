"""Scale-out with the real command: `tenant-router serve` as a subprocess, with several worker
processes sharing the listen port (SO_REUSEPORT), and several router instances forwarding cancels
to each other.

Which worker serves a connection is read from the kernel, not guessed: a TCP socket belongs to the
process that holds its inode among its file descriptors (/proc/<pid>/fd -> "socket:[inode]"), and
/proc/net/tcp gives that inode's ports. The worker holding the established socket whose local port
is the listen port and whose remote port is the client's port is the worker that accepted the
client. The same tables count a worker's server connections (remote port = the shard's port).

Cancels are delivered through a small TCP forwarder owned by the test, because libpq sends a
CancelRequest to the address its connection used: the forwarder reads the BackendKeyData the
router hands out, and decides where each new connection goes. In front of a multi-worker router it
reconnects until the cancel connection lands on the worker the test wants (the kernel picks the
worker by a hash of the 4-tuple, so a few tries with fresh source ports suffice); in front of two
instances it switches its target after the login, so the cancel reaches the instance that did not
issue the key.

Pool bounds are watched from both ends at 100 Hz while clients log in and run transactions in
bursts: the backends of the router's role in pg_stat_activity, and the workers' sockets to the shard.

Every router is stopped in the fixture's teardown (SIGTERM, then SIGKILL), and every worker pid
seen during the test must be gone afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.core.cancel_keys import owner_of
from router.testing.deploy import APP_PASSWORD, APP_USER, CONSOLE_PASSWORD, CONSOLE_USER, write_configs
from router.testing.pgcluster import free_port
from router.testing.processes import alive, children, cmdline
from router.testing.waiting import WaitTimeout, wait_until

from .conftest import Deployment

pytestmark = pytest.mark.integration

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CANCEL_CODE = 80877102
TCP_ESTABLISHED = "01"


def _url(port: int, tenant: str) -> str:
    # No SSL or GSS negotiation: the forwarder below reads the first packet as a startup or cancel.
    return (
        f"postgresql://{APP_USER}.{tenant}:{APP_PASSWORD}@127.0.0.1:{port}/app"
        "?sslmode=disable&gssencmode=disable&connect_timeout=5"
    )


# --- which process owns which TCP connection ------------------------------------------------------


@dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: str
    inode: int


def _tcp_sockets() -> dict[int, TcpSocket]:
    """Every TCP socket of this network namespace that has an inode, by inode."""
    found: dict[int, TcpSocket] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                inode = int(fields[9])
                if inode:
                    local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
                    found[inode] = TcpSocket(int(local, 16), int(remote, 16), fields[3], inode)
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # the process is gone
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def established(pid: int) -> list[TcpSocket]:
    """The established TCP connections whose socket `pid` holds."""
    table = _tcp_sockets()
    return [table[i] for i in _socket_inodes(pid) if i in table and table[i].state == TCP_ESTABLISHED]


def owner_of_connection(pids: list[int], listen_port: int, client_port: int, timeout: float = 3.0) -> int | None:
    """The pid among `pids` that accepted the connection from `client_port` to `listen_port` (None
    if none did within `timeout`: until a worker accepts it, the socket has no inode)."""

    def owner() -> int | None:
        ends = (listen_port, client_port)
        return next((pid for pid in pids if any((s.local_port, s.remote_port) == ends for s in established(pid))), None)

    try:
        return wait_until(owner, f"a worker to accept port {client_port}'s connection", within=timeout, interval=0.01)
    except WaitTimeout:
        return None


def local_port(conn: psycopg.Connection[Any]) -> int:
    """The client-side port of a psycopg connection."""
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


# --- the router as a subprocess --------------------------------------------------------------------


class RouterProcess:
    """`python -m router.cli --config FILE serve`, its stderr in a log file."""

    def __init__(self, config_path: Path, listen_port: int, http_port: int, workers: int) -> None:
        self.config_path = config_path
        self.port = listen_port
        self.http_port = http_port
        self.workers = workers
        self.log_path = config_path.parent / "router.log"
        self.seen: set[int] = set()  # every worker pid observed: none may outlive the test
        self.ready = False
        self._log: IO[str] = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "--config", str(config_path), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def failure(self, what: str) -> str:
        return f"{what}\n--- {self.log_path} ---\n{self.log()[-6000:]}"

    def worker_pids(self) -> list[int]:
        """The worker processes: the supervisor's children started by multiprocessing's spawn (its
        resource tracker is a child too); with one worker, the serving process itself."""
        if self.workers == 1:
            pids = [self.proc.pid] if alive(self.proc.pid) else []
        else:
            pids = sorted(c for c in children(self.proc.pid) if "spawn_main" in cmdline(c) and alive(c))
        self.seen.update(pids)
        return pids

    def worker_indexes(self) -> dict[int, int]:
        """pid -> worker index, as the supervisor logged them when starting each."""
        return {int(pid): int(index) for index, pid in re.findall(r"started worker (\d+) \(pid (\d+)\)", self.log())}

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def health(self) -> dict[str, Any]:
        _status, body = self.get("/health")
        payload: dict[str, Any] = json.loads(body)
        return payload

    def metric(self, name: str) -> float:
        status, body = self.get("/metrics")
        assert status == 200, body
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        raise AssertionError(f"no sample {name} in /metrics:\n{body}")

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def _all_workers_answer(self) -> bool:
        try:
            status, body = self.get("/health")
        except OSError:
            return False
        payload = json.loads(body)
        if "workers" in payload:
            return bool(payload["workers_answering"] == self.workers)
        return status == 200

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> RouterProcess:
        """Until the port accepts connections and /health has every worker answering."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(self.failure(f"the router exited with {self.proc.returncode} before it was ready"))
            return self._accepts() and self._all_workers_answer()

        wait_until(ready, lambda: self.failure("the router to be ready"), within=timeout, interval=0.1)
        pids = self.worker_pids()
        assert len(pids) == self.workers, self.failure(f"expected {self.workers} workers, found {pids}")
        self.ready = True
        return self

    def stop(self) -> list[str]:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; kill (by pid) any worker still running after
        that. Returns what went wrong: an unclean exit, workers that outlived the router."""
        problems: list[str] = []
        if self.proc.poll() is None:
            self.worker_pids()
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            if self.proc.returncode != 0:
                problems.append(f"the router exited with {self.proc.returncode} on SIGTERM")
        elif self.ready:
            problems.append(f"the router exited by itself with {self.proc.returncode}")
        # Workers left without their supervisor exit within a second (they poll their parent).
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: not any(alive(pid) for pid in self.seen), "the workers to exit", within=5)
        leftovers = sorted(pid for pid in self.seen if alive(pid))
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        if leftovers:
            problems.append(f"worker processes {leftovers} outlived the router")
        self._log.close()
        return [f"{self.config_path}: {problem}" for problem in problems]


Launch = Callable[..., RouterProcess]


@pytest.fixture
def launch(deployment: Deployment, tmp_path: Path) -> Iterator[Launch]:
    """Start `tenant-router serve` on the deployment's clusters: launch(workers=2, pool={...},
    listen_port=..., cluster={...}). Every router is stopped at teardown, where a worker left
    running or an unclean exit fails the test."""
    started: list[RouterProcess] = []

    def factory(
        *,
        workers: int,
        listen_port: int | None = None,
        pool: dict[str, Any] | None = None,
        auth_method: str = "scram-sha-256",
        **extra: Any,
    ) -> RouterProcess:
        directory = tmp_path / f"router{len(started)}"
        port = listen_port if listen_port is not None else free_port()
        http_port = free_port()
        path = write_configs(
            directory,
            deployment.env,
            listen_port=port,
            http_port=http_port,
            pool=pool,
            auth_method=auth_method,
            extra={"workers": workers, **extra},
        )
        router = RouterProcess(path, port, http_port, workers)
        started.append(router)
        return router.wait_ready()

    yield factory
    problems: list[str] = []
    for router in started:
        problems += router.stop()
        print(f"--- {router.log_path} ---\n{router.log()[-6000:]}")
    assert not problems, "\n".join(problems)


# --- a TCP forwarder that reads cancel keys and steers connections -------------------------------


@dataclass
class Link:
    """One connection through the forwarder."""

    kind: str  # "startup" or "cancel"
    target: int = 0  # the upstream port it was forwarded to
    upstream_port: int = 0  # the forwarder's own port on the upstream connection
    key: tuple[int, bytes] | None = None  # the BackendKeyData the router sent (startups)
    worker: int | None = None  # set by a steering function that looked it up
    attempts: int = 0


Steer = Callable[[Link, socket.socket], bool]


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed during the first packet")
        data += chunk
    return data


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already shut down, or never connected
        sock.shutdown(socket.SHUT_RDWR)


class Forwarder:
    """Forwards each accepted connection to 127.0.0.1:`target_port` (read when the connection
    arrives). `steer(link, upstream)` may refuse an upstream connection; the forwarder then closes
    it and connects again, from a new source port."""

    MAX_ATTEMPTS = 64

    def __init__(self, target_port: int, steer: Steer | None = None) -> None:
        self.target_port = target_port
        self.steer = steer
        self.links: list[Link] = []
        self.errors: list[str] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head = _recv_exactly(client, 8)
            length, code = struct.unpack("!ii", head)
            first = head + _recv_exactly(client, length - 8)
            link = Link("cancel" if code == CANCEL_CODE else "startup")
            while upstream is None:
                link.attempts += 1
                link.target = self.target_port
                candidate = socket.create_connection(("127.0.0.1", link.target), timeout=5)
                candidate.settimeout(None)
                link.upstream_port = candidate.getsockname()[1]
                if self.steer is None or self.steer(link, candidate):
                    upstream = candidate
                elif link.attempts >= self.MAX_ATTEMPTS:
                    candidate.close()
                    raise ConnectionError(f"could not steer a {link.kind} connection in {link.attempts} tries")
                else:
                    candidate.close()
            self._sockets.append(upstream)
            self.links.append(link)
            upstream.sendall(first)
            self._spawn(self._pump, client, upstream)
            self._pump_reading_key(upstream, client, link)
        except (OSError, struct.error) as exc:
            self.errors.append(repr(exc))
        finally:
            _shutdown(client)
            if upstream is not None:
                _shutdown(upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(source)
            _shutdown(sink)

    @staticmethod
    def _pump_reading_key(source: socket.socket, sink: socket.socket, link: Link) -> None:
        """Server to client, reading messages until ReadyForQuery to find BackendKeyData. The key is
        recorded before the bytes go on: once the client has logged in, the test may read it."""
        buffer = b""
        in_login = link.kind == "startup"
        try:
            while data := source.recv(65536):
                if not in_login:
                    sink.sendall(data)
                    continue
                buffer += data
                while len(buffer) >= 5:
                    mtype, size = buffer[:1], struct.unpack("!i", buffer[1:5])[0]
                    if len(buffer) < 1 + size:
                        break
                    body, buffer = buffer[5 : 1 + size], buffer[1 + size :]
                    if mtype == b"K":
                        link.key = (struct.unpack("!i", body[:4])[0], body[4:])
                    elif mtype in (b"Z", b"E"):
                        in_login = False
                        buffer = b""
                        break
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        _shutdown(self._listener)
        self._listener.close()
        for sock in self._sockets:
            _shutdown(sock)
        for thread in self._threads:
            thread.join(5)
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _startup_link(forwarder: Forwarder, before: int) -> Link:
    links = [link for link in forwarder.links[before:] if link.kind == "startup"]
    assert len(links) == 1, links
    return links[0]


def _cancel_and_expect_query_canceled(conn: psycopg.Connection[Any], what: str, delay: float = 0.5) -> float:
    """Run pg_sleep(15) and cancel it from another thread with libpq's cancel (a new connection to
    the address `conn` used), every `delay` seconds until it ends: a cancel that arrives before the
    query reaches its server (a loaded machine) finds nothing to cancel, as with PostgreSQL itself.
    Return how long the query ran."""
    done = threading.Event()

    def cancel_until_done() -> None:
        while not done.wait(delay):
            conn.cancel_safe()

    canceller = threading.Thread(target=cancel_until_done, daemon=True)
    canceller.start()
    started = time.monotonic()
    try:
        conn.execute("SELECT pg_sleep(15)")
    except psycopg.errors.QueryCanceled:
        return time.monotonic() - started
    finally:
        done.set()
        canceller.join()
    pytest.fail(f"{what}: pg_sleep(15) ran to its end ({time.monotonic() - started:.1f}s), every cancel was lost")


# --- the tests --------------------------------------------------------------------------------------


def test_workers_share_the_port_and_metrics_sum_their_clients(launch: Launch) -> None:
    router = launch(workers=2)
    workers = router.worker_pids()
    conns = [psycopg.connect(_url(router.port, ("acme", "globex")[n % 2]), autocommit=True) for n in range(40)]
    try:

        def work(n: int) -> tuple[int, str]:
            row = conns[n].execute("SELECT %s::int * 2, current_setting('app.tenant_id')", (n,)).fetchone()
            assert row is not None
            return row

        with ThreadPoolExecutor(max_workers=40) as pool:
            rows = list(pool.map(work, range(40)))
        assert rows == [(n * 2, ("acme", "globex")[n % 2]) for n in range(40)]

        # Which worker accepted each client: the one holding the other end of its TCP connection.
        served_by = Counter(owner_of_connection(workers, router.port, local_port(conn)) for conn in conns)
        assert None not in served_by, served_by
        assert sum(served_by.values()) == 40
        # Each client lands on either worker with probability 1/2: all 40 on one has odds 2**-39.
        assert set(served_by) == set(workers), served_by
        # Between them, the workers hold exactly these 40 client connections and no others.
        clients_held = sum(1 for pid in workers for s in established(pid) if s.local_port == router.port)
        assert clients_held == 40

        assert router.metric("tenant_router_clients") == 40
        assert router.metric("tenant_router_client_logins_total") == 40
        assert router.health() == {"status": "ok", "workers": 2, "workers_answering": 2, "worker_restarts": 0}
        # /holds answers for the whole instance too (no hold on this deployment's tenants).
        status, body = router.get("/holds")
        assert status == 200 and json.loads(body) == {"held_now": [], "held_ever": {}}, body
    finally:
        for conn in conns:
            conn.close()
    wait_until(
        lambda: router.metric("tenant_router_clients"),
        "the router to count 0 clients",
        within=5,
        until=lambda n: n == 0,
    )


def test_cancel_reaches_the_query_whichever_worker_receives_it(launch: Launch) -> None:
    """Six clients, each cancelled through libpq from a new connection: three cancels steered to the
    worker serving the client, three to the other worker (which forwards over the private socket)."""
    router = launch(workers=2)
    workers = router.worker_pids()
    index_of = router.worker_indexes()
    assert sorted(index_of) == workers, router.failure(f"worker pids {workers}, logged {index_of}")
    destination: dict[str, int] = {}

    def steer(link: Link, upstream: socket.socket) -> bool:
        link.worker = owner_of_connection(workers, router.port, link.upstream_port)
        return link.kind != "cancel" or link.worker == destination["cancel"]

    with Forwarder(router.port, steer) as forwarder:
        for attempt, path in enumerate(["same", "other"] * 3):
            before = len(forwarder.links)
            with psycopg.connect(_url(forwarder.port, "acme"), autocommit=True) as conn:
                login = _startup_link(forwarder, before)
                assert login.worker in workers and login.key is not None
                # The key the router handed out names the worker that accepted the client.
                assert login.key[0] == conn.info.backend_pid
                assert owner_of(login.key[0]).worker == index_of[login.worker]
                assert owner_of(login.key[0]).peer_id == 0
                other = next(pid for pid in workers if pid != login.worker)
                destination["cancel"] = login.worker if path == "same" else other

                what = f"try {attempt}: client on worker {index_of[login.worker]}, cancel to the {path} worker"
                elapsed = _cancel_and_expect_query_canceled(conn, what)
                assert elapsed < 5, router.failure(f"{what}: cancelled after {elapsed:.1f}s")
                cancels = [link for link in forwarder.links[before:] if link.kind == "cancel"]
                assert cancels and all(link.worker == destination["cancel"] for link in cancels)
                assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("acme",)
        assert not forwarder.errors, forwarder.errors
    assert "could not forward cancel" not in router.log()


def test_cancel_at_another_instance_is_forwarded_to_the_owner(launch: Launch) -> None:
    """Two instances (peer ids 0 and 1, one worker each) that list each other. libpq sends the cancel
    to the address it logged in at; the forwarder points that address at the other instance after
    the login, so the CancelRequest arrives at the instance that did not issue the key."""
    ports = [free_port(), free_port()]
    instances = [
        launch(
            workers=1,
            listen_port=ports[peer],
            cluster={"peer_id": peer, "peers": [{"id": 1 - peer, "host": "127.0.0.1", "port": ports[1 - peer]}]},
        )
        for peer in (0, 1)
    ]
    for owner in (0, 1):
        elsewhere = 1 - owner
        with Forwarder(ports[owner]) as forwarder:
            with psycopg.connect(_url(forwarder.port, "globex"), autocommit=True) as conn:
                login = _startup_link(forwarder, 0)
                assert login.target == ports[owner] and login.key is not None
                assert owner_of(login.key[0]).peer_id == owner
                forwarder.target_port = ports[elsewhere]

                what = f"a query on peer {owner}, its cancel sent to peer {elsewhere}"
                elapsed = _cancel_and_expect_query_canceled(conn, what)
                assert elapsed < 5, instances[elsewhere].failure(f"{what}: cancelled after {elapsed:.1f}s")
                cancels = [link for link in forwarder.links if link.kind == "cancel"]
                assert cancels and all(link.target == ports[elsewhere] for link in cancels)
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert not forwarder.errors, forwarder.errors
    for instance in instances:
        assert "could not deliver cancel" not in instance.log()


@dataclass
class Probe:
    """A psycopg client running SELECT 1 in a loop until told to stop or its connection fails."""

    conn: psycopg.Connection[Any]
    worker: int
    done: list[float] = field(default_factory=list)  # when each query completed
    error: BaseException | None = None
    failed_at: float | None = None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.conn.execute("SELECT 1").fetchone()
            except psycopg.Error as exc:
                self.error, self.failed_at = exc, time.monotonic()
                return
            self.done.append(time.monotonic())
            time.sleep(0.005)  # a paced client, not a busy loop: the pause is the point


def _pgbench_on_shard(deployment: Deployment, tenant: str) -> None:
    """pgbench's tables in the application database of the tenant's shard: made by the admin (the
    router's role may create nothing there), readable by the router's role for `pgbench -S`."""
    env = deployment.env
    server = ["-h", "127.0.0.1", "-p", str(deployment.shard_port(tenant)), "-U", env.SUPERUSER, env.SHARD_DB]
    result = subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q", "-I", "dtgp", *server],
        env={**os.environ, "PGPASSWORD": env.SUPERUSER_PASSWORD},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    tables = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
    env.shards[deployment.placement[tenant]].execute(f"GRANT SELECT ON {tables} TO {env.ROUTER_ROLE}", env.SHARD_DB)


def test_a_killed_worker_is_restarted_and_the_other_keeps_serving(launch: Launch, deployment: Deployment) -> None:
    _pgbench_on_shard(deployment, "bigcorp")
    router = launch(workers=2)
    workers = router.worker_pids()

    # psycopg probes on both workers (a new connection lands on either with probability 1/2).
    probes: list[Probe] = []
    while len({p.worker for p in probes}) < 2 or len(probes) < 4:
        assert len(probes) < 40, "the kernel never put a connection on one of the workers"
        conn = psycopg.connect(_url(router.port, "bigcorp"), autocommit=True)
        worker = owner_of_connection(workers, router.port, local_port(conn))
        assert worker is not None
        probes.append(Probe(conn, worker))
    stop = threading.Event()
    threads = [threading.Thread(target=probe.run, args=(stop,), daemon=True) for probe in probes]
    for thread in threads:
        thread.start()

    through_router = ["-h", "127.0.0.1", "-p", str(router.port), "-U", f"{APP_USER}.bigcorp", "app"]
    bench = subprocess.Popen(
        ["pgbench", "-S", "-n", "-c", "8", "-j", "2", "-T", "8", "-P", "1", *through_router],
        env={**os.environ, "PGPASSWORD": APP_PASSWORD},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def bench_on_workers() -> dict[int, int]:
        """How many of pgbench's connections each worker holds the other end of."""
        bench_ports = {s.local_port for s in established(bench.pid)}
        return {pid: sum(s.remote_port in bench_ports for s in established(pid)) for pid in workers}

    try:
        bench_on = wait_until(
            bench_on_workers,
            "pgbench's 8 connections, each held by a worker",
            within=10,
            until=lambda on: sum(on.values()) == 8,
        )
        survivor = max(workers, key=lambda pid: bench_on[pid])  # so that some of pgbench lives on
        victim = next(pid for pid in workers if pid != survivor)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
        stop.set()
        for thread in threads:
            thread.join(10)
        for probe in probes:
            probe.conn.close()

    # Clients of the killed worker lost their connection; the others never noticed.
    for probe in probes:
        if probe.worker == victim:
            assert isinstance(probe.error, psycopg.OperationalError), probe
        else:
            assert probe.error is None, router.failure(f"a client of the surviving worker failed: {probe.error!r}")
            assert any(t > killed_at + 1 for t in probe.done), "a client of the surviving worker stalled"

    # pgbench: the clients on the killed worker abort, those on the other run to the end.
    aborted = len(re.findall(r"client \d+ .*aborted", err))
    assert aborted == bench_on[victim], f"{bench_on}\n{out}\n{err}"
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    assert processed is not None and int(processed.group(1)) > 0, out + err
    late = [float(m[1]) for m in re.finditer(r"progress: (\d+\.\d) s, (\d+\.\d) tps", err) if float(m[1]) >= 5]
    assert late and all(tps > 0 for tps in late), err

    # The supervisor restarted the worker: both answer, once restarted, and the new one serves.
    health = wait_until(
        router.health, "both workers to answer /health", within=10, until=lambda h: h["workers_answering"] == 2
    )
    assert health == {"status": "ok", "workers": 2, "workers_answering": 2, "worker_restarts": 1}, router.failure(
        str(health)
    )
    assert re.search(rf"worker \d \(pid {victim}\) died with exit code -9; restarting it", router.log())
    now = router.worker_pids()
    assert len(now) == 2 and survivor in now and victim not in now, (workers, now)
    replacement = next(pid for pid in now if pid != survivor)
    for _ in range(40):
        with psycopg.connect(_url(router.port, "bigcorp"), autocommit=True) as conn:
            assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("bigcorp",)
            if owner_of_connection(now, router.port, local_port(conn)) == replacement:
                break
    else:
        pytest.fail("40 new connections and none went to the restarted worker")


class ShardWatch:
    """Samples the router's connections to one shard from a thread, at 100 Hz: as PostgreSQL sees
    them (backends of the router's role that were not there when the watch was created) and as
    the workers hold them (established TCP connections to the shard's port)."""

    def __init__(self, deployment: Deployment, shard: str) -> None:
        self.cluster = deployment.env.shards[shard]
        self.role = deployment.env.ROUTER_ROLE
        self.workers: list[int] = []
        self.backends = 0
        self.peak_backends = 0
        self.peak_sockets = 0
        self._stop = threading.Event()
        self._monitor = psycopg.connect(self.cluster.dsn(), autocommit=True)
        self._before = [row[0] for row in self._monitor.execute(self._BACKENDS.format("pid"), (self.role, []))]
        self._thread = threading.Thread(target=self._run, daemon=True)

    # Pooled backends only: the health monitor's own connection (one per worker) is not in a pool.
    _BACKENDS = (
        "SELECT {} FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend' AND NOT pid = ANY(%s)"
        " AND application_name IS DISTINCT FROM 'tenant-router-health'"
    )
    _HEALTH_PORTS = "SELECT client_port FROM pg_stat_activity WHERE application_name = 'tenant-router-health'"

    def start(self, workers: list[int]) -> None:
        self.workers = workers
        self._thread.start()

    def _run(self) -> None:
        query = self._BACKENDS.format("count(*)")
        while not self._stop.is_set():
            row = self._monitor.execute(query, (self.role, self._before)).fetchone()
            assert row is not None
            health = {r[0] for r in self._monitor.execute(self._HEALTH_PORTS).fetchall()}
            held = sum(
                1
                for pid in self.workers
                for s in established(pid)
                if s.remote_port == self.cluster.port and s.local_port not in health
            )
            self.backends = int(row[0])
            self.peak_backends = max(self.peak_backends, self.backends)
            self.peak_sockets = max(self.peak_sockets, held)
            time.sleep(0.01)  # the sampling period of the watch: elapsed time is the point

    def report(self) -> str:
        return (
            f"pool size 5: at most {self.peak_backends} router backends at once on port {self.cluster.port}"
            f" (pg_stat_activity), at most {self.peak_sockets} connections to it held by the workers"
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._monitor.close()


def _run_transactions(port: int, tenants: list[str], clients: int, transactions: int) -> None:
    """`clients` connections logging in at once, then each running `transactions` short
    transactions, all at once: asyncpg in one event loop, so that the router's pools see bursts
    of checkouts."""

    async def client(n: int) -> None:
        tenant = tenants[n % len(tenants)]
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user=f"{APP_USER}.{tenant}", password=APP_PASSWORD, database="app", ssl=False
        )
        try:
            for i in range(transactions):
                async with conn.transaction():
                    row = await conn.fetchrow("SELECT $1::int, current_setting('app.tenant_id'), pg_sleep(0.03)", i)
                    assert tuple(row) == (i, tenant, None)
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.gather(*(client(n) for n in range(clients)))

    asyncio.run(main())


def _peak_connections_to_shard(launch: Launch, deployment: Deployment, tenants: list[str]) -> ShardWatch:
    """Three workers with pool size 5; three rounds of 30 clients of `tenants` (all on one shard)
    logging in and running transactions at once, each round starting from empty pools (the idle
    timeout closes every connection in between); the watch of that shard, stopped.

    Trust authentication keeps each login to one round trip, so that logins arrive in bursts too."""
    (shard,) = {deployment.placement[t] for t in tenants}
    watch = ShardWatch(deployment, shard)
    try:
        router = launch(workers=3, pool={"size": 5, "wait_timeout": 30.0, "idle_timeout": 0.5}, auth_method="trust")
        watch.start(router.worker_pids())
        for _round in range(3):
            wait_until(lambda: watch.backends, "the idle timeout to empty the pools", within=10, until=lambda n: n == 0)
            _run_transactions(router.port, tenants, clients=30, transactions=8)
    finally:
        watch.stop()
    return watch


def test_workers_share_the_pool_size(launch: Launch, deployment: Deployment) -> None:
    """Pool sizes are instance totals: three workers with `size: 5` (shares 2, 2, 1) open at most 5
    connections to the shard between them, however many clients are waiting."""
    shard = deployment.placement["acme"]
    tenants = [t for t in ("acme", "globex", "bigcorp", "initech") if deployment.placement[t] == shard]
    watch = _peak_connections_to_shard(launch, deployment, tenants)
    assert 3 <= watch.peak_backends <= 5, watch.report()
    assert 3 <= watch.peak_sockets <= 5, watch.report()


def test_pool_size_caps_the_shard_with_a_database_tenant_on_it(launch: Launch, deployment: Deployment) -> None:
    """`pool.size` is documented as server connections per shard (config/router.yaml, PoolConfig):
    a tenant with a database of its own on the same shard must not raise the shard's total."""
    shard = deployment.placement["umbrella"]
    tenants = [t for t in ("umbrella", "acme", "globex", "bigcorp", "initech") if deployment.placement[t] == shard]
    assert len(tenants) >= 2, deployment.placement
    watch = _peak_connections_to_shard(launch, deployment, tenants)
    assert watch.peak_backends <= 5, watch.report()
    assert watch.peak_sockets <= 5, watch.report()


def test_console_reload_of_one_worker_reloads_them_all(launch: Launch) -> None:
    """RELOAD at the admin console lands on one worker, which signals its supervisor: every worker
    reloads, as on SIGHUP."""
    router = launch(workers=2, reload={"watch": False})
    console_url = f"postgresql://{CONSOLE_USER}:{CONSOLE_PASSWORD}@127.0.0.1:{router.port}/tenant_router"
    with psycopg.connect(console_url, autocommit=True, connect_timeout=10) as admin:
        cur = admin.execute("RELOAD")
        (result,) = cur.fetchone() or ("",)
    assert f"pid {router.proc.pid}" in result and "reloads all 2 workers" in result, result
    wait_until(
        lambda: router.log().count("shards.yaml reloaded: no changes") == 2,
        lambda: router.failure("both workers to reload"),
        within=15,
        interval=0.1,
    )
