"""`tenant-router demo` end to end: the real command starts, serves each tenant only its own rows,
and leaves no PostgreSQL server behind however it is stopped.

The demo runs as a subprocess in a process group of its own, as under a terminal; Ctrl-C is sent to
that whole group. The banner's URLs are used as printed, by psycopg and by the real psql.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest

from router.demo import SAMPLE_ITEMS, TENANTS, DemoInfo, run_demo
from router.testing.pgcluster import find_pg_bin_dir, free_port, stop_clusters_under
from router.testing.waiting import wait_until

pytestmark = pytest.mark.integration

READY_LINE = "Ctrl-C stops everything."
READY_TIMEOUT = 90.0  # three initdb runs on a busy machine
STOP_TIMEOUT = 20.0
URL_LINE = re.compile(r"^\s+psql '(?P<url>[^']+)'\s+# tenant (?P<tenant>\w+) ")


def _demo_command() -> list[str]:
    """The installed `tenant-router` script of this interpreter, else the module behind it."""
    script = Path(sys.executable).parent / "tenant-router"
    return [str(script)] if script.exists() else [sys.executable, "-m", "router.cli"]


def _client_env() -> dict[str, str]:
    # PG* variables (PGHOST, PGSSLMODE...) must not change what the printed URL means.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _postgres_processes(directory: Path) -> list[str]:
    """`pid args` of every postmaster whose data directory lies in `directory` (it runs with -D <datadir>)."""
    # -ww: without a terminal ps cuts lines at 80 columns, before the -D path.
    listing = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in listing.splitlines() if "postgres" in line and f"{directory}/" in line]


class DemoProcess:
    """`tenant-router demo` in its own process group; stdout read by a thread, stderr kept in a file."""

    def __init__(self, directory: Path, port: int, stderr_path: Path) -> None:
        self._stderr_path = stderr_path
        self._stderr = stderr_path.open("w")
        self.proc = subprocess.Popen(
            [*_demo_command(), "demo", "--dir", str(directory), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=_client_env(),
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        self.output: list[str] = []

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, text: str, timeout: float) -> list[str]:
        """All stdout lines up to and including the first one holding `text`."""
        deadline = time.monotonic() + timeout
        start = len(self.output)
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {text!r} from the demo within {timeout:g}s; {self.transcript()}")
            if line is None:
                self.proc.wait(5)
                pytest.fail(f"the demo exited ({self.proc.returncode}) before {text!r}; {self.transcript()}")
            self.output.append(line)
            if text in line:
                return self.output[start:]

    def rest_of_output(self) -> list[str]:
        while (line := self._lines.get(timeout=5)) is not None:
            self.output.append(line)
        return self.output

    def transcript(self) -> str:
        self._stderr.flush()
        stderr = self._stderr_path.read_text(errors="replace")
        return "stdout:\n" + "\n".join(self.output) + "\nstderr:\n" + stderr[-3000:]

    def interrupt(self) -> None:
        """Ctrl-C in a terminal: SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """A directory under /tmp (pytest's own tmp_path is private to root; the servers run as postgres)."""
    base = Path(tempfile.mkdtemp(prefix="tenant-router-demo-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base / "demo"
    finally:
        stop_clusters_under(base / "demo")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def start_demo(demo_dir: Path) -> Iterator[type[DemoProcess]]:
    started: list[DemoProcess] = []

    class Started(DemoProcess):
        def __init__(self, directory: Path, port: int, stderr_path: Path) -> None:
            super().__init__(directory, port, stderr_path)
            started.append(self)

    yield Started
    for demo in started:
        demo.close()


def _urls(banner: list[str]) -> dict[str, str]:
    return {m["tenant"]: m["url"] for line in banner if (m := URL_LINE.match(line))}


def _rows(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url, connect_timeout=10) as conn:
        return [(row[0], row[1]) for row in conn.execute("SELECT tenant_id, name FROM items ORDER BY id")]


def test_demo_serves_each_tenant_its_rows_and_stops_on_ctrl_c(
    demo_dir: Path, start_demo: type[DemoProcess], tmp_path: Path
) -> None:
    port = free_port()
    demo = start_demo(demo_dir, port, tmp_path / "demo.stderr")
    banner = demo.wait_for(READY_LINE, READY_TIMEOUT)

    urls = _urls(banner)
    assert sorted(urls) == sorted(tenant for tenant, _isolation in TENANTS), demo.transcript()
    assert all(f"@127.0.0.1:{port}/" in url for url in urls.values())
    for tenant in ("acme", "globex"):
        assert _rows(urls[tenant]) == [(tenant, name) for name in SAMPLE_ITEMS[tenant]], tenant

    psql = shutil.which("psql") or str(find_pg_bin_dir() / "psql")
    result = subprocess.run(
        [psql, "-X", "-At", urls["globex"], "-c", "SELECT count(*) FROM items"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_client_env(),
    )
    assert (result.returncode, result.stdout.strip()) == (0, str(len(SAMPLE_ITEMS["globex"]))), result.stderr

    # The printed admin command works as printed.
    tenants_line = next(line for line in banner if line.strip().startswith("tenants:"))
    config_path = tenants_line.split("--config", 1)[1].split()[0]
    listed = subprocess.run(
        [*_demo_command(), "--config", config_path, "tenants", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_client_env(),
    )
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()) == sorted(urls)

    assert _postgres_processes(demo_dir), "expected the demo's servers to be visible in ps"
    demo.interrupt()
    assert demo.proc.wait(STOP_TIMEOUT) == 0, demo.transcript()
    assert demo.rest_of_output()[-1] == "stopped"
    assert _postgres_processes(demo_dir) == []


def test_demo_starts_fresh_after_a_killed_run_and_stops_on_sigterm(
    demo_dir: Path, start_demo: type[DemoProcess], tmp_path: Path
) -> None:
    port = free_port()
    killed = start_demo(demo_dir, port, tmp_path / "killed.stderr")
    killed.wait_for(READY_LINE, READY_TIMEOUT)
    killed.proc.kill()  # SIGKILL: no cleanup at all, its servers keep running
    killed.proc.wait(10)
    assert len(_postgres_processes(demo_dir)) == 3

    demo = start_demo(demo_dir, port, tmp_path / "demo.stderr")
    output = demo.wait_for(READY_LINE, READY_TIMEOUT)
    assert sum("left by a previous run" in line for line in output) == 3
    # Fresh clusters: the sample rows were inserted once, not appended to the killed run's.
    assert _rows(_urls(output)["acme"]) == [("acme", name) for name in SAMPLE_ITEMS["acme"]]

    demo.proc.send_signal(signal.SIGTERM)  # what `kill`, systemd and docker stop send
    assert demo.proc.wait(STOP_TIMEOUT) == 0, demo.transcript()
    assert _postgres_processes(demo_dir) == []


def test_run_demo_in_process_with_ready_callback(demo_dir: Path) -> None:
    """The hook for embedding the demo: a callback that may block, then `stop()` from its thread."""
    seen: dict[str, list[tuple[str, str]]] = {}

    def check(info: DemoInfo) -> None:
        try:
            for tenant in ("initech", "umbrella"):  # the schema and the database tenant
                seen[tenant] = _rows(info.url(tenant))
        finally:
            info.stop()

    assert run_demo(demo_dir, port=0, ready_callback=check) == 0
    assert seen == {t: [(t, name) for name in SAMPLE_ITEMS[t]] for t in ("initech", "umbrella")}
    assert _postgres_processes(demo_dir) == []


def test_a_busy_port_is_reported_before_anything_starts(demo_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [*_demo_command(), "demo", "--dir", str(demo_dir), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_client_env(),
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "already in use" in result.stderr
    assert not demo_dir.exists()


# --- one running demo, used as a newcomer would ----------------------------------------------------

COMMAND_LINE = re.compile(r"^\s+(?:\w+:\s+)?(?P<command>(?:psql|tenant-router|curl) .*?)\s*(?:#.*)?$")
RELOADED = "shards.yaml reloaded"


@pytest.fixture(scope="module")
def running_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoProcess, list[str]]]:
    """`tenant-router demo` on a free port, with its banner; stopped with Ctrl-C after the module."""
    base = Path(tempfile.mkdtemp(prefix="tenant-router-demo-", dir="/tmp"))
    base.chmod(0o755)
    demo = DemoProcess(base / "demo", free_port(), tmp_path_factory.mktemp("demo") / "demo.stderr")
    try:
        yield demo, demo.wait_for(READY_LINE, READY_TIMEOUT)
        demo.interrupt()
        assert demo.proc.wait(STOP_TIMEOUT) == 0, demo.transcript()
    finally:
        demo.close()
        stop_clusters_under(base / "demo")
        shutil.rmtree(base, ignore_errors=True)


def _printed_commands(banner: list[str]) -> list[list[str]]:
    return [shlex.split(m["command"]) for line in banner if (m := COMMAND_LINE.match(line))]


def _run_printed(command: list[str]) -> subprocess.CompletedProcess[str]:
    """A printed command as a shell would run it: `tenant-router` is this interpreter's, psql runs
    one query and exits."""
    program, *args = command
    if program == "tenant-router":
        argv = [*_demo_command(), *args]
    elif program == "psql":
        psql = shutil.which("psql") or str(find_pg_bin_dir() / "psql")
        argv = [psql, "-X", "-At", *args, "-c", "SELECT count(*) FROM items"]
    else:
        argv = command
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_client_env())


def test_every_command_the_demo_prints_works_as_printed(running_demo: tuple[DemoProcess, list[str]]) -> None:
    demo, banner = running_demo
    commands = _printed_commands(banner)
    programs = [(c[0], c[-1]) if c[0] == "tenant-router" else (c[0], "") for c in commands]
    assert programs == [
        *[("psql", "")] * len(TENANTS),
        ("tenant-router", "list"),
        ("tenant-router", "check"),
        ("tenant-router", "reload"),
        ("curl", ""),
    ], banner
    for command in commands:
        result = _run_printed(command)
        assert result.returncode == 0, f"{shlex.join(command)}: {result.stdout}{result.stderr}"
        if command[0] == "psql":
            assert result.stdout.strip() == "2", command
        elif command[-1] == "check":
            # The hardened setup: nothing to fix, not even a warning.
            assert "warning" not in result.stderr and "problem" not in result.stderr, result.stderr
            assert result.stdout.count("server role tenant_router: ok") == 2, result.stdout
        elif command[-1] == "reload":
            assert result.stdout.splitlines()[-1] == f"reload signalled to pid {demo.proc.pid}", result.stdout
            _wait_for_log(demo, RELOADED)
        elif command[0] == "curl":
            assert "tenant_router_" in result.stdout
    assert demo.proc.poll() is None, demo.transcript()  # SIGHUP reloaded it, did not end it
    # The switch the banner suggests trying, for the trusted `app` user.
    urls = _urls(banner)
    with psycopg.connect(urls["acme"], autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET router.tenant = 'globex'")
        assert {row[0] for row in conn.execute("SELECT tenant_id FROM items")} == {"globex"}


def _wait_for_log(demo: DemoProcess, text: str, timeout: float = 20.0) -> None:
    wait_until(demo.transcript, f"{text!r} in the demo's log", within=timeout, until=lambda log: text in log)


def test_a_shared_demo_tenant_cannot_disable_rls_or_truncate(running_demo: tuple[DemoProcess, list[str]]) -> None:
    _demo, banner = running_demo
    urls = _urls(banner)
    with psycopg.connect(urls["acme"], autocommit=True, connect_timeout=10) as conn:
        for statement in (
            "ALTER TABLE items DISABLE ROW LEVEL SECURITY",
            "ALTER TABLE items NO FORCE ROW LEVEL SECURITY",
            "TRUNCATE items",
            "DROP POLICY tenant_isolation ON items",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    for tenant, _isolation in TENANTS:
        assert _rows(urls[tenant]) == [(tenant, name) for name in SAMPLE_ITEMS[tenant]], tenant
