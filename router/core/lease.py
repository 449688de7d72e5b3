"""The lease: one client's hold on a server connection, for one transaction or one pinned session.

Owns taking a connection for a tenant's next request and giving it back: the tenant's hold (a
tenant being moved: its requests wait for the release, router.catalog.cluster), the choice of a
replica for a read (and the primary when the replica cannot be reached), the pool's waiting line
(answered by callbacks, not futures: a hand-over costs no task wake-up), a pool a reload retired
just now, the connection the client had last (preferred: no hand-over), the read-your-writes token
(per shard, the WAL position of this session's last write), and the end: released to the pool,
kept while the session pins it, or discarded when it is not clean.

Must not import any wire protocol, network, SQL or driver code: every front end serves its
tenants' transactions through it. The connection is opaque here (the pool's); what a hand-over
cleared is reported by the protocol layer (router.core.handover); the router is reached through
`LeaseRouter`, a part of the seam the network layer sees (router.net.context).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from mypy_extensions import mypyc_attr

from router.core.handover import Handover
from router.core.pool import Waiter
from router.errors import BackendUnavailable, PoolRetired, RouterError

if TYPE_CHECKING:
    from router.core.pool import Pool
    from router.core.target import Target

# A pool's connection, opaque to the lease (PostgreSQL's today, router.net.server).
Connection = Any


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class LeaseRouter(Protocol):
    """What the lease asks of the router (implemented by the composition root, router.app)."""

    # Tenants being held (moved), by tenant; a session waits while its tenant is in it.
    held: dict[str, list[Any]]
    read_your_writes: str  # off | session | tenant

    def resolve_target(self, tenant: str) -> Target:
        """Raises UnknownTenant / TenantSuspended."""
        ...

    def end_session(self, server: Connection, pool: Pool, reset: bool) -> None:
        """A client left while holding a clean server connection: give it back, wiped first in
        session mode or when `reset` (it holds session state such as locks or LISTENs)."""
        ...

    def read_pool(self, target: Target, min_lsn: int | None) -> Pool | None:
        """The pool of the replica a read should use (replayed at least `min_lsn`), or None: the primary."""
        ...

    def replica_failed(self, pool: Pool, exc: RouterError) -> None:
        """A replica could not serve a read: stop choosing it until its health check passes."""
        ...

    def note_commit(self, tenant: str, lsn: int) -> None:
        """A write of `tenant` committed at WAL position `lsn` (read-your-writes per tenant)."""
        ...

    def commit_pending(self, tenant: str) -> None:
        """A write of `tenant` has just committed at a position not read yet: until `commit_settled`,
        the tenant's reads (read-your-writes per tenant) go to the primary."""
        ...

    def commit_settled(self, tenant: str) -> None:
        """The position of a pending commit is noted (`note_commit`), or will never be."""
        ...

    def tenant_commit_position(self, tenant: str) -> int | None: ...

    def wait_for_release(
        self, tenant: str, resume: Callable[[], None], fail: Callable[[RouterError], None]
    ) -> Cancellable | None:
        """If the tenant is held, queue `resume` for when it is released and return the ticket."""
        ...


class LeaseState(enum.Enum):
    FREE = "free"  # no connection held, none asked for
    WAITING = "waiting"  # in a pool's line, or in a held tenant's: called back when it ends
    HOLDING = "holding"  # a connection is held (`conn`) for a transaction or a pinned session
    ENDED = "ended"  # the client left: nothing is taken any more


@mypyc_attr(allow_interpreted_subclasses=True)
class LeaseOwner:
    """Who a lease calls back when a wait ends (the client session, router.net.client). A base
    class rather than callables: compiled, a call on it is direct, where a stored bound method is a
    call through the interpreter's calling convention, on every transaction that waited in line."""

    def lease_granted(self) -> None:
        """The connection waited for is held now (`lease.conn`)."""
        raise NotImplementedError

    def lease_resume(self) -> None:
        """The wait ended without a connection (a hold released, a pool gone): ask again."""
        raise NotImplementedError

    def lease_refused(self, exc: RouterError) -> None:
        """The wait ended in an error, for the owner to answer."""
        raise NotImplementedError


