"""Which replica serves a read: the choice among a shard's replicas, protocol-agnostic.

Owns the rule: a replica qualifies when the health monitor says it is up, its replay lag is
within both bounds, and (for read-your-writes) it has replayed the client's last commit; among
those, the fewest busy connections per unit of weight wins, ties broken at random by weight.
No replica qualifying means the read goes to the primary (the caller's fallback).

Must not: measure lag or health (router.ops.health does), open connections (router.core.pool), or know any
wire protocol. It reads the monitor's last measurements, which are lower bounds on a replica's
progress (replay only moves forward), so a replica chosen for a minimum LSN really has it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from router.core.pool import Pool
    from router.ops.health import ServerKey


class ReplicaHealth(Protocol):
    def replica_ok(
        self, key: ServerKey, max_lag_bytes: int, max_lag_seconds: float, min_lsn: int | None = None
    ) -> bool: ...


@dataclass(frozen=True, slots=True)
class ReplicaMember:
    """One replica of a shard database: its health key, its weight and the pool of connections to it."""

    key: ServerKey
    weight: int
    pool: Pool


@dataclass(frozen=True, slots=True)
class LagBounds:
    max_bytes: int
    max_seconds: float


def choose_replica(
    members: tuple[ReplicaMember, ...],
    health: ReplicaHealth,
    bounds: LagBounds,
    min_lsn: int | None = None,
    rng: random.Random | None = None,
) -> ReplicaMember | None:
    """The replica to send a read to, or None (the read goes to the primary)."""
    best: list[ReplicaMember] = []
    best_load = 0.0
    for member in members:
        if member.pool.closed or not health.replica_ok(member.key, bounds.max_bytes, bounds.max_seconds, min_lsn):
            continue
        load = (member.pool.active_count + member.pool.waiting) / member.weight
        if not best or load < best_load:
            best, best_load = [member], load
        elif load == best_load:
            best.append(member)
    if not best:
        return None
    if len(best) == 1:
        return best[0]
    return (rng or random).choices(best, weights=[m.weight for m in best])[0]
