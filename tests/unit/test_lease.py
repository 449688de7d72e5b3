"""The lease (router.core.lease) on real pools of unconnected server connections and a fake router:
checkout, the waiting line, holds, replica choice and failover, a retired pool, read-your-writes
positions, release and the end of a session. No sockets: connections are handed around, never opened."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from router.core.handover import Handover
from router.core.lease import Lease, LeaseOwner, LeaseState
from router.core.pool import Pool, PoolKey, PoolSettings
from router.core.replicas import ReplicaMember
from router.core.target import Target
from router.errors import BackendUnavailable, PoolRetired, PoolTimeout, RouterError, TenantHeld
from router.net.server import ServerConnection, ServerState


def make_pool(shard: str = "a", host: str = "primary", wait_timeout: float = 5.0) -> Pool:
    # Size 0: a waiter never makes the pool open a connection; it is granted only what is released.
    return Pool(PoolKey(shard, host, 5432, "db", "router"), None, PoolSettings(0, wait_timeout, 1.0, 0.0, 0.0))


def idle_connection(pool: Pool, label: str = "c") -> ServerConnection:
    conn = ServerConnection(label, lambda _conn: None)
    conn.state = ServerState.IDLE
    pool.release(conn)
    return conn


class Ticket:
    def __init__(self, resume: Callable[[], None], fail: Callable[[RouterError], None]) -> None:
        self.resume, self.fail, self.cancelled = resume, fail, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeRouter:
    def __init__(self, target: Target, read_your_writes: str = "off") -> None:
        self.held: dict[str, list[Any]] = {}
        self.read_your_writes = read_your_writes
        self.targets = {target.tenant: target}
        self.replica: Pool | None = None
        self.asked_positions: list[int | None] = []
        self.failed: list[tuple[Pool, RouterError]] = []
        self.ended: list[tuple[ServerConnection, Pool, bool]] = []
        self.commits: list[tuple[str, int]] = []
        self.events: list[str] = []
        self.tenant_position: int | None = None
        self.tickets: list[Ticket] = []

    def resolve_target(self, tenant: str) -> Target:
        return self.targets[tenant]

    def end_session(self, server: ServerConnection, pool: Pool, reset: bool) -> None:
        self.ended.append((server, pool, reset))

    def read_pool(self, target: Target, min_lsn: int | None) -> Pool | None:
        self.asked_positions.append(min_lsn)
        return self.replica

    def replica_failed(self, pool: Pool, exc: RouterError) -> None:
        self.failed.append((pool, exc))

    def note_commit(self, tenant: str, lsn: int) -> None:
        self.commits.append((tenant, lsn))

    def commit_pending(self, tenant: str) -> None:
        self.events.append(f"pending {tenant}")

    def commit_settled(self, tenant: str) -> None:
        self.events.append(f"settled {tenant}")

    def tenant_commit_position(self, tenant: str) -> int | None:
        return self.tenant_position

    def wait_for_release(
        self, tenant: str, resume: Callable[[], None], fail: Callable[[RouterError], None]
    ) -> Ticket | None:
        if tenant not in self.held:
            return None
        ticket = Ticket(resume, fail)
        self.tickets.append(ticket)
        return ticket


class Owner(LeaseOwner):
    """The session side of a lease: what it was called back with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.refusals: list[RouterError] = []

    def lease_granted(self) -> None:
        self.calls.append("granted")

    def lease_resume(self) -> None:
        self.calls.append("resume")

    def lease_refused(self, exc: RouterError) -> None:
        self.calls.append("refused")
        self.refusals.append(exc)


def setup(
    read_your_writes: str = "off", replicated: bool = False, wait_timeout: float = 5.0
) -> tuple[Lease, FakeRouter, Owner, Target]:
    primary = make_pool(wait_timeout=wait_timeout)
    replicas = ()
    replica_pool = None
    if replicated:
        replica_pool = make_pool(host="replica", wait_timeout=wait_timeout)
        replicas = (ReplicaMember("replica-key", 1, replica_pool),)  # type: ignore[arg-type]
    target = Target("acme", "a", primary, {}, replicas)
    router = FakeRouter(target, read_your_writes)
    router.replica = replica_pool
    owner = Owner()
    return Lease(router, owner), router, owner, target


