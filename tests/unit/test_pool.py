"""The pool on a fake connector, without sockets: checkout now or in line, the line's timeouts, the
capacity a server's pools share, release and discard, retiring, and the janitor's reap.

The pools are given the virtual clock of the test's loop, so timeouts fire at their exact times in
no wall time.
"""

from __future__ import annotations

import asyncio

import pytest

from router.core.pool import Pool, PoolKey, PoolSettings, ShardCapacity, Waiter
from router.errors import BackendUnavailable, PoolRetired, PoolTimeout
from router.testing.fakeconnections import Client, FakeConnection, FakeConnector, checked_out, turns
from router.testing.virtualtime import in_virtual_time


def settings(size: int = 2, wait: float = 5.0, idle: float = 0.0, lifetime: float = 0.0) -> PoolSettings:
    return PoolSettings(size=size, wait_timeout=wait, connect_timeout=1.0, idle_timeout=idle, lifetime=lifetime)


def make_pool(
    size: int = 2,
    *,
    connector: FakeConnector | None = None,
    capacity: ShardCapacity | None = None,
    database: str = "app",
    **kwargs: float,
) -> tuple[Pool[FakeConnection], FakeConnector]:
    connector = connector or FakeConnector()
    key = PoolKey("shard_a", "10.0.0.1", 5432, database, "router")
    clock = asyncio.get_running_loop().time
    return Pool(key, connector, settings(size, **kwargs), capacity, clock=clock), connector


@in_virtual_time
async def test_an_empty_pool_opens_a_connection_for_the_first_client_and_pools_it_after() -> None:
    pool, connector = make_pool()
    client = Client()
    waiter = pool.checkout(client.grant, client.fail)
    assert isinstance(waiter, Waiter)
    assert pool.total == 1  # the slot is taken before the opening runs
    await turns()
    assert client.granted == connector.opened
    conn = client.granted[0]
    assert pool.server_params == {"server_version": "16.1"}
    assert (pool.active_count, pool.idle_count) == (1, 0)
    pool.release(conn)
    assert (pool.active_count, pool.idle_count) == (0, 1)
    assert conn.detached == 1
    again = Client()
    assert pool.checkout(again.grant, again.fail) is conn  # at once, no callback
    assert again.granted == []


@in_virtual_time
async def test_the_most_recently_used_idle_connection_goes_first_unless_the_client_had_one() -> None:
    pool, _ = make_pool()
    first, second = await checked_out(pool), await checked_out(pool)
    pool.release(first)
    pool.release(second)
    client = Client()
    assert pool.checkout(client.grant, client.fail) is second
    pool.release(second)
    assert pool.checkout(client.grant, client.fail, preferred=first) is first


@in_virtual_time
async def test_a_client_waits_in_line_for_a_connection_released_by_another() -> None:
    pool, connector = make_pool(size=1)
    conn = await checked_out(pool)
    waiting = Client()
    assert isinstance(pool.checkout(waiting.grant, waiting.fail), Waiter)
    await turns()
    assert (waiting.granted, pool.waiting, pool.load) == ([], 1, 2)
    pool.release(conn)
    assert waiting.granted == [conn]
    assert len(connector.opened) == 1 and pool.waiting == 0


@in_virtual_time
async def test_the_line_times_out_in_order_at_the_wait_timeout() -> None:
    loop = asyncio.get_running_loop()
    pool, _ = make_pool(size=1, wait=2.0)
    await checked_out(pool)
    first, second = Client(), Client()
    pool.checkout(first.grant, first.fail)
    await asyncio.sleep(1.0)
    pool.checkout(second.grant, second.fail)
    await asyncio.sleep(1.0 + 1e-6)
    assert [type(e) for e in first.refused] == [PoolTimeout] and second.refused == []
    assert "within 2s (pool size 1)" in first.refused[0].message
    started = loop.time()
    await asyncio.sleep(1.0)
    assert [type(e) for e in second.refused] == [PoolTimeout]
    assert loop.time() - started == pytest.approx(1.0)
    assert pool.wait_timeouts == 2 and pool.waiting == 0


@in_virtual_time
async def test_a_waiter_that_left_is_skipped_and_does_not_time_out() -> None:
    pool, _ = make_pool(size=1, wait=1.0)
    conn = await checked_out(pool)
    gone, staying = Client(), Client()
    waiter = pool.checkout(gone.grant, gone.fail)
    assert isinstance(waiter, Waiter)
    pool.checkout(staying.grant, staying.fail)
    waiter.cancel()
    assert pool.waiting == 1
    pool.release(conn)
    assert (gone.granted, staying.granted) == ([], [conn])
    await asyncio.sleep(2.0)
    assert gone.refused == [] and pool.wait_timeouts == 0


@in_virtual_time
async def test_a_server_s_pools_share_its_capacity_and_take_each_other_s_idle_slots() -> None:
    capacity = ShardCapacity(1)
    connector = FakeConnector()
    app, _ = make_pool(size=1, connector=connector, capacity=capacity)
    tenant_db, _ = make_pool(size=1, connector=connector, capacity=capacity, database="tenant_acme")
    conn = await checked_out(app)
    app.release(conn)
    # The server is at its size with one idle connection of `app`: it makes room.
    other = await checked_out(tenant_db)
    assert conn.closed == "making room for another database on the shard"
    assert capacity.used == 1 and app.total == 0 and tenant_db.total == 1
    # Now `tenant_db`'s connection is busy: `app`'s client waits for the slot, not for `app`.
    waiting = Client()
    pool_waiter = app.checkout(waiting.grant, waiting.fail)
    assert isinstance(pool_waiter, Waiter)
    await turns()
    assert waiting.granted == []
    tenant_db.release(other)  # not pooled: a sibling waits for the slot
    assert other.closed == "making room for another database on the shard"
    await turns()
    assert len(waiting.granted) == 1 and waiting.granted[0] is connector.opened[-1]
    assert capacity.used == 1


