"""Background health checks and replication lag of every PostgreSQL server of the topology.

Owns `HealthMonitor`: one task per shard that every `health.interval` probes the primary and then
its replicas (so a replica's lag is measured against the primary's WAL position from the same
round), the up/down state of each server (`ServerStatus`) with exponential backoff while it is
down, and the lag figures the router's read routing consults (`HealthMonitor.replica_ok`). Each
probe, connecting included, is bounded by `health.timeout`, so a blackholed server cannot stall a
shard's checks or `stop()`. The probe itself is router/ops/probe.py (asyncpg), the math on what it
reads router/ops/readings.py (pure); their names the router uses are importable from here.

Must not: know the wire protocol the router speaks to clients or open connections itself (the
probe does), pick servers for sessions (routing does, with `is_up`/`replica_ok`), touch the
router's pooled connections (the `on_down`/`on_up` callbacks let their owner react), or change
anything on a server. It uses no threads; times are `loop.time()` of the running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from router.config import HealthConfig, ServerCredentials
from router.core.background import BackgroundService
from router.core.topology import Role, ServerAddress, ServerKey, Topology
from router.ops.probe import PgProbe, Probe, expected_failure, failure_reason
from router.ops.readings import Reading, backoff_delay, compute_lag

__all__ = [
    "HealthMonitor",
    "Probe",
    "Reading",
    "Role",
    "ServerKey",
    "ServerStatus",
    "backoff_delay",
    "compute_lag",
]

log = logging.getLogger(__name__)

# A server whose next check is this close is due now (timers may fire a hair early).
_DUE_SLACK: Final = 1e-3


@dataclass(slots=True)
class ServerStatus:
    """What the last checks found; updated in place by the monitor (read it, do not write it)."""

    key: ServerKey
    up: bool = True  # optimistic until the first check fails
    replay_lsn: int | None = None  # replicas: pg_last_wal_replay_lsn() at the last successful check
    lag_bytes: int | None = None  # replicas: primary's current LSN - replay LSN (>= 0); None = unknown
    lag_seconds: float | None = None  # replicas: 0 when replay caught up, else now() - last replayed commit
    current_lsn: int | None = None  # primaries: pg_current_wal_lsn() at the last successful check
    failures: int = 0  # consecutive failed checks (and reported failures)
    last_error: str | None = None  # why the server is down; None once it is up again
    next_check: float = 0.0  # loop.time() of the next attempt (backoff when down)
    checked_at: float | None = None  # loop.time() the last check (successful or not) finished


# --- the monitor ---------------------------------------------------------------------------------


class _Server:
    """A monitored server: where it is, its status, and the lock that serialises its probes."""

    __slots__ = ("address", "caught_up_at", "key", "lock", "reported_at", "retired", "role_warned", "status")

    def __init__(self, key: ServerKey, address: ServerAddress, status: ServerStatus) -> None:
        self.key = key
        self.address = address
        self.status = status
        self.lock = asyncio.Lock()
        self.reported_at = -math.inf  # loop.time() of the last report_failure
        self.role_warned = False
        self.retired = False  # removed from the topology: results are no longer applied
        self.caught_up_at: datetime | None = None  # replica's now() when last seen caught up


def _servers_of(topology: Topology) -> dict[ServerKey, ServerAddress]:
    """Every server of `topology`, each shard's primary before its replicas, shards in order."""
    servers: dict[ServerKey, ServerAddress] = {}
    for name, shard in topology.shards.items():
        primary = shard.primary
        servers[ServerKey(name, primary.host, primary.port, "primary")] = primary
        for replica in shard.replicas:
            servers.setdefault(ServerKey(name, replica.host, replica.port, "replica"), replica)
    return servers


def _ignore_down(key: ServerKey, error: str) -> None:
    pass


def _ignore_up(key: ServerKey) -> None:
    pass


