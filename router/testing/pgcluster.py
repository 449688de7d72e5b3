"""Throwaway real PostgreSQL servers for the integration tests and the demo.

Owns: finding the PostgreSQL binaries; creating, configuring, starting, stopping and killing clusters
(one data directory, one TCP port on 127.0.0.1, one unix socket inside the data directory), with
the server settings online tenant moves need (logical WAL, replication slots and workers); streaming
replicas made with pg_basebackup; and the standard environment (a catalog cluster plus N shard
clusters, each with the router's unprivileged role and its database).

Must not: touch the system PostgreSQL (own ports, own socket directories), import the router itself,
or leave servers behind (`stop_clusters_under` sweeps a base directory). PostgreSQL refuses to run as
root, so when we are root every server-side tool runs as the `postgres` OS user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import stat
import string
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Literal
from urllib.parse import quote

SERVER_OS_USER: Final = "postgres"
SUPERUSER: Final = "postgres"
SUPERUSER_PASSWORD: Final = "postgres"
ROUTER_ROLE: Final = "tenant_router"
ROUTER_PASSWORD: Final = "router-secret"
SHARD_DB: Final = "app"
CATALOG_DB: Final = "router_catalog"
HOST: Final = "127.0.0.1"

ShutdownMode = Literal["smart", "fast", "immediate"]

_VERSIONED_BIN_DIRS: Final = Path("/usr/lib/postgresql")
_REQUIRED_TOOLS: Final = ("initdb", "pg_ctl")
_SETTINGS_FILE: Final = "harness.conf"
_LOG_FILE: Final = "server.log"
_LOG_TAIL_LINES: Final = 30
_SOCKET_PATH_MAX: Final = 107  # sun_path holds 108 bytes, NUL included
_START_ATTEMPTS: Final = 3  # a port picked by free_port() can be taken before the server binds it
_SETTING_NAME: Final = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")

# What online tenant moves need (logical replication with row filters, one slot, publication and
# subscription per move, several moves at once). A hot standby needs max_wal_senders,
# max_worker_processes (and the rest) at least as high as its primary's: replicas get the same.
MOVE_SETTINGS: Final[Mapping[str, str]] = {
    "wal_level": "logical",
    "max_replication_slots": "40",
    "max_wal_senders": "40",
    "max_logical_replication_workers": "40",
    "max_worker_processes": "64",
    "max_sync_workers_per_subscription": "4",
    # On PostgreSQL 15 the launcher starts a new subscription's worker at most once per this
    # interval (default 5 s): several moves starting together would each wait for it.
    "wal_retrieve_retry_interval": "500ms",
}

_HBA: Final = """\
# written by router.testing.pgcluster
local   all          all                    trust
local   replication  all                    trust
host    all          all   127.0.0.1/32     scram-sha-256
host    replication  all   127.0.0.1/32     scram-sha-256
"""


class PgClusterError(RuntimeError):
    """A PostgreSQL tool failed; the message carries its output and the tail of the server log."""


# --- binaries, ports, accounts -------------------------------------------------------------------


def find_pg_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: PATH first, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        # Resolve links: Debian-style /usr/local/bin/pg_ctl links do not bring pg_basebackup along.
        candidate = Path(on_path).resolve().parent
        if _has_tools(candidate):
            return candidate
    versioned = [p / "bin" for p in _VERSIONED_BIN_DIRS.glob("*") if _has_tools(p / "bin")]
    if versioned:
        return max(versioned, key=lambda p: _version_key(p.parent.name))
    raise PgClusterError(
        f"no PostgreSQL server binaries found: searched PATH for pg_ctl and {_VERSIONED_BIN_DIRS}/*/bin "
        f"for {' and '.join(_REQUIRED_TOOLS)}; install PostgreSQL (e.g. apt-get install postgresql)"
    )


def _has_tools(directory: Path) -> bool:
    return all(os.access(directory / tool, os.X_OK) for tool in _REQUIRED_TOOLS)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _server_account() -> pwd.struct_passwd | None:
    """The account to run server tools as: `postgres` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise PgClusterError(
            f"running as root, but there is no {SERVER_OS_USER!r} OS user to run PostgreSQL as"
        ) from None