def test_an_idle_connection_is_held_at_once_and_released_to_its_pool() -> None:
    lease, _router, owner, target = setup()
    conn = idle_connection(target.pool)
    assert lease.acquire(target, read=False, split=False) is conn
    assert (lease.conn, lease.pool, lease.target, lease.last) == (conn, target.pool, target, conn)
    assert lease.state is LeaseState.HOLDING
    assert target.pool.idle_count == 0
    lease.release()
    assert lease.conn is None
    assert lease.state is LeaseState.FREE
    assert target.pool.transactions == 1
    assert target.pool.idle_count == 1
    assert owner.calls == []


def test_the_connection_a_client_had_last_is_preferred() -> None:
    lease, _router, _owner, target = setup()
    first = idle_connection(target.pool, "first")
    assert lease.acquire(target, read=False, split=False) is first
    lease.release()
    idle_connection(target.pool, "second")  # the most recently used: taken by anyone else
    assert lease.acquire(target, read=False, split=False) is first


async def test_a_client_waits_in_line_and_is_granted_the_next_released_connection() -> None:
    lease, _router, owner, target = setup()
    assert lease.acquire(target, read=False, split=False) is None
    assert lease.waiting
    assert target.pool.waiting == 1
    conn = idle_connection(target.pool)
    assert owner.calls == ["granted"]
    assert not lease.waiting
    assert (lease.conn, lease.pool) == (conn, target.pool)


async def test_a_wait_that_times_out_is_refused() -> None:
    lease, _router, owner, target = setup(wait_timeout=0.01)
    assert lease.acquire(target, read=False, split=False) is None
    await asyncio.sleep(0.05)
    assert owner.calls == ["refused"]
    assert isinstance(owner.refusals[0], PoolTimeout)
    assert not lease.waiting


async def test_a_held_tenant_waits_for_the_release_then_asks_again() -> None:
    lease, router, owner, target = setup()
    idle_connection(target.pool)
    router.held["acme"] = []
    assert lease.acquire(target, read=False, split=False) is None
    assert lease.waiting
    assert target.pool.idle_count == 1  # nothing taken while held
    router.tickets[0].resume()
    assert owner.calls == ["resume"]
    assert not lease.waiting
    del router.held["acme"]
    assert lease.acquire(target, read=False, split=False) is not None


def test_a_hold_that_is_not_released_in_time_refuses_the_request() -> None:
    lease, router, owner, target = setup()
    router.held["acme"] = []
    assert lease.acquire(target, read=False, split=False) is None
    router.tickets[0].fail(TenantHeld("moved too slowly"))
    assert owner.calls == ["refused"]
    assert not lease.waiting


def test_a_read_goes_to_the_replica_the_router_chooses_and_a_write_to_the_primary() -> None:
    lease, router, _owner, target = setup(replicated=True)
    assert router.replica is not None
    on_replica = idle_connection(router.replica, "replica")
    on_primary = idle_connection(target.pool, "primary")
    assert lease.acquire(target, read=True, split=True) is on_replica
    assert lease.pool is router.replica
    lease.release()
    assert lease.acquire(target, read=False, split=True) is on_primary
    assert router.replica.transactions == 1


def test_no_replica_chosen_sends_the_read_to_the_primary() -> None:
    lease, router, _owner, target = setup(replicated=True)
    router.replica = None
    conn = idle_connection(target.pool)
    assert lease.acquire(target, read=True, split=True) is conn


async def test_an_unreachable_replica_is_marked_and_the_read_asked_again_without_an_error() -> None:
    lease, router, owner, target = setup(replicated=True)
    replica = router.replica
    assert replica is not None
    assert lease.acquire(target, read=True, split=True) is None
    failure = BackendUnavailable("replica down")
    replica._waiters[0].refuse(failure)
    assert router.failed == [(replica, failure)]
    assert owner.calls == ["resume"]
    router.replica = None  # the router no longer chooses it
    conn = idle_connection(target.pool)
    assert lease.acquire(target, read=True, split=True) is conn


async def test_an_unreachable_primary_refuses_the_request() -> None:
    lease, router, owner, target = setup()
    assert lease.acquire(target, read=False, split=False) is None
    target.pool._waiters[0].refuse(BackendUnavailable("primary down"))
    assert router.failed == []
    assert owner.calls == ["refused"]


def test_a_pool_retired_at_checkout_is_replaced_by_the_current_target() -> None:
    lease, router, _owner, target = setup()
    target.pool.close()
    moved = Target("acme", "b", make_pool("b", "elsewhere"), {})
    router.targets["acme"] = moved
    conn = idle_connection(moved.pool)
    assert lease.acquire(target, read=False, split=False) is conn
    assert (lease.pool, lease.target) == (moved.pool, moved)