# Enum members as C statics: compiled, `Phase.ROUTING` is a lookup through the enum's metaclass.
_HANDOVER_KEPT: Final = Handover.KEPT
_HANDOVER_SEQUENCES_RESET: Final = Handover.SEQUENCES_RESET
_HANDOVER_WIPED: Final = Handover.WIPED
_LEASE_ENDED: Final = LeaseState.ENDED
_LEASE_FREE: Final = LeaseState.FREE
_LEASE_HOLDING: Final = LeaseState.HOLDING
_LEASE_WAITING: Final = LeaseState.WAITING


class Lease:
    """One client's hold on a server connection. See the module docstring.

    The owner is called back when a wait ends: `granted` (the connection is `conn` now), `resume`
    (ask again: a hold was released, or the pool or replica asked went away), or `refused`."""

    __slots__ = (
        "_granted_callback",
        "_held",
        "_owner",
        "_pending_commit",
        "_refused_callback",
        "_released_callback",
        "_router",
        "_waiting",
        "_waiting_for",
        "conn",
        "last",
        "min_lsn",
        "pool",
        "state",
        "target",
        "track_writes",
    )

    def __init__(self, router: LeaseRouter, owner: LeaseOwner) -> None:
        self._router = router
        self._held = router.held  # the router's own dict: a field read per request, no call
        self._owner = owner
        # The pool's callbacks, made once: a bound method made per wait costs an allocation each.
        self._granted_callback: Callable[[Connection], None] = self._granted
        self._refused_callback: Callable[[RouterError], None] = self._refused
        self._released_callback: Callable[[], None] = self._released
        self.conn: Connection | None = None
        self.pool: Pool | None = None
        self.target: Target | None = None
        self.last: Connection | None = None  # the connection this client had last: preferred
        # What holds the owner's requests: a place in a pool's line, or in a held tenant's.
        self._waiting: Waiter | Cancellable | None = None
        self._waiting_for: tuple[Target, Pool] | None = None
        self.state = _LEASE_FREE
        # Read-your-writes: per shard, the WAL position of this session's last write there.
        self.min_lsn: dict[str, int] | None = None
        # Whether a write on the connection held would need its WAL position noted (a primary
        # whose reads replicas serve).
        self.track_writes = False
        self._pending_commit: str | None = None  # the tenant whose commit position is being read

    def _to(self, state: LeaseState) -> None:
        """The one place the state changes. An ended lease stays ended."""
        if self.state is not _LEASE_ENDED:
            self.state = state

    @property
    def waiting(self) -> bool:
        return self.state is _LEASE_WAITING

    def acquire(self, target: Target, read: bool, split: bool) -> Connection | None:
        """A connection for the owner's next request on `target`'s shard now, or None: it waits
        (a hold, or the pool's line) and is called back. `read`: the request may run on a replica;
        `split`: the session splits reads from writes. Raises RouterError when refused at once."""
        tenant = target.tenant
        if tenant in self._held:
            ticket = self._router.wait_for_release(tenant, self._released_callback, self._refused_callback)
            if ticket is not None:
                self._waiting = ticket
                self._to(_LEASE_WAITING)
                return None
        pool = target.pool
        if read and target.replicas:
            pool = self._router.read_pool(target, self._read_position(target)) or pool
        try:
            result = pool.checkout(self._granted_callback, self._refused_callback, self.last)
        except PoolRetired:
            # A reload removed the server just now: the current topology has the answer.
            target = self._router.resolve_target(tenant)
            pool = target.pool
            result = pool.checkout(self._granted_callback, self._refused_callback, self.last)
        # Whether a write here would need its WAL position noted; whether it did write is for the
        # protocol to follow until the transaction ends.
        self.track_writes = bool(target.replicas) and self._tracks_writes(split)
        if isinstance(result, Waiter):
            self._waiting = result
            self._waiting_for = (target, pool)
            self._to(_LEASE_WAITING)
            return None
        self._hold(result, target, pool)
        return result

    def _tracks_writes(self, split: bool) -> bool:
        mode = self._router.read_your_writes
        return mode == "tenant" or (mode == "session" and split)

    def _read_position(self, target: Target) -> int | None:
        """The WAL position a replica must have replayed to serve this session's reads."""
        mode = self._router.read_your_writes
        if mode == "tenant":
            return self._router.tenant_commit_position(target.tenant)
        if mode == "session" and self.min_lsn is not None:
            return self.min_lsn.get(target.shard)
        return None

    def _hold(self, conn: Connection, target: Target, pool: Pool) -> None:
        self._to(_LEASE_HOLDING)
        self.conn = conn
        self.pool = pool
        self.target = target
        self.last = conn

    def _released(self) -> None:
        """The tenant's hold was released: ask again (its target may have moved)."""
        self._waiting = None
        if self.state is _LEASE_WAITING:
            self._to(_LEASE_FREE)
            self._owner.lease_resume()

    def _granted(self, conn: Connection) -> None:
        self._waiting = None
        waiting = self._waiting_for
        self._waiting_for = None
        if waiting is None:
            conn.close()
            return
        target, pool = waiting
        if self.state is _LEASE_ENDED:
            pool.release(conn)
            return
        self._hold(conn, target, pool)
        self._owner.lease_granted()

    def _refused(self, exc: RouterError) -> None:
        self._waiting = None
        waiting = self._waiting_for
        self._waiting_for = None
        if self.state is _LEASE_ENDED:
            return
        self._to(_LEASE_FREE)
        if isinstance(exc, PoolRetired):
            # The pool was removed by a reload while we waited: ask again under the new topology.
            self._owner.lease_resume()
            return
        if waiting is not None and waiting[1] is not waiting[0].pool and isinstance(exc, BackendUnavailable):
            # A replica could not be reached before the read started: mark it, and ask again,
            # which sends the read to another replica or to the primary, without an error.
            self._router.replica_failed(waiting[1], exc)
            self._owner.lease_resume()
            return
        self._owner.lease_refused(exc)

    def count_handover(self, handover: Handover) -> None:
        """What taking the connection cost, as the protocol's hand-over reports it (pool counters)."""
        pool = self.pool
        if handover is _HANDOVER_KEPT or pool is None:
            return
        pool.handovers += 1
        if handover is _HANDOVER_WIPED:
            pool.wipes += 1
        elif handover is _HANDOVER_SEQUENCES_RESET:
            pool.sequence_resets += 1

    def commit_pending(self, tenant: str | None) -> None:
        """The transaction that ended on the connection may have committed a write, at a position
        not read yet: the client has its answer, so the tenant's other sessions, which may read
        meanwhile, must not read from a replica until `commit_settled`."""
        if tenant is not None:
            self._pending_commit = tenant
            self._router.commit_pending(tenant)

    def commit_settled(self) -> None:
        """The pending commit's position is noted (`commit_noted`), or will never be."""
        tenant = self._pending_commit
        if tenant is not None:
            self._pending_commit = None
            self._router.commit_settled(tenant)

    def commit_noted(self, tenant: str | None, lsn: int) -> None:
        """The transaction that ended on the connection committed a write at `lsn`: this session's
        (or tenant's) next reads go only to replicas that have replayed it."""
        self.track_writes = False
        if self.min_lsn is None:
            self.min_lsn = {}
        shard = self.pool.key.shard if self.pool is not None else ""
        self.min_lsn[shard] = max(lsn, self.min_lsn.get(shard, lsn))
        if tenant is not None:
            self._router.note_commit(tenant, lsn)

    def release(self) -> None:
        """The transaction ended: the connection goes back to its pool."""
        conn, pool = self.conn, self.pool
        self.conn = None
        if conn is None or pool is None:
            return
        self._to(_LEASE_FREE)
        pool.transactions += 1
        self.track_writes = False
        pool.release(conn)

    def lost(self, reason: str) -> Connection | None:
        """The connection broke: out of the pool. Returns it (None if it was not this lease's)."""
        conn, pool = self.conn, self.pool
        self.conn = None
        if conn is not None and pool is not None:
            self._to(_LEASE_FREE)
            pool.discard(conn, reason)
        return conn

    def end(self, clean: bool, reset: bool) -> None:
        """The client left: stop waiting, and give the connection back (wiped first when `reset`,
        in session mode too, router.app) if `clean`; otherwise it never serves anyone again."""
        if self.state is _LEASE_ENDED:
            return
        self._to(_LEASE_ENDED)
        waiting = self._waiting
        self._waiting = None
        if waiting is not None:
            waiting.cancel()  # leave the pool's (or the hold's) line
        conn, pool = self.conn, self.pool
        self.conn = None
        if conn is not None and pool is not None:
            if clean:
                self._router.end_session(conn, pool, reset)
            else:
                # Mid-transaction or mid-response: never hand this session state to anyone.
                pool.discard(conn, "client disconnected mid-transaction")
