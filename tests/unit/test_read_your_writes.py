"""Read-your-writes per tenant and the replica choice it feeds, without servers: commit positions,
pending commits, and which replica (by health, lag, position and load) serves a read."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from router.core.pool import Pool, PoolKey, PoolSettings
from router.core.read_your_writes import UNKNOWN_POSITION, CommitPositions
from router.core.replicas import LagBounds, ReadRouting, ReplicaMember, choose_replica
from router.core.topology import ServerKey

BOUNDS = LagBounds(max_bytes=1000, max_seconds=5.0)


def test_positions_are_kept_per_tenant_only_in_tenant_mode_and_only_move_forward() -> None:
    commits = CommitPositions("tenant")
    assert commits.position("acme") is None
    commits.note_commit("acme", 200)
    commits.note_commit("acme", 100)  # a session that read its position late
    commits.note_commit("globex", 50)
    assert (commits.position("acme"), commits.position("globex")) == (200, 50)
    for mode in ("session", "off"):
        other = CommitPositions(mode)
        other.note_commit("acme", 200)
        other.commit_pending("acme")
        assert other.position("acme") is None
        other.commit_settled("acme")  # after a pending that kept nothing: no error


def test_a_pending_commit_sends_the_tenant_s_reads_to_the_primary_until_every_one_settles() -> None:
    commits = CommitPositions("tenant")
    commits.note_commit("acme", 100)
    commits.commit_pending("acme")
    commits.commit_pending("acme")
    assert commits.position("acme") == UNKNOWN_POSITION
    assert commits.position("globex") is None
    commits.commit_settled("acme")
    assert commits.position("acme") == UNKNOWN_POSITION
    commits.note_commit("acme", 300)
    commits.commit_settled("acme")
    assert commits.position("acme") == 300


def test_a_tenant_changed_in_the_catalog_forgets_its_position() -> None:
    commits = CommitPositions("tenant")
    commits.note_commit("acme", 100)
    commits.forget("acme")
    commits.forget("nobody")
    assert commits.position("acme") is None


@dataclass
class Replica:
    """A Candidate: the choice reads only these."""

    key: ServerKey
    weight: int = 1
    load: int = 0
    available: bool = True


@dataclass
class Health:
    """Replica health as the monitor reports it: up with a replayed position, or down."""

    replayed: dict[ServerKey, int] = field(default_factory=dict)
    lagging: set[ServerKey] = field(default_factory=set)
    failures: list[tuple[ServerKey, str]] = field(default_factory=list)

    def replica_ok(
        self, key: ServerKey, max_lag_bytes: int, max_lag_seconds: float, min_lsn: int | None = None
    ) -> bool:
        if key not in self.replayed or key in self.lagging:
            return False
        return min_lsn is None or self.replayed[key] >= min_lsn

    def report_failure(self, key: ServerKey, error: str) -> None:
        self.failures.append((key, error))
        self.replayed.pop(key, None)


def key(n: int) -> ServerKey:
    return ServerKey("shard_a", f"replica{n}.db", 5432, "replica")


def test_the_least_loaded_healthy_replica_per_unit_of_weight_serves_the_read() -> None:
    one, two, three = Replica(key(1), load=4), Replica(key(2), weight=4, load=8), Replica(key(3), load=3)
    health = Health({key(1): 10, key(2): 10, key(3): 10})
    assert choose_replica([one, two, three], health, BOUNDS) is two  # 8/4 = 2 beats 3 and 4
    health.lagging.add(key(2))
    assert choose_replica([one, two, three], health, BOUNDS) is three
    three.available = False  # removed by a reload
    assert choose_replica([one, two, three], health, BOUNDS) is one
    del health.replayed[key(1)]
    assert choose_replica([one, two, three], health, BOUNDS) is None  # the primary serves it


def test_a_replica_serves_a_read_only_once_it_has_replayed_the_position() -> None:
    behind, ahead = Replica(key(1)), Replica(key(2), load=10)
    health = Health({key(1): 100, key(2): 500})
    assert choose_replica([behind, ahead], health, BOUNDS, min_lsn=None) is behind
    assert choose_replica([behind, ahead], health, BOUNDS, min_lsn=300) is ahead
    assert choose_replica([behind, ahead], health, BOUNDS, min_lsn=UNKNOWN_POSITION) is None


def test_ties_are_broken_at_random_by_weight() -> None:
    light, heavy = Replica(key(1), weight=1), Replica(key(2), weight=3)
    health = Health({key(1): 0, key(2): 0})
    rng = random.Random(7)
    picks = [choose_replica([light, heavy], health, BOUNDS, rng=rng) for _ in range(400)]
    assert 240 < picks.count(heavy) < 360 and picks.count(light) + picks.count(heavy) == 400


def test_read_routing_gives_the_chosen_replica_s_pool_and_reports_a_failed_one() -> None:
    settings = PoolSettings(size=2, wait_timeout=1, connect_timeout=1, idle_timeout=0, lifetime=0)

    async def never(pool: Pool) -> object:
        raise AssertionError("no connection is opened")

    pools = [Pool(PoolKey("shard_a", f"replica{n}.db", 5432, "app", "router"), never, settings) for n in (1, 2)]
    members = tuple(ReplicaMember(key(n), 1, pool) for n, pool in zip((1, 2), pools, strict=True))
    health = Health({key(1): 100, key(2): 50})
    routing = ReadRouting(health, BOUNDS)
    assert routing.read_pool(members, 80) is pools[0]
    assert members[0].load == 0 and members[0].available
    routing.replica_failed(pools[0], "connection refused")
    assert health.failures == [(key(1), "connection refused")]
    assert routing.read_pool(members, 80) is None
    assert routing.read_pool(members, None) is pools[1]
    pools[1].close()
    assert not members[1].available and routing.read_pool(members, None) is None