async def test_a_pool_retired_while_waiting_makes_the_client_ask_again() -> None:
    lease, _router, owner, target = setup()
    assert lease.acquire(target, read=False, split=False) is None
    target.pool.close()
    assert owner.calls == ["resume"]
    assert not lease.waiting


@pytest.mark.parametrize(
    ("mode", "split", "tracks"),
    [("off", True, False), ("session", False, False), ("session", True, True), ("tenant", False, True)],
)
def test_writes_are_tracked_on_a_replicated_primary_by_read_your_writes_mode(
    mode: str, split: bool, tracks: bool
) -> None:
    lease, _router, _owner, target = setup(mode, replicated=True)
    idle_connection(target.pool)
    lease.acquire(target, read=False, split=split)
    assert lease.track_writes is tracks


def test_a_noted_commit_sets_the_position_the_sessions_next_reads_wait_for() -> None:
    lease, router, _owner, target = setup("session", replicated=True)
    idle_connection(target.pool)
    lease.acquire(target, read=False, split=True)
    lease.commit_noted("acme", 200)
    lease.commit_noted("acme", 100)  # positions only move forward
    assert lease.min_lsn == {"a": 200}
    assert router.commits == [("acme", 200), ("acme", 100)]
    assert not lease.track_writes
    lease.release()
    assert router.replica is not None
    idle_connection(router.replica)
    lease.acquire(target, read=True, split=True)
    assert router.asked_positions == [200]


def test_per_tenant_read_your_writes_asks_the_tenants_position() -> None:
    lease, router, _owner, target = setup("tenant", replicated=True)
    router.tenant_position = 42
    assert router.replica is not None
    idle_connection(router.replica)
    lease.acquire(target, read=True, split=False)
    assert router.asked_positions == [42]


def test_a_pending_commit_is_settled_once() -> None:
    lease, router, _owner, _target = setup("tenant")
    lease.commit_pending("acme")
    lease.commit_settled()
    lease.commit_settled()
    lease.commit_pending(None)  # no tenant: nothing to hold the tenant's reads for
    assert router.events == ["pending acme", "settled acme"]


def test_hand_overs_are_counted_on_the_pool() -> None:
    lease, _router, _owner, target = setup()
    idle_connection(target.pool)
    lease.acquire(target, read=False, split=False)
    for handover in (Handover.KEPT, Handover.AS_IS, Handover.SEQUENCES_RESET, Handover.WIPED):
        lease.count_handover(handover)
    pool = target.pool
    assert (pool.handovers, pool.sequence_resets, pool.wipes) == (3, 1, 1)


def test_a_clean_connection_goes_back_through_the_router_when_the_client_leaves() -> None:
    lease, router, _owner, target = setup()
    conn = idle_connection(target.pool)
    lease.acquire(target, read=False, split=False)
    lease.end(clean=True, reset=True)
    assert router.ended == [(conn, target.pool, True)]
    assert lease.conn is None
    assert lease.state is LeaseState.ENDED


def test_a_connection_left_mid_transaction_is_discarded() -> None:
    lease, router, _owner, target = setup()
    conn = idle_connection(target.pool)
    lease.acquire(target, read=False, split=False)
    lease.end(clean=False, reset=False)
    assert router.ended == []
    assert conn not in list(target.pool.connections())
    assert target.pool.idle_count == 0


async def test_a_client_that_leaves_while_waiting_leaves_the_line() -> None:
    lease, _router, owner, target = setup()
    assert lease.acquire(target, read=False, split=False) is None
    lease.end(clean=False, reset=False)
    assert target.pool.waiting == 0
    idle_connection(target.pool)
    assert owner.calls == []
    assert target.pool.idle_count == 1


def test_a_lost_connection_is_discarded_and_returned() -> None:
    lease, _router, _owner, target = setup()
    conn = idle_connection(target.pool)
    lease.acquire(target, read=False, split=False)
    assert lease.lost("server went away") is conn
    assert lease.conn is None
    assert lease.lost("again") is None
    assert target.pool.idle_count == 0


def test_a_pool_retired_error_is_a_backend_unavailable() -> None:
    # The replica fail-over above relies on it: a retired replica pool is asked again, not failed.
    assert issubclass(PoolRetired, BackendUnavailable)
