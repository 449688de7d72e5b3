"""Live reload of shards.yaml, the parts that stand apart from the running router.

Owns: which catalog tenants a new topology would move (`moved_tenants`) and whether the reload must
be refused (`reload_problems`: a removed shard still holds tenants), the one log line that
describes a reload (`summarize`), recording moved tenants as catalog pins to their old shard and
those pins in `reload_pins` (`pin_moved_tenants`: idempotent, safe when several router processes do
it at once), the
`FileWatcher` that notices shards.yaml changing on disk, and the pid file through which
`tenant-router reload` finds a running router and sends it SIGHUP (`signal_reload`).

Must not: swap anything in the running router, or load files (router/ops/live_reload.py runs one:
load, check, pin, swap), decide placement itself (routing.place_tenant does), or move tenant data.
A reload never moves data: a tenant whose placement changes stays on its old shard, pinned there
in the catalog, until an operator moves its data and clears the pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from router.catalog.access import connect, describe_dsn, translated
from router.config import RouterConfig
from router.core.background import BackgroundService
from router.core.hashing import Ring
from router.core.routing import place_tenant
from router.core.topology import Topology, TopologyDiff, diff_topologies
from router.dbconnect import close_connection
from router.errors import NoRunningRouter, ReloadSignalError, listing
from router.isolation import quote_ident

__all__ = [
    "FileWatcher",
    "NoRunningRouter",
    "ReloadSignalError",
    "TenantMove",
    "moved_tenants",
    "pid_file_path",
    "pin_moved_tenants",
    "read_pid_file",
    "reload_problems",
    "remove_pid_file",
    "signal_reload",
    "summarize",
    "write_pid_file",
]

log = logging.getLogger(__name__)

# Tenants named in a reload problem before "and N more".
_NAMES_SHOWN: Final = 5
_APP_NAME: Final = "tenant-router-reload"
_CONNECT_TIMEOUT: Final = 5.0
# For the pinning transaction, waiting for another router's pinning included.
_STATEMENT_TIMEOUT: Final = 30.0


# --- what a new topology changes -----------------------------------------------------------------


@dataclass(frozen=True)
class TenantMove:
    """A catalog tenant the new topology places on another shard than the old one did."""

    tenant: str
    old_shard: str
    new_shard: str


def moved_tenants(tenants: Iterable[tuple[str, str | None]], old: Topology, new: Topology) -> list[TenantMove]:
    """The (tenant_id, catalog_pin) pairs whose placement differs between `old` and `new`, by tenant id.

    A catalog pin always wins, so catalog-pinned tenants never move. A shards.yaml pin that was
    added, changed or removed counts like a hash change: the tenant's data is still where the old
    placement put it. Call `reload_problems` first: a tenant on a removed shard shows up here with
    an `old_shard` the new topology lacks.
    """
    diff = diff_topologies(old, new)
    if not diff.moves_tenants:
        return []
    old_ring, new_ring = Ring.from_topology(old), Ring.from_topology(new)
    same_ring = old_ring == new_ring
    moves: list[TenantMove] = []
    for tenant_id, catalog_pin in tenants:
        if catalog_pin is not None:
            continue
        if same_ring and tenant_id not in diff.pins:
            continue  # neither its hash nor its shards.yaml pin changed
        before = place_tenant(tenant_id, None, old, old_ring).shard
        after = place_tenant(tenant_id, None, new, new_ring).shard
        if before != after:
            moves.append(TenantMove(tenant_id, before, after))
    moves.sort(key=lambda move: move.tenant)
    return moves


def reload_problems(old: Topology, new: Topology, tenants: Iterable[tuple[str, str | None]]) -> list[str]:
    """Why going from `old` to `new` must be refused, one message per problem; [] when it is fine.

    A shard removed from shards.yaml must no longer hold tenants, by their placement under `old`
    (catalog pins naming it included): their data would be unreachable.
    """
    removed = old.shards.keys() - new.shards.keys()
    if not removed:
        return []
    ring = Ring.from_topology(old)
    held: defaultdict[str, list[str]] = defaultdict(list)
    for tenant_id, catalog_pin in tenants:
        shard = place_tenant(tenant_id, catalog_pin, old, ring).shard
        if shard in removed:
            held[shard].append(tenant_id)
    problems = []
    for shard in sorted(held):
        names = sorted(held[shard])
        problems.append(
            f"shard {shard} is removed from {new.source.name} but still holds {_count(len(names), 'tenant')}"
            f" ({listing(names, _NAMES_SHOWN)}); move them to another shard first"
        )
    return problems


def summarize(
    diff: TopologyDiff, moves: Sequence[TenantMove], *, old: Topology | None = None, new: Topology | None = None
) -> str:
    """One log line describing a reload. With `old` and `new`, changed shards say what changed."""
    if diff.empty and not moves:
        return "shards.yaml reloaded: no changes"
    changed = [
        f"{name} ({', '.join(_what_changed(old, new, name))})" if old is not None and new is not None else name
        for name in diff.changed
    ]
    parts = [
        f"added {_names(diff.added)}",
        f"removed {_names(diff.removed)}",
        f"changed {_names(changed)}",
        f"weights {_names(f'{name} {a}->{b}' for name, (a, b) in diff.weights.items())}",
    ]
    if diff.vnodes is not None:
        parts.append(f"vnodes {diff.vnodes[0]}->{diff.vnodes[1]}")
    if diff.pins:
        pins = (f"{tenant} {a or '(none)'}->{b or '(none)'}" for tenant, (a, b) in diff.pins.items())
        parts.append(f"pins {_names(pins)}")
    if moves:
        verb = "maps" if len(moves) == 1 else "map"
        parts.append(
            f"{_count(len(moves), 'tenant')} now {verb} to another shard (pinned to their old shard until moved)"
        )
    else:
        parts.append("no tenant moves")
    return "shards.yaml reloaded: " + "; ".join(parts)


def _what_changed(old: Topology, new: Topology, name: str) -> list[str]:
    before, after = old.shards.get(name), new.shards.get(name)
    if before is None or after is None:
        return ["added" if before is None else "removed"]
    fields = [
        ("primary", before.primary != after.primary),
        ("replicas", before.replicas != after.replicas),
        ("weight", before.weight != after.weight),
    ]
    return [field for field, differs in fields if differs] or ["unchanged"]


def _names(names: Iterable[str]) -> str:
    return ", ".join(names) or "-"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# --- recording moves in the catalog --------------------------------------------------------------


async def pin_moved_tenants(config: RouterConfig, moves: Sequence[TenantMove]) -> int:
    """Pin each moved tenant to its old shard in the catalog; return how many rows this call pinned.

    Each tenant this call pins is also recorded in the catalog's `reload_pins` (tenant, shard), in
    the same statement: those pins are the reload's, not an operator's, and wait for a move.
    Only tenants without a catalog pin are pinned (`... WHERE shard IS NULL`), so a second call, a
    concurrent call from another router process, or an operator's pin made meanwhile are left
    alone: across processes each tenant is pinned exactly once. One transaction, serialised with
    other routers' pinning by an advisory lock. The catalog's trigger announces every pinned
    tenant on the catalog's NOTIFY channel at commit, as for any `tenants` command, so running
    routers see the pins within their usual notification delay.

    Raises CatalogUnavailable or CatalogError (catalog not initialised); nothing is pinned then.
    """
    old_shard = {move.tenant: move.old_shard for move in moves}
    if not old_shard:
        return 0
    dsn, schema = config.catalog.dsn, config.catalog.schema
    s = quote_ident(schema)
    # The pins this reload makes are recorded as such (reload_pins), in the same statement: an
    # operator's pin is never there, so `rebalance plan` knows which pins only wait for a move.
    sql = (
        f"WITH pinned AS (UPDATE {s}.tenants AS t SET shard = m.old_shard"
        " FROM unnest($1::text[], $2::text[]) AS m(id, old_shard)"
        " WHERE t.id = m.id AND t.shard IS NULL RETURNING t.id, t.shard)"
        f" INSERT INTO {s}.reload_pins (tenant_id, shard) SELECT id, shard FROM pinned"
        " ON CONFLICT (tenant_id) DO UPDATE SET shard = excluded.shard, pinned_at = now()"
    )
    conn = await connect(dsn, _CONNECT_TIMEOUT, _APP_NAME)
    try:
        with translated(describe_dsn(dsn), schema, _STATEMENT_TIMEOUT):
            async with conn.transaction():
                # Several processes reload at once: one at a time, so their row locks cannot deadlock.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"reload-pins:{schema}", timeout=_STATEMENT_TIMEOUT
                )
                status: str = await conn.execute(
                    sql, list(old_shard), list(old_shard.values()), timeout=_STATEMENT_TIMEOUT
                )
    finally:
        await close_connection(conn, _CONNECT_TIMEOUT)
    pinned = int(status.rsplit(" ", 1)[-1])
    log.info(
        "catalog: pinned %d of %d moved tenants to their old shard (the others already had a catalog pin)",
        pinned,
        len(old_shard),
    )
    return pinned


# --- watching shards.yaml ------------------------------------------------------------------------

_Signature = tuple[int, int, int] | None  # (mtime_ns, size, inode); None: missing or unreadable


class FileWatcher(BackgroundService):
    """Calls `on_change()` (its result is ignored) once per change of any of `paths`, polled every
    `interval` seconds.

    A change is reported only after the files have looked the same for one whole interval, so a
    file still being written is not read half-way. While a file is missing (an editor replacing
    it, an operator between `rm` and `cp`) nothing is reported; its reappearance is a change.
    An exception from `on_change` is logged and watching goes on.
    """

    def __init__(self, paths: Sequence[Path], interval: float, on_change: Callable[[], object]) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        super().__init__(log)
        self._paths = tuple(Path(p) for p in paths)
        self._interval = interval
        self._on_change = on_change
        self._missing: set[Path] = set()

    async def _begin(self) -> None:
        """Take the files' current state as the baseline and start polling."""
        self._spawn(
            self._run(self._snapshot()),
            name="file-watcher",
            crash_message=f"file watcher: died; changes to {self._paths} are no longer noticed",
        )

    async def _run(self, reported: tuple[_Signature, ...]) -> None:
        pending: tuple[_Signature, ...] | None = None  # a change seen, waiting to hold still
        while True:
            await asyncio.sleep(self._interval)
            current = self._snapshot()
            if current == reported:
                pending = None
            elif current != pending:
                pending = current  # changed since the last poll: give it another interval
            elif None not in current:
                pending, reported = None, current
                try:
                    self._on_change()
                except Exception:
                    log.exception("file watcher: change callback failed for %s", ", ".join(map(str, self._paths)))

    def _snapshot(self) -> tuple[_Signature, ...]:
        return tuple(self._signature(path) for path in self._paths)

    def _signature(self, path: Path) -> _Signature:
        try:
            st = os.stat(path)
        except OSError as exc:
            if path not in self._missing:
                self._missing.add(path)
                log.warning("file watcher: cannot read %s (%s); keeping the current state until it is back", path, exc)
            return None
        if path in self._missing:
            self._missing.discard(path)
            log.info("file watcher: %s is back", path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)