def _environment(account: pwd.struct_passwd | None) -> dict[str, str]:
    # PG* variables (PGHOST, PGPORT, PGDATA...) would silently redirect the tools; English messages.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    return env


def _run(args: list[str], *, timeout: float, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool as the server account; never raises on a non-zero exit."""
    account = _server_account()
    env = _environment(account)
    try:
        if account is None:
            return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, cwd="/")
        return subprocess.run(
            args,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd="/",
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
        )
    except subprocess.TimeoutExpired as exc:
        raise PgClusterError(f"{' '.join(args)} timed out after {timeout:g}s") from exc


def _write_owned(path: Path, text: str, *, append: bool = False) -> None:
    """Write a file the server account can read (files in a datadir must belong to it)."""
    with path.open("a" if append else "w", encoding="utf-8") as fh:
        fh.write(text)
    path.chmod(0o600)
    account = _server_account()
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def _prepare_base_dir(base_dir: Path) -> None:
    """Create `base_dir` for the server account, and check it can reach it from /."""
    base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    account = _server_account()
    if account is None:
        return
    if base_dir.stat().st_uid != account.pw_uid:
        # Only a fresh directory changes hands: a slip like base_dir=/tmp must not chown /tmp.
        if any(base_dir.iterdir()):
            raise PgClusterError(
                f"base directory {base_dir} is not empty and not owned by {SERVER_OS_USER!r}; "
                "give each environment a fresh directory (e.g. tempfile.mkdtemp(dir='/tmp'))"
            )
        os.chown(base_dir, account.pw_uid, account.pw_gid)
        base_dir.chmod(0o755)
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for parent in base_dir.parents:
        st = parent.stat()
        if not (
            st.st_mode & stat.S_IXOTH
            or (st.st_uid == account.pw_uid and st.st_mode & stat.S_IXUSR)
            or (st.st_gid in groups and st.st_mode & stat.S_IXGRP)
        ):
            raise PgClusterError(
                f"{parent} (mode {stat.filemode(st.st_mode)}) is not traversable by the "
                f"{SERVER_OS_USER!r} OS user, so it cannot reach {base_dir}; use a base directory "
                f"under /tmp or chmod o+x {parent}"
            )


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


# --- one cluster ---------------------------------------------------------------------------------


class PgCluster:
    """One PostgreSQL server: `base_dir/name` as datadir, a TCP port on 127.0.0.1, its socket inside."""

    def __init__(
        self, base_dir: Path, name: str, port: int | None = None, *, settings: Mapping[str, str] | None = None
    ) -> None:
        """`settings` override or add to the harness's postgresql.conf settings (e.g.
        {"wal_level": "replica"} for a server without what tenant moves need); values are written
        as they are, so quote strings: {"log_statement": "'all'"}."""
        self._base_dir = Path(base_dir).absolute()
        self._name = name
        self._port = port if port is not None else free_port()
        self._port_chosen_here = port is None
        self._bin_dir = find_pg_bin_dir()
        self._settings = dict(settings or {})
        for key, value in self._settings.items():
            if not _SETTING_NAME.fullmatch(key) or "\n" in value:
                raise ValueError(f"invalid setting {key!r} = {value!r}")

    def __repr__(self) -> str:
        return f"PgCluster({self._name!r}, port={self._port}, datadir={str(self.datadir)!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def datadir(self) -> Path:
        return self._base_dir / self._name

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def logfile(self) -> Path:
        return self.datadir / _LOG_FILE

    # --- lifecycle -------------------------------------------------------------------------------

    def init(self, superuser_password: str = SUPERUSER_PASSWORD) -> None:
        """initdb, then write our settings and pg_hba.conf; does not start the server."""
        _prepare_base_dir(self._base_dir)
        socket_path = self.datadir / f".s.PGSQL.{self._port}"
        if len(str(socket_path)) > _SOCKET_PATH_MAX:
            raise PgClusterError(f"unix socket path too long ({len(str(socket_path))} bytes): {socket_path}")
        pwfile = self._base_dir / f".{self._name}.pwfile"
        _write_owned(pwfile, superuser_password + "\n")
        try:
            result = self._tool(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # throwaway clusters: skipping the final fsync saves most of initdb's time
                "--no-instructions",
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise self._failure("initdb", result, with_log=False)
        _write_owned(self.datadir / "postgresql.conf", f"\ninclude = '{_SETTINGS_FILE}'\n", append=True)
        _write_owned(self.datadir / "pg_hba.conf", _HBA)
        self._write_settings()

    @property
    def settings(self) -> dict[str, str]:
        """The settings passed at creation (overrides of the harness's defaults)."""
        return dict(self._settings)

    def _write_settings(self) -> None:
        # In a file of its own so a replica (a copy of this datadir) rewrites it with its own port.
        # A later line wins in postgresql.conf, so the overrides simply follow the defaults.
        moves = "".join(f"{key} = {value}\n" for key, value in MOVE_SETTINGS.items())
        overrides = "".join(f"{key} = {value}\n" for key, value in self._settings.items())
        _write_owned(
            self.datadir / _SETTINGS_FILE,
            f"""\
# written by router.testing.pgcluster; per-cluster settings
listen_addresses = '{HOST}'
port = {self._port}
unix_socket_directories = {_literal(str(self.datadir))}
max_connections = 300
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_keep_size = 128MB
hot_standby = on
password_encryption = 'scram-sha-256'
logging_collector = off
# what online tenant moves need
{moves}# overrides given to this cluster
{overrides}""",
        )

    def start(self, timeout: float = 30) -> None:
        """pg_ctl start -w; if a port we picked was taken meanwhile, pick another and retry."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            log_before = self.logfile.stat().st_size if self.logfile.exists() else 0
            result = self._tool(
                "pg_ctl",
                "start",
                "-w",
                "-s",
                "-t",
                str(max(1, round(timeout))),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                timeout=timeout + 10,
            )
            if result.returncode == 0:
                return
            if self._port_chosen_here and attempt < _START_ATTEMPTS and self._port_clash(log_before):
                self._port = free_port()
                self._write_settings()
                continue
            raise self._failure("pg_ctl start", result)

    def _port_clash(self, log_offset: int) -> bool:
        with contextlib.suppress(OSError), self.logfile.open("rb") as fh:
            fh.seek(log_offset)
            return b"Address already in use" in fh.read()
        return False

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """pg_ctl stop -w; a cluster that is not running is left as it is."""
        if not self.is_running():
            return
        result = self._tool("pg_ctl", "stop", "-w", "-s", "-t", "60", "-m", mode, "-D", str(self.datadir), timeout=70)
        if result.returncode != 0 and self.is_running():
            raise self._failure(f"pg_ctl stop -m {mode}", result)

    def kill(self) -> None:
        """Crash-stop (pg_ctl stop -m immediate): no shutdown checkpoint, recovery on next start."""
        self.stop(mode="immediate")

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self.start(timeout=timeout)

    def is_running(self) -> bool:
        if not self.datadir.exists():
            return False
        return self._tool("pg_ctl", "status", "-D", str(self.datadir), timeout=10).returncode == 0

    # --- access ----------------------------------------------------------------------------------

    def dsn(self, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD, dbname: str = "postgres") -> str:
        """A postgresql:// URL over TCP (so password authentication really happens)."""
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{HOST}:{self._port}/{quote(dbname, safe='')}"
        )

    def execute(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as superuser over the unix socket (psql -X -At); returns stdout without its last newline.

        The SQL goes through stdin, so each statement runs on its own (CREATE DATABASE works).
        """
        psql = self._bin_dir / "psql"
        args = [
            str(psql) if psql.exists() else shutil.which("psql") or "psql",
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.datadir),
            "-p",
            str(self._port),
            "-U",
            SUPERUSER,
            "-d",
            dbname,
        ]
        result = _run(args, timeout=60, stdin=sql)
        if result.returncode != 0:
            shown = sql if len(sql) <= 500 else sql[:500] + "..."
            raise PgClusterError(
                f"SQL failed on cluster {self._name!r} (port {self._port}, database {dbname!r}):\n"
                f"{result.stderr.strip()}\n--- SQL ---\n{shown}"
            )
        return result.stdout.removesuffix("\n")

    def set_setting(self, name: str, value: str, timeout: float = 10) -> None:
        """ALTER SYSTEM SET name = value, reload, and wait until new sessions see it (or `timeout`).

        Only for settings a reload applies (not postmaster-level ones such as `port`); works on
        replicas too (e.g. recovery_min_apply_delay).
        """
        if not _SETTING_NAME.fullmatch(name):
            raise ValueError(f"invalid setting name {name!r}")
        show = f"SELECT current_setting({_literal(name)})"
        before = self.execute(show)
        self.execute(f"ALTER SYSTEM SET {name} = {_literal(value)};\nSELECT pg_reload_conf();")
        # The reload is asynchronous; a value shown differently than written (3000ms -> 3s) and
        # already in effect only costs the timeout.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.execute(show)
            if now == value or now != before:
                return
            time.sleep(0.02)

    def make_replica(self, name: str) -> PgCluster:
        """A started streaming replica of this (running) cluster, in `base_dir/name` on its own port."""
        replica = PgCluster(self._base_dir, name, settings=self._settings)
        result = self._tool(
            "pg_basebackup",
            "-h",
            str(self.datadir),
            "-p",
            str(self._port),
            "-U",
            SUPERUSER,
            "-D",
            str(replica.datadir),
            "-R",  # standby.signal + primary_conninfo (over this cluster's unix socket)
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            timeout=120,
        )
        if result.returncode != 0:
            raise self._failure(f"pg_basebackup into {replica.datadir}", result)
        replica._write_settings()
        _write_owned(replica.logfile, "")  # the copy carries the primary's log; start afresh
        replica.start()
        return replica

    # --- helpers ---------------------------------------------------------------------------------

    def _tool(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return _run([str(self._bin_dir / tool), *args], timeout=timeout)

    def _failure(
        self, action: str, result: subprocess.CompletedProcess[str], *, with_log: bool = True
    ) -> PgClusterError:
        output = "\n".join(s.strip() for s in (result.stdout, result.stderr) if s.strip())
        message = f"{action} failed for cluster {self._name!r} (exit {result.returncode}):\n{output}"
        if with_log:
            message += f"\n--- last lines of {self.logfile} ---\n{_tail(self.logfile)}"
        return PgClusterError(message)


def stop_clusters_under(base_dir: Path) -> None:
    """Crash-stop every server whose datadir is directly under `base_dir`; never raises.

    The last line of defence (atexit, interrupted startups): it needs no PgCluster objects, so it
    also catches replicas and clusters whose creation was interrupted.
    """
    with contextlib.suppress(Exception):
        bin_dir = find_pg_bin_dir()
        for pid_file in Path(base_dir).glob("*/postmaster.pid"):
            with contextlib.suppress(Exception):
                args = ["stop", "-w", "-s", "-m", "immediate", "-D", str(pid_file.parent)]
                _run([str(bin_dir / "pg_ctl"), *args], timeout=30)


# --- the standard environment --------------------------------------------------------------------


@dataclass
class PgEnvironment:
    """A catalog cluster plus shard clusters ("shard_a", "shard_b", ...), all running."""

    base_dir: Path
    shards: dict[str, PgCluster]
    catalog: PgCluster

    SUPERUSER: ClassVar[str] = SUPERUSER
    SUPERUSER_PASSWORD: ClassVar[str] = SUPERUSER_PASSWORD
    ROUTER_ROLE: ClassVar[str] = ROUTER_ROLE
    ROUTER_PASSWORD: ClassVar[str] = ROUTER_PASSWORD
    SHARD_DB: ClassVar[str] = SHARD_DB
    CATALOG_DB: ClassVar[str] = CATALOG_DB

    @property
    def clusters(self) -> list[PgCluster]:
        return [self.catalog, *self.shards.values()]

    def shard_dsn(
        self, name: str, user: str = ROUTER_ROLE, password: str = ROUTER_PASSWORD, dbname: str = SHARD_DB
    ) -> str:
        if name not in self.shards:
            raise KeyError(f"no shard {name!r}; shards are {sorted(self.shards)}")
        return self.shards[name].dsn(user=user, password=password, dbname=dbname)

    def catalog_dsn(self, user: str = ROUTER_ROLE, password: str = ROUTER_PASSWORD, dbname: str = CATALOG_DB) -> str:
        return self.catalog.dsn(user=user, password=password, dbname=dbname)

    def stop(self) -> None:
        """Stop every cluster (fast, in parallel), then crash-stop strays such as replicas."""
        with ThreadPoolExecutor(max_workers=len(self.clusters)) as pool:
            outcomes = list(pool.map(_stop_quietly, self.clusters))
        stop_clusters_under(self.base_dir)
        problems = [p for p in outcomes if p is not None]
        if problems:
            raise PgClusterError("could not stop every cluster:\n" + "\n".join(problems))


def _stop_quietly(cluster: PgCluster) -> str | None:
    """Stop one cluster; on failure fall back to a crash stop and report what went wrong."""
    try:
        cluster.stop()
        return None
    except PgClusterError as exc:
        with contextlib.suppress(PgClusterError):
            cluster.kill()
        return str(exc)


def _setup_sql(dbname: str, *, router_owns_database: bool) -> str:
    """The router's role as a hardened deployment makes it: LOGIN and nothing else (no CREATEDB,
    CREATEROLE, BYPASSRLS). A shard's database belongs to the superuser (the admin), so the router's
    role can create nothing there (`tenant-router check` fails otherwise); the catalog's database
    is the router's own, where it creates and migrates the catalog schema."""
    owner = ROUTER_ROLE if router_owns_database else SUPERUSER
    return (
        f"CREATE ROLE {_ident(ROUTER_ROLE)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
        f" PASSWORD {_literal(ROUTER_PASSWORD)};\n"
        f"CREATE DATABASE {_ident(dbname)} OWNER {_ident(owner)};\n"
    )