@in_virtual_time
async def test_what_is_not_clean_is_closed_on_release_and_a_discard_frees_its_slot() -> None:
    pool, connector = make_pool(size=1)
    conn = await checked_out(pool)
    conn.clean = False  # say, still in a transaction
    pool.release(conn)
    assert conn.closed == "not reusable" and pool.idle_count == 0
    await turns()
    assert pool.total == 0
    conn = await checked_out(pool)
    waiting = Client()
    pool.checkout(waiting.grant, waiting.fail)
    pool.discard(conn, "client disconnected mid-transaction")
    assert conn.closed == "client disconnected mid-transaction"
    await turns()
    assert waiting.granted == [connector.opened[-1]] and len(connector.opened) == 3


@in_virtual_time
async def test_a_failed_opening_refuses_the_waiter_and_gives_its_slot_back() -> None:
    pool, connector = make_pool(size=1)
    connector.fail = BackendUnavailable("shard a: could not connect")
    client = Client()
    pool.checkout(client.grant, client.fail)
    await turns()
    assert [e.message for e in client.refused] == ["shard a: could not connect"]
    assert (pool.connect_failures, pool.total, pool.capacity.used) == (1, 0, 0)
    connector.fail = OSError("refused")
    pool.checkout(client.grant, client.fail)
    await turns()
    assert isinstance(client.refused[-1], BackendUnavailable)
    assert "refused" in client.refused[-1].message


@in_virtual_time
async def test_a_retired_pool_refuses_its_line_and_closes_connections_as_they_come_back() -> None:
    pool, _ = make_pool(size=2)
    busy = await checked_out(pool)
    idle = await checked_out(pool)
    pool.release(idle)
    client = Client()
    blocked, _ = make_pool(size=1)
    await checked_out(blocked)
    blocked.checkout(client.grant, client.fail)
    blocked.close()
    assert [type(e) for e in client.refused] == [PoolRetired]
    pool.close()
    assert idle.closed == "pool closed"
    with pytest.raises(PoolRetired):
        pool.checkout(client.grant, client.fail)
    pool.release(busy)
    assert busy.closed == "not reusable"


@in_virtual_time
async def test_an_opening_that_ends_after_the_pool_was_retired_is_closed() -> None:
    pool, connector = make_pool(size=1)
    connector.gate = asyncio.Event()
    client = Client()
    pool.checkout(client.grant, client.fail)
    await turns()
    pool.close()
    connector.gate.set()
    await turns()
    assert connector.opened[0].closed == "pool removed"
    assert [type(e) for e in client.refused] == [PoolRetired]


@in_virtual_time
async def test_reap_closes_idle_connections_past_the_idle_timeout_or_their_lifetime() -> None:
    loop = asyncio.get_running_loop()
    pool, _ = make_pool(size=2, idle=10.0)
    old, fresh = await checked_out(pool), await checked_out(pool)
    pool.release(old)
    await asyncio.sleep(5.0)
    pool.release(fresh)
    assert pool.reap(loop.time()) == 0
    assert pool.reap(loop.time() + 5.5) == 1 and old.closed == "idle timeout" and fresh.closed is None

    lasting, _ = make_pool(size=1, lifetime=30.0)
    conn = await checked_out(lasting)
    lasting.release(conn)
    assert lasting.reap(loop.time() + 31.0) == 1 and conn.closed == "idle timeout"


@in_virtual_time
async def test_a_connection_past_its_lifetime_is_closed_when_it_comes_back_or_is_reached_for() -> None:
    pool, connector = make_pool(size=2, lifetime=30.0)
    conn = await checked_out(pool)
    await asyncio.sleep(31.0)
    pool.release(conn)
    assert conn.closed == "not reusable"
    young = await checked_out(pool)
    pool.release(young)
    await asyncio.sleep(31.0)
    client = Client()
    assert isinstance(pool.checkout(client.grant, client.fail), Waiter)
    assert young.closed == "not reusable"
    await turns()
    assert client.granted == [connector.opened[-1]]


@in_virtual_time
async def test_close_idle_and_close_all_now() -> None:
    pool, _ = make_pool(size=3)
    conns = [await checked_out(pool) for _ in range(3)]
    pool.release(conns[0])
    pool.release(conns[1])
    assert pool.close_idle("server down: gone") == 2
    assert [c.closed for c in conns] == ["server down: gone", "server down: gone", None]
    pool.close_all_now()
    assert conns[2].closed == "router shutting down"


@in_virtual_time
async def test_acquire_returns_a_connection_and_gives_it_back_if_its_caller_left() -> None:
    pool, connector = make_pool(size=1)
    conn = await pool.acquire()
    assert conn is connector.opened[0]
    task = asyncio.get_running_loop().create_task(pool.acquire())
    await turns()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.waiting == 0
    pool.release(conn)
    assert pool.idle_count == 1


@in_virtual_time
async def test_on_return_hears_every_connection_that_comes_back_or_goes() -> None:
    pool, _ = make_pool(size=2)
    returns: list[int] = []
    pool.on_return = lambda: returns.append(pool.active_count)
    first, second = await checked_out(pool), await checked_out(pool)
    pool.release(first)
    pool.discard(second)
    assert returns == [1, 0]