# --- pid file and `tenant-router reload` ---------------------------------------------------------


def pid_file_path(config: RouterConfig) -> Path:
    """Where the router listening on `config.listen.port` records its pid."""
    return Path(tempfile.gettempdir()) / f"tenant-router-{config.listen.port}.pid"


def write_pid_file(path: Path) -> None:
    """Record this process's pid in `path`, atomically (never seen half-written, symlinks replaced)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(f"{os.getpid()}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_pid_file(path: Path) -> int | None:
    """The pid recorded in `path`, or None if there is no such file; ValueError if it holds no pid."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        pid = int(text.strip())
    except ValueError:
        raise ValueError(f"pid file {path} does not hold a process id: {text.strip()[:40]!r}") from None
    if pid <= 0:
        raise ValueError(f"pid file {path} does not hold a process id: {pid}")
    return pid


def remove_pid_file(path: Path) -> bool:
    """Remove `path` if it records this process's pid (not a newer router's); True if removed."""
    try:
        if read_pid_file(path) != os.getpid():
            return False
        path.unlink()
    except (OSError, ValueError):
        return False
    return True


def signal_reload(config: RouterConfig) -> int:
    """Send SIGHUP to the router listening on `config.listen.port` (per its pid file); return its pid.

    Raises NoRunningRouter when there is no pid file or its process is gone, ReloadSignalError when
    the pid file is unreadable or the process may not be signalled.
    """
    port = config.listen.port
    path = pid_file_path(config)
    try:
        pid = read_pid_file(path)
    except (OSError, ValueError) as exc:
        raise ReloadSignalError(f"cannot read the pid file of the router on port {port}: {exc}") from exc
    if pid is None:
        raise NoRunningRouter(f"no running router was found for port {port}: there is no pid file {path}")
    gone = NoRunningRouter(f"no running router was found for port {port}: pid {pid} from {path} is not running")
    if _started_after(pid, path):
        raise gone  # the router died and its pid now belongs to another process: do not signal that one
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise gone from None
    except PermissionError:
        raise ReloadSignalError(
            f"not allowed to signal pid {pid} (the router on port {port}, from {path}): run as the user running it"
        ) from None
    return pid


def _started_after(pid: int, path: Path) -> bool:
    """Whether process `pid` started after `path` was written, so cannot be the process that wrote
    it. False when that cannot be told (not Linux, no /proc, the process is gone)."""
    try:
        stat_fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        boot_time = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        started = boot_time + int(stat_fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        written = path.stat().st_mtime
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return started > written + 2.0  # clock ticks and btime are coarse: allow some slack