# Before PostgreSQL 15 every role may create objects in schema public.
_LOCK_PUBLIC_SQL: Final = "REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n"


def _bring_up(cluster: PgCluster, dbname: str) -> None:
    cluster.init(SUPERUSER_PASSWORD)
    cluster.start()
    shard = dbname != CATALOG_DB
    cluster.execute(_setup_sql(dbname, router_owns_database=not shard))
    if shard:
        cluster.execute(_LOCK_PUBLIC_SQL, dbname)


def start_cluster(
    base_dir: Path, name: str, dbname: str = SHARD_DB, *, settings: Mapping[str, str] | None = None
) -> PgCluster:
    """One more cluster `base_dir/name`, set up like a shard of `start_environment` (`dbname`
    owned by the superuser, the router's role a plain login) and started: for a test that must
    stop a primary without touching the shared environment, or that needs other server
    `settings` (see PgCluster). The caller stops it (`stop_clusters_under(base_dir)` also does)."""
    cluster = PgCluster(base_dir, name, settings=settings)
    try:
        _bring_up(cluster, dbname)
    except BaseException:
        with contextlib.suppress(PgClusterError):
            cluster.kill()
        raise
    return cluster


def start_environment(base_dir: Path, shard_count: int = 2) -> PgEnvironment:
    """initdb, configure and start a catalog cluster and `shard_count` shards, all in parallel.

    On any failure (or interrupt) every server already started under `base_dir` is stopped.
    """
    if not 1 <= shard_count <= len(string.ascii_lowercase):
        raise ValueError(f"shard_count must be between 1 and 26, not {shard_count}")
    base_dir = Path(base_dir).absolute()
    _prepare_base_dir(base_dir)
    catalog = PgCluster(base_dir, "catalog")
    shards = {f"shard_{c}": PgCluster(base_dir, f"shard_{c}") for c in string.ascii_lowercase[:shard_count]}
    jobs = [(catalog, CATALOG_DB), *((shard, SHARD_DB) for shard in shards.values())]
    try:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(_bring_up, cluster, dbname) for cluster, dbname in jobs]
            for future in futures:
                future.result()
    except BaseException:
        stop_clusters_under(base_dir)
        raise
    return PgEnvironment(base_dir=base_dir, shards=shards, catalog=catalog)