class HealthMonitor(BackgroundService):
    """Checks every server of a topology in the background; routing asks it who is up and current.

    Reading (`status`, `is_up`, `replica_ok`, ...) never awaits. `on_down(key, error)` and
    `on_up(key)` are called once per transition, from the event loop; they must not block.
    """

    def __init__(
        self,
        topology: Topology,
        credentials: ServerCredentials,
        settings: HealthConfig,
        on_down: Callable[[ServerKey, str], None] = _ignore_down,
        on_up: Callable[[ServerKey], None] = _ignore_up,
        *,
        probe: Probe | None = None,
    ) -> None:
        """`probe` replaces the asyncpg probe (tests); the monitor then opens no connections."""
        super().__init__(log)
        self._settings = settings
        self._on_down = on_down
        self._on_up = on_up
        self._pg: PgProbe | None = None
        self._probe: Probe
        if probe is None:
            self._pg = self._probe = PgProbe(credentials, settings.timeout)
        else:
            self._probe = probe
        self._statuses: dict[ServerKey, ServerStatus] = {}
        self._servers: dict[ServerKey, _Server] = {}
        self._shards: dict[str, tuple[ServerKey, ...]] = {}
        self._shard_tasks: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._all_checked = asyncio.Event()
        self.set_topology(topology)

    # -- reading (never awaits) --

    def status(self, key: ServerKey) -> ServerStatus:
        """The status of `key`; one is created (up, unmeasured) for a server not monitored."""
        status = self._statuses.get(key)
        if status is None:
            status = self._statuses[key] = ServerStatus(key)
        return status

    def statuses(self) -> list[ServerStatus]:
        """Every monitored server's status: shards in order, each primary before its replicas."""
        return [server.status for server in self._servers.values()]

    def is_up(self, key: ServerKey) -> bool:
        return self.status(key).up

    def replica_ok(
        self, key: ServerKey, max_lag_bytes: int, max_lag_seconds: float, min_lsn: int | None = None
    ) -> bool:
        """Up, measured at least once, lag within both bounds, and replayed up to `min_lsn` if given."""
        status = self.status(key)
        if not status.up or status.lag_bytes is None or status.lag_seconds is None:
            return False
        if status.lag_bytes > max_lag_bytes or status.lag_seconds > max_lag_seconds:
            return False
        return min_lsn is None or (status.replay_lsn is not None and status.replay_lsn >= min_lsn)

    # -- events from the router --

    def report_failure(self, key: ServerKey, error: str) -> None:
        """The router could not connect to `key`: mark it down now and retry after a backoff.

        A server already down keeps its backoff (a burst of failing clients must not stretch it);
        a check that started before this report cannot bring the server back up.
        """
        now = asyncio.get_running_loop().time()
        server = self._servers.get(key)
        if server is not None:
            server.reported_at = now
        if self._pg is not None:
            self._pg.invalidate(key)
        status = self.status(key)
        if not status.up:
            status.last_error = error
            return
        self._mark_failed(status, error, now)

    async def check_now(self, key: ServerKey) -> ServerStatus:
        """Probe `key` now (waiting for a probe already running on it) and return its status.

        A replica's lag is measured against its primary's last checked LSN; check the primary first
        for an up-to-date figure. Raises KeyError for a server not in the topology.
        """
        server = self._servers.get(key)
        if server is None:
            raise KeyError(f"{key} is not a server of the monitored topology")
        await self._check(server, schedule_from=None)
        return server.status

    async def wait_checked(self, timeout: float) -> None:
        """Return once every monitored server has been checked at least once, or after `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._all_checked.wait()

    # -- topology --

    def set_topology(self, topology: Topology) -> None:
        """Monitor `topology` from now on: new servers are checked at once, removed ones forgotten."""
        wanted = _servers_of(topology)
        retired = [server for key, server in self._servers.items() if key not in wanted]
        for server in retired:
            server.retired = True
            del self._servers[server.key]
            self._statuses.pop(server.key, None)
        servers: dict[ServerKey, _Server] = {}
        for key, address in wanted.items():
            known = self._servers.get(key)
            if known is None:
                known = _Server(key, address, self.status(key))
            elif known.address != address:
                known.address = address  # e.g. another dbname: reconnect before the next check
                if self._pg is not None:
                    self._pg.invalidate(key)
            servers[key] = known
        self._servers = servers
        old_shards = self._shards
        self._shards = {name: tuple(k for k in wanted if k.shard == name) for name in topology.shards}
        if self.running:
            for name in old_shards.keys() - self._shards.keys():
                self._shard_tasks.pop(name).cancel()  # stop() still waits for it to finish
                self._wakes.pop(name, None)
            for name, keys in self._shards.items():
                if name not in self._shard_tasks:
                    self._start_shard(name)
                elif keys != old_shards.get(name):
                    self._wakes[name].set()
            if retired and self._pg is not None:
                self._run_task(self._retire(retired), "health-retire")
        elif retired and self._pg is not None:
            for server in retired:
                self._pg.terminate(server.key)
        self._update_all_checked()

    # -- lifecycle --

    async def _begin(self) -> None:
        """Start one checking task per shard; `start` returns at once (see wait_checked)."""
        for name in self._shards:
            self._start_shard(name)

    async def _end(self) -> None:
        """Close every connection (stop has cancelled every task; bounded by the probe timeout)."""
        self._shard_tasks.clear()
        self._wakes.clear()
        if self._pg is not None:
            await self._pg.aclose()

    # -- the checking tasks --

    def _start_shard(self, name: str) -> None:
        self._wakes[name] = asyncio.Event()
        self._shard_tasks[name] = self._run_task(self._run_shard(name), f"health:{name}")

    def _run_task(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        # Failures are handled inside the tasks; anything escaping one is a bug and must be seen.
        return self._spawn(
            coro, name=name, crash_message=f"health: task {name} died; its servers are no longer checked"
        )

    async def _retire(self, servers: Iterable[_Server]) -> None:
        assert self._pg is not None
        for server in servers:
            async with server.lock:  # after a probe still running on it
                if server.key not in self._servers:
                    await self._pg.discard(server.key)

    async def _run_shard(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wakes[name]
        while True:
            wake.clear()
            await self._round(name, loop.time())
            servers = [self._servers[k] for k in self._shards.get(name, ()) if k in self._servers]
            deadline = min((s.status.next_check for s in servers), default=math.inf)
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline if deadline < math.inf else None):
                    await wake.wait()

    async def _round(self, name: str, now: float) -> None:
        """Check the shard's servers that are due: the primary first, then its replicas together."""
        servers = [self._servers[k] for k in self._shards.get(name, ()) if k in self._servers]
        due = [s for s in servers if s.status.next_check <= now + _DUE_SLACK]
        replicas = [s for s in due if s.key.role == "replica"]
        primary = next((s for s in servers if s.key.role == "primary"), None)
        # A replica's lag needs the primary's position from this round, so it goes along when up.
        if primary is not None and (primary in due or (replicas and primary.status.up)):
            await self._check(primary, schedule_from=now)
        await asyncio.gather(*(self._check(s, schedule_from=now) for s in replicas))

    async def _check(self, server: _Server, schedule_from: float | None) -> None:
        """Probe one server and apply the outcome; never raises (except when cancelled).

        `schedule_from`: the round's start, from which an up server's next check is counted; None
        (check_now) counts from the end of this check.
        """
        loop = asyncio.get_running_loop()
        timeout = self._settings.timeout
        async with server.lock:
            started = loop.time()
            try:
                async with asyncio.timeout(timeout):
                    reading = await self._probe(server.key, server.address)
            except Exception as exc:
                if server.retired:
                    return
                if not expected_failure(exc):
                    log.error("health: unexpected error checking %s", server.key, exc_info=exc)
                self._mark_failed(server.status, failure_reason(exc, timeout), loop.time())
            else:
                if server.retired:
                    return
                if started < server.reported_at and not server.status.up:
                    # The router saw it fail after this check began: the answer may predate that.
                    server.status.checked_at = loop.time()
                else:
                    base = loop.time() if schedule_from is None else schedule_from
                    self._mark_ok(server, reading, base + self._settings.interval)
        self._update_all_checked()

    def _mark_ok(self, server: _Server, reading: Reading, next_check: float) -> None:
        status, key = server.status, server.key
        expect_recovery = key.role == "replica"
        if reading.in_recovery != expect_recovery:
            if not server.role_warned:
                server.role_warned = True
                if reading.in_recovery:
                    log.warning("health: %s is in recovery; it counts as up, its WAL position as unknown", key)
                else:
                    log.warning("health: %s is not in recovery (promoted?); it counts as up, its lag as unknown", key)
        elif server.role_warned:
            server.role_warned = False
            log.info("health: %s is a %s again", key, key.role)
        if key.role == "primary":
            status.current_lsn = reading.current_lsn
        else:
            status.replay_lsn = reading.replay_lsn
            status.lag_bytes, status.lag_seconds = compute_lag(
                reading, self._primary_lsn(key.shard), server.caught_up_at
            )
            if status.lag_bytes == 0:
                server.caught_up_at = reading.now
        status.checked_at = asyncio.get_running_loop().time()
        status.next_check = next_check
        was_down, failures = not status.up, status.failures
        status.up, status.failures, status.last_error = True, 0, None
        if was_down:
            log.info("health: %s is up again (after %d failed checks)", key, failures)
            try:
                self._on_up(key)
            except Exception:
                log.exception("health: on_up callback failed for %s", key)

    def _mark_failed(self, status: ServerStatus, error: str, now: float) -> None:
        settings = self._settings
        status.failures += 1
        status.last_error = error
        status.checked_at = now
        delay = backoff_delay(status.failures, settings.interval, settings.max_backoff)
        status.next_check = now + delay
        if not status.up:
            log.debug("health: %s still down (%s); retrying in %.1fs", status.key, error, delay)
            return
        status.up = False
        log.warning("health: %s is down: %s; retrying in %.1fs", status.key, error, delay)
        try:
            self._on_down(status.key, error)
        except Exception:
            log.exception("health: on_down callback failed for %s", status.key)

    def _primary_lsn(self, shard: str) -> int | None:
        """The shard primary's WAL position from its last check, if that check succeeded."""
        for key in self._shards.get(shard, ()):
            if key.role == "primary":
                status = self._statuses.get(key)
                return status.current_lsn if status is not None and status.up else None
        return None

    def _update_all_checked(self) -> None:
        if all(server.status.checked_at is not None for server in self._servers.values()):
            self._all_checked.set()
        else:
            self._all_checked.clear()
