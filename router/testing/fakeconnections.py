"""Connections for unit tests of the pool and of what uses it, with no server and no socket: a
connection that records what the pool did to it, a connector that opens them (or fails, or waits
to), and a client's pair of checkout callbacks. They follow the test loop's clock.
"""

from __future__ import annotations

import asyncio

from router.core.pool import Pool, PooledConnection, Waiter
from router.errors import RouterError

__all__ = ["Client", "FakeConnection", "FakeConnector", "checked_out", "turns"]


class FakeConnection(PooledConnection):
    """What a pool needs of a connection, and a record of what the pool did to it."""

    def __init__(self, pool: Pool[FakeConnection], number: int) -> None:
        super().__init__(asyncio.get_running_loop().time())
        self._pool = pool
        self.number = number
        self.params = {"server_version": f"16.{number}"}
        self.clean = True
        self.detached = 0
        self.closed: str | None = None

    @property
    def is_clean(self) -> bool:
        return self.clean and self.closed is None

    def detach(self) -> None:
        self.detached += 1

    def close(self, reason: str = "closed") -> None:
        if self.closed is None:
            self.closed = reason
            # As a transport does: the pool hears of it on the next turn of the loop.
            asyncio.get_running_loop().call_soon(self._pool.connection_closed, self)

    def __repr__(self) -> str:
        return f"<conn {self.number}>"


class FakeConnector:
    """Opens FakeConnections; `fail` makes the next openings raise, `gate` holds them back."""

    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, pool: Pool[FakeConnection]) -> FakeConnection:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)  # a real opening takes at least one turn of the loop
        if self.fail is not None:
            raise self.fail
        conn = FakeConnection(pool, len(self.opened) + 1)
        self.opened.append(conn)
        return conn


class Client:
    """A session's two callbacks, recording what it was given."""

    def __init__(self) -> None:
        self.granted: list[FakeConnection] = []
        self.refused: list[RouterError] = []

    def grant(self, conn: FakeConnection) -> None:
        self.granted.append(conn)

    def fail(self, exc: RouterError) -> None:
        self.refused.append(exc)


async def turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def checked_out(pool: Pool[FakeConnection], client: Client | None = None) -> FakeConnection:
    """A connection for a client: at once if one is idle, else once it has been opened."""
    client = client or Client()
    result = pool.checkout(client.grant, client.fail)
    if isinstance(result, Waiter):
        await turns()
        assert client.refused == []
        (result,) = client.granted
    return result
