"""The pools of one router process: one per (shard, server, database, role), made on first use.

Owns: the pools by PoolKey, the connection capacity each server shares among its pools
(`pool.size` bounds a server, whatever databases and roles its pools use), retiring the pools of
servers a reload removed (they drain: transactions in flight finish, then their connections
close), and closing idle connections when a server goes down or a database-level command needs
them gone.

Must not: open connections itself (each pool's `Connector` does, given by the composition root),
decide which pool a tenant uses (router.core.targets), or import any protocol or network code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Generic

from router.core.pool import C, Connector, Pool, PoolKey, PoolSettings, ShardCapacity
from router.core.topology import ServerAddress, Topology

log = logging.getLogger(__name__)

__all__ = ["ConnectorFactory", "PoolRegistry"]

# The connector of a new pool: given its role's password, and whether that role is the router's
# own in the hardened setup (its session defaults are then checked on every new connection).
ConnectorFactory = Callable[[str | None, bool], Connector[C]]


class PoolRegistry(Generic[C]):
    """`own_role`: the router's own server role when it serves shared tenants entered with a
    context secret (hardened), else None."""

    def __init__(self, settings: PoolSettings, connector: ConnectorFactory[C], own_role: str | None) -> None:
        self.settings = settings
        self._connector = connector
        self._own_role = own_role
        self.pools: dict[PoolKey, Pool[C]] = {}
        self._capacities: dict[tuple[str, int], ShardCapacity] = {}
        self._on_return: Callable[[], None] | None = None

    def pool(self, shard: str, server: ServerAddress, database: str, user: str, password: str | None) -> Pool[C]:
        key = PoolKey(shard, server.host, server.port, database, user)
        pool = self.pools.get(key)
        if pool is None:
            capacity = self._capacities.get((server.host, server.port))
            if capacity is None:
                capacity = self._capacities[(server.host, server.port)] = ShardCapacity(self.settings.size)
            connect = self._connector(password, user == self._own_role)
            pool = self.pools[key] = Pool(key, connect, self.settings, capacity)
            pool.on_return = self._on_return
        return pool

    def __iter__(self) -> Iterator[Pool[C]]:
        """The pools as they are now (a copy: a pool made meanwhile does not disturb the loop)."""
        return iter(list(self.pools.values()))

    def watch_returns(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` whenever any pool takes a connection back or loses one (None: stop)."""
        self._on_return = callback
        for pool in self.pools.values():
            pool.on_return = callback

    def retire_absent(self, topology: Topology) -> None:
        """Drain the pools of servers `topology` no longer has; new servers get pools on first use."""
        live = {
            (name, server.host, server.port)
            for name, shard in topology.shards.items()
            for server in (shard.primary, *shard.replicas)
        }
        for key, pool in list(self.pools.items()):
            if (key.shard, key.host, key.port) not in live:
                del self.pools[key]
                pool.close()
                log.info("draining %s: no longer in the topology", key.label)

    def server_down(self, host: str, port: int, reason: str) -> None:
        """A server failed its health check: its idle connections are dead weight, drop them."""
        for pool in self:
            if pool.key.host == host and pool.key.port == port:
                pool.close_idle(f"server down: {reason}")

    def close_idle(self, host: str, port: int, databases: tuple[str, ...]) -> None:
        """Close pooled idle connections to these databases (before DROP/ALTER DATABASE)."""
        for pool in self:
            key = pool.key
            if key.host == host and key.port == port and key.database in databases:
                closed = pool.close_idle()
                log.info("closed %d idle connections to %s before a database-level command", closed, key.label)

    def close_all_now(self) -> None:
        for pool in self:
            pool.close_all_now()
