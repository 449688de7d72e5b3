"""Server connection pools: the only code that changes which connections a pool holds.

One pool per (shard, server address, database, server role). A pool is bounded; `acquire` takes an
idle connection, opens a new one while under the bound, or waits in line (FIFO) up to the wait
timeout, and it survives cancellation: a connection handed to a waiter that has gone away goes
back to the pool. `release` takes back only clean connections; anything else is closed, never
pooled. Timers (idle timeout, lifetime) are driven from outside through `reap`.

Generic over its connections: a `Connector` opens one (PostgreSQL server connections today, given
by the composition root), and the pool asks of it only what its base class `PooledConnection`
declares. Must not import any wire protocol or network code. Compiled with mypyc (router/native.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol

from mypy_extensions import mypyc_attr
from typing_extensions import TypeVar

from router.errors import BackendUnavailable, PoolRetired, PoolTimeout, RouterError

log = logging.getLogger(__name__)

MAX_REMEMBERED_LOGINS = 1024


@dataclass(frozen=True, slots=True)
class PoolKey:
    shard: str
    host: str
    port: int
    database: str
    user: str

    @property
    def label(self) -> str:
        return f"shard {self.shard} ({self.database}@{self.host}:{self.port})"


@mypyc_attr(allow_interpreted_subclasses=True)
class PooledConnection:
    """What a pool needs of a connection, whatever protocol it speaks: a base class rather than a
    Protocol, so that the compiled pool reaches these fields and methods directly (through a
    Protocol, each is a lookup by name, and each float a new object: measured per transaction)."""

    def __init__(self, created_at: float) -> None:
        # Server parameters reported at login (PostgreSQL's ParameterStatus): the pool keeps the last.
        self.params: dict[str, str] = {}
        self.created_at = created_at  # the pool's clock when opened: the lifetime counts from here
        self.last_used = created_at  # ... when last pooled: the idle timeout counts from here

    @property
    def is_clean(self) -> bool:
        """Open, with nothing outstanding and no transaction: safe to hand to another client."""
        raise NotImplementedError

    def detach(self) -> None:
        """No client is attached any more: the pool has it back."""
        raise NotImplementedError

    def close(self, reason: str = "closed") -> None:
        raise NotImplementedError


# The connection type of a pool. Code that does not care which (replica choice, targets, metrics)
# writes plain `Pool`, which is `Pool[Any]`.
C = TypeVar("C", bound=PooledConnection, default=Any)


class ShardCapacity:
    """The server connections one shard may have, shared by all its pools (the shard's own
    database and every database-per-tenant database on it): `pool.size` is per shard."""

    __slots__ = ("pools", "size", "used")

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0  # connections open or being opened, across the shard's pools
        self.pools: list[Pool[Any]] = []

    def reserve(self, requester: Pool[Any]) -> bool:
        """Take a slot for a new connection, closing an idle one of a sibling pool if that makes room."""
        if self.used < self.size:
            self.used += 1
            return True
        # The evicted connection's slot passes straight to the requester (`used` is unchanged).
        return any(pool is not requester and pool.evict_idle() for pool in self.pools)

    def sibling_waiting(self, pool: Pool[Any]) -> bool:
        return self.used >= self.size and any(p is not pool and p.has_waiters for p in self.pools)

    def give_back(self, releaser: Pool[Any]) -> None:
        self.used -= 1
        # Someone of another pool on this shard may be waiting for exactly this slot.
        for pool in self.pools:
            if pool is not releaser and pool.has_waiters:
                pool.wake_one_opener()
                return


class Waiter(Generic[C]):
    """A client waiting in line for a server connection: called back with one, or with an error
    when the wait times out (at `deadline`, on the pool's clock). Callbacks, not futures, so a
    hand-over costs no task wake-up; and no timer of its own (the pool keeps one for its line)."""

    __slots__ = ("_fail", "_grant", "deadline", "done")

    def __init__(self, grant: Callable[[C], None], fail: Callable[[RouterError], None], deadline: float = 0.0) -> None:
        self._grant = grant
        self._fail = fail
        self.deadline = deadline
        self.done = False

    def give(self, conn: C) -> bool:
        if self.done:
            return False
        self._finish()
        self._grant(conn)
        return True

    def refuse(self, exc: RouterError) -> None:
        if not self.done:
            self._finish()
            self._fail(exc)

    def cancel(self) -> None:
        self._finish()

    def _finish(self) -> None:
        self.done = True


class Connector(Protocol[C]):
    """How a pool opens a connection: connected, logged in and ready for use, or an exception that
    refuses it. `pool.connection_closed` must be called when the connection closes, whoever closes
    it. A connection it does not return is its to close."""

    def __call__(self, pool: Pool[C]) -> Awaitable[C]: ...


@dataclass(frozen=True, slots=True)
class PoolSettings:
    size: int
    wait_timeout: float
    connect_timeout: float
    idle_timeout: float
    lifetime: float


class Pool(Generic[C]):
    """A bounded pool of server connections for one PoolKey."""

    def __init__(
        self,
        key: PoolKey,
        connect: Connector[C],
        settings: PoolSettings,
        capacity: ShardCapacity | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self._connect = connect
        # What deadlines and ages are measured on: the connections' own clock (unit tests give
        # their loop's virtual one). A field, so the compiled pool calls it without a lookup.
        self._clock = clock
        self.capacity = capacity if capacity is not None else ShardCapacity(settings.size)
        self.capacity.pools.append(self)
        self.settings = settings
        # Read on every checkout that waits and every release: kept as plain fields (compiled, a
        # field read) rather than looked up on the settings each time.
        self._wait_timeout: float = settings.wait_timeout
        self._lifetime: float = settings.lifetime
        self._idle: deque[C] = deque()
        self._all: set[C] = set()
        self._opening = 0
        self._waiters: deque[Waiter[C]] = deque()
        self._line_timer: asyncio.TimerHandle | None = None  # expires the head of the line
        self.closed = False
        # Server parameters (server_version, ...) as last reported by one of this pool's connections.
        self.server_params: dict[str, str] = {}
        # Server statement names that parsed successfully on this pool's database: a client's Parse
        # of one of these, while it has no server connection, is answered without taking one.
        self.valid_statements: set[str] = set()
        # What logins with a given set of session settings must be told (ParameterStatus values).
        self.login_parameters: dict[frozenset[tuple[str, str]], dict[str, str]] = {}
        # Plain counters, read by the metrics collector at scrape time (no hot-path cost).
        self.transactions = 0
        self.handovers = 0  # connections passed from one client to another (router.protocol.pg.handover)
        self.wipes = 0  # ... of which wiped first (exact hand-over of a session that may hold state)
        self.sequence_resets = 0  # ... of which only DISCARD SEQUENCES first (the session wrote rows)
        self.wait_timeouts = 0
        self.connect_failures = 0
        # Called (without arguments) whenever a connection comes back or goes, while set: how a
        # tenant hold learns that transactions have ended (router.core.holds). Normally None.
        self.on_return: Callable[[], None] | None = None

    # --- sizes -----------------------------------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self._all) + self._opening

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def active_count(self) -> int:
        return len(self._all) - len(self._idle)

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done)

    @property
    def load(self) -> int:
        """Connections in use plus clients in line: what replica choice compares (router.core.replicas)."""
        return self.active_count + self.waiting

    def connections(self) -> Iterator[C]:
        return iter(list(self._all))

    def remember_login_parameters(self, key: frozenset[tuple[str, str]], parameters: dict[str, str]) -> None:
        if len(self.login_parameters) >= MAX_REMEMBERED_LOGINS:
            self.login_parameters.clear()  # bounded: a client varying its settings cannot grow it
        self.login_parameters[key] = parameters

    # --- acquire / release ----------------------------------------------------------------------

    def acquire_idle(self, preferred: C | None = None) -> C | None:
        """An idle connection right now, or None: the fast path, without a task or a wait.
        `preferred` (the client's previous connection) is taken if idle: no hand-over, no reset."""
        idle = self._idle
        if preferred is not None and not self._waiters and preferred.is_clean:
            try:
                idle.remove(preferred)
            except ValueError:
                pass
            else:
                if not self._past_lifetime(preferred):
                    return preferred
                self._destroy(preferred)
        while idle and not self._waiters:
            conn = idle.pop()  # the most recently used: its caches are warmest
            if conn.is_clean and not self._past_lifetime(conn):
                return conn
            self._destroy(conn)
        return None

    def checkout(
        self,
        grant: Callable[[C], None],
        fail: Callable[[RouterError], None],
        preferred: C | None = None,
    ) -> C | Waiter[C]:
        """A connection now, or a Waiter in line that will be granted one (an idle connection, or
        a new one while the pool is under its size) or failed with PoolTimeout/BackendUnavailable."""
        if self.closed:
            raise PoolRetired(f"{self.key.label} has been removed from the topology")
        conn = self.acquire_idle(preferred)
        if conn is not None:
            return conn
        waiter: Waiter[C] = Waiter(grant, fail, self._clock() + self._wait_timeout)
        self._waiters.append(waiter)
        if self._line_timer is None:
            self._arm_line_timer(waiter.deadline)
        self.wake_one_opener()
        return waiter

    def _arm_line_timer(self, deadline: float) -> None:
        # One timer for the whole line: waiters join it in deadline order (one wait_timeout for all),
        # so the earliest live one is the next to expire. A timer per waiter would cost every
        # transaction that waits a timer handle and a heap push.
        delay = max(0.0, deadline - self._clock())
        self._line_timer = asyncio.get_running_loop().call_later(delay, self._time_out_waiters)

    def _time_out_waiters(self) -> None:
        self._line_timer = None
        now = self._clock()
        waiters = self._waiters
        while waiters and (waiters[0].done or waiters[0].deadline <= now):
            waiter = waiters.popleft()
            if waiter.done:
                continue
            self.wait_timeouts += 1
            waiter.refuse(
                PoolTimeout(
                    f"no server connection to {self.key.label} became free within "
                    f"{self.settings.wait_timeout:g}s (pool size {self.settings.size})",
                    hint="raise pool.size or pool.wait_timeout, or shorten transactions",
                )
            )
        if waiters:
            self._arm_line_timer(waiters[0].deadline)

    async def acquire(self) -> C:
        """A clean server connection, or PoolTimeout / BackendUnavailable."""
        future: asyncio.Future[C] = asyncio.get_running_loop().create_future()

        def grant(conn: C) -> None:
            if future.done():
                self.release(conn)  # the caller left (cancelled): give it back
            else:
                future.set_result(conn)

        def fail(exc: RouterError) -> None:
            if not future.done():
                future.set_exception(exc)

        result = self.checkout(grant, fail)
        if not isinstance(result, Waiter):
            return result
        try:
            return await future
        except asyncio.CancelledError:
            result.cancel()
            raise

    async def _open(self) -> C:
        """Open a connection in a slot already reserved (counted in `_opening` and the capacity)."""
        try:
            conn = await self._connect(self)
        except BaseException:
            self.connect_failures += 1
            self._opening -= 1
            self.capacity.give_back(self)
            # A slot came free for someone else, who may now try (and fail fast) on their own.
            self.wake_one_opener()
            raise
        self._opening -= 1
        self._all.add(conn)
        self.server_params.update(conn.params)
        if self.closed:
            conn.close("pool removed")
            raise PoolRetired(f"{self.key.label} has been removed from the topology")
        return conn

    def release(self, conn: C) -> None:
        """Take a connection back: pooled if clean, closed otherwise."""
        conn.detach()
        self._take_back(conn)
        if self.on_return is not None:
            self.on_return()

    def _take_back(self, conn: C) -> None:
        if self.closed or not conn.is_clean or self._past_lifetime(conn):
            self._destroy(conn)
            self.wake_one_opener()
            return
        waiters = self._waiters
        while waiters:
            if waiters.popleft().give(conn):
                return
        if self.capacity.sibling_waiting(self):
            # Another database on this shard is waiting for a slot: this connection makes room.
            self._destroy(conn, "making room for another database on the shard")
            return
        conn.last_used = self._clock()  # idle from now: the janitor's idle timeout counts from here
        self._idle.append(conn)

    def discard(self, conn: C, reason: str = "discarded") -> None:
        conn.detach()
        self._destroy(conn, reason)
        self.wake_one_opener()
        if self.on_return is not None:
            self.on_return()

    def _destroy(self, conn: C, reason: str = "not reusable") -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        self._forget(conn)
        conn.close(reason)

    def connection_closed(self, conn: C) -> None:
        """A connection of this pool closed (its connector calls this, whoever closed it)."""
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        if self._forget(conn):
            self.wake_one_opener()

    def _forget(self, conn: C) -> bool:
        """Drop a connection from the pool's members, returning its slot exactly once."""
        if conn not in self._all:
            return False
        self._all.discard(conn)
        self.capacity.give_back(self)
        return True

    def evict_idle(self) -> bool:
        """Close one idle connection whose slot a sibling pool on the shard takes over."""
        if not self._idle:
            return False
        conn = self._idle.popleft()
        self._all.discard(conn)  # not _forget: the slot is handed over, not given back
        conn.close("making room for another database on the shard")
        return True

    @property
    def has_waiters(self) -> bool:
        return any(not w.done for w in self._waiters)

    def wake_one_opener(self) -> None:
        """A slot came free: let the first waiter open a connection of its own. The slot is
        reserved here, before the task runs, so one turn of the loop cannot overshoot the size."""
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.done:
                self._waiters.popleft()
                continue
            if not self.capacity.reserve(self):
                return
            self._waiters.popleft()
            self._opening += 1
            task = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(functools.partial(_hand_over, self, waiter))
            return

    def _past_lifetime(self, conn: C) -> bool:
        # The clock is read only when connections have a lifetime (on every release otherwise).
        return self._lifetime > 0 and self._expired(conn, self._clock())

    def _expired(self, conn: C, now: float) -> bool:
        lifetime = self._lifetime
        return lifetime > 0 and now - conn.created_at > lifetime

    # --- housekeeping (called by the janitor) ----------------------------------------------------

    def reap(self, now: float) -> int:
        """Close idle connections past the idle timeout or their lifetime; return how many."""
        idle_timeout = self.settings.idle_timeout
        closed = 0
        for conn in list(self._idle):
            if (idle_timeout and now - conn.last_used > idle_timeout) or self._expired(conn, now):
                self._destroy(conn, "idle timeout")
                closed += 1
        return closed

    def close_idle(self, reason: str = "closed for a database-level command") -> int:
        """Close every idle connection now (the pool stays open); return how many."""
        idle = list(self._idle)
        for conn in idle:
            self._destroy(conn, reason)
        return len(idle)

    def close(self) -> None:
        """Stop handing out connections; close idle ones now, active ones when released."""
        self.closed = True
        for conn in list(self._idle):
            self._destroy(conn, "pool closed")
        for waiter in self._waiters:
            waiter.refuse(PoolRetired(f"{self.key.label} has been removed from the topology"))
        self._waiters.clear()

    def close_all_now(self) -> None:
        self.close()
        for conn in list(self._all):
            self._destroy(conn, "router shutting down")


def _hand_over(pool: Pool[C], waiter: Waiter[C], task: asyncio.Future[C]) -> None:
    """A connection opened on behalf of a waiter: give it to them, or back to the pool if they left."""
    if task.cancelled():
        waiter.refuse(BackendUnavailable(f"opening a connection to {pool.key.label} was cancelled"))
        return
    exc = task.exception()
    if exc is not None:
        waiter.refuse(exc if isinstance(exc, RouterError) else BackendUnavailable(f"{pool.key.label}: {exc}"))
        return
    conn = task.result()
    if not waiter.give(conn):
        pool.release(conn)
