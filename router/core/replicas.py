"""Which replica serves a read: the choice among a shard's replicas, protocol-agnostic.

Owns the rule: a replica qualifies when the health monitor says it is up, its replay lag is
within both bounds, and (for read-your-writes) it has replayed the client's last commit; among
those, the fewest busy connections per unit of weight wins, ties broken at random by weight.
No replica qualifying means the read goes to the primary (the caller's fallback). `ReadRouting`
applies it for sessions, and hears of a replica that failed to serve.

Must not: measure lag or health (router.ops.health does, behind `ReplicaHealth`), open connections
(router.core.pool), read a pool's internals (only its `load`, through `Candidate`), or know any
wire protocol. It reads the monitor's last measurements, which are lower bounds on a replica's
progress (replay only moves forward), so a replica chosen for a minimum LSN really has it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from router.core.topology import ServerKey

if TYPE_CHECKING:
    from router.core.pool import Pool


class ReplicaHealth(Protocol):
    def replica_ok(
        self, key: ServerKey, max_lag_bytes: int, max_lag_seconds: float, min_lsn: int | None = None
    ) -> bool: ...

    def report_failure(self, key: ServerKey, error: str) -> None: ...


class Candidate(Protocol):
    """What the choice reads of a replica: its health key, weight, and how busy it is."""

    @property
    def key(self) -> ServerKey: ...

    @property
    def weight(self) -> int: ...

    @property
    def available(self) -> bool:
        """Its pool still takes connections (not removed by a reload)."""
        ...

    @property
    def load(self) -> int:
        """Connections in use plus clients waiting for one."""
        ...


M = TypeVar("M", bound=Candidate)


@dataclass(frozen=True, slots=True)
class ReplicaMember:
    """One replica of a shard database: its health key, its weight and the pool of connections to it."""

    key: ServerKey
    weight: int
    pool: Pool

    @property
    def available(self) -> bool:
        return not self.pool.closed

    @property
    def load(self) -> int:
        return self.pool.load


@dataclass(frozen=True, slots=True)
class LagBounds:
    max_bytes: int
    max_seconds: float


def choose_replica(
    members: Sequence[M],
    health: ReplicaHealth,
    bounds: LagBounds,
    min_lsn: int | None = None,
    rng: random.Random | None = None,
) -> M | None:
    """The replica to send a read to, or None (the read goes to the primary)."""
    best: list[M] = []
    best_load = 0.0
    for member in members:
        if not member.available or not health.replica_ok(member.key, bounds.max_bytes, bounds.max_seconds, min_lsn):
            continue
        load = member.load / member.weight
        if not best or load < best_load:
            best, best_load = [member], load
        elif load == best_load:
            best.append(member)
    if not best:
        return None
    if len(best) == 1:
        return best[0]
    return (rng or random).choices(best, weights=[m.weight for m in best])[0]


class ReadRouting:
    """Replica choice for sessions: which pool serves a read, and a replica that failed one."""

    def __init__(self, health: ReplicaHealth, bounds: LagBounds) -> None:
        self.health = health
        self.bounds = bounds

    def read_pool(self, replicas: Sequence[ReplicaMember], min_lsn: int | None) -> Pool | None:
        """The pool of the replica a read should use (replayed at least `min_lsn`), or None: the primary."""
        member = choose_replica(replicas, self.health, self.bounds, min_lsn)
        return member.pool if member is not None else None

    def replica_failed(self, pool: Pool, message: str) -> None:
        """Stop choosing the replica behind `pool` until its health check passes."""
        key = ServerKey(pool.key.shard, pool.key.host, pool.key.port, "replica")
        self.health.report_failure(key, message)
