"""The ring: golden vectors, proportional shares, and the consistent-hashing property."""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from router.core.hashing import Ring
from router.core.topology import RingConfig, ServerAddress, Shard, Topology

TENANTS = [f"tenant-{i}" for i in range(10_000)]
THREE = {"shard_a": 1, "shard_b": 1, "shard_c": 1}

# Pinned placements. If this test fails, tenants already stored on a shard would be looked for on
# another one: fix the code, do not update the table (unless shipping a deliberate migration).
GOLDEN_EQUAL = [
    ("acme", "shard_b"),
    ("globex", "shard_a"),
    ("initech", "shard_a"),
    ("umbrella", "shard_b"),
    ("hooli", "shard_a"),
    ("wayne_enterprises", "shard_c"),
    ("stark-industries", "shard_b"),
    ("cyberdyne", "shard_b"),
    ("soylent", "shard_a"),
    ("tyrell", "shard_a"),
    ("42", "shard_c"),
    ("0", "shard_b"),
    ("tenant-1", "shard_a"),
    ("tenant-2", "shard_b"),
    ("tenant-1000", "shard_a"),
    ("Acme", "shard_b"),
    ("ACME", "shard_c"),
    ("café", "shard_b"),
    ("租户", "shard_b"),
    ("9f1c2b7e-3d4a-4e8b-9c1d-2f3a4b5c6d7e", "shard_a"),
]
GOLDEN_WEIGHTED = [  # shard_c has weight 2
    ("acme", "shard_b"),
    ("globex", "shard_c"),
    ("initech", "shard_a"),
    ("umbrella", "shard_c"),
    ("hooli", "shard_a"),
    ("wayne_enterprises", "shard_c"),
    ("stark-industries", "shard_b"),
    ("cyberdyne", "shard_b"),
]


@pytest.mark.parametrize(("tenant", "shard"), GOLDEN_EQUAL)
def test_golden_vectors_equal_weights(tenant: str, shard: str) -> None:
    assert Ring(THREE, vnodes=160).shard_for(tenant) == shard


@pytest.mark.parametrize(("tenant", "shard"), GOLDEN_WEIGHTED)
def test_golden_vectors_weighted(tenant: str, shard: str) -> None:
    assert Ring({"shard_a": 1, "shard_b": 1, "shard_c": 2}, vnodes=160).shard_for(tenant) == shard


def reference_shard_for(weights: dict[str, int], vnodes: int, tenant: str) -> str:
    """The documented algorithm written out without uhashring: ketama points for `vnodes * weight`
    names "<shard>-<i>" (4 little-endian u32 per md5), then the first point after the tenant's hash."""

    def points(key: str) -> list[int]:
        digest = hashlib.md5(key.encode()).digest()
        return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]

    ring = sorted(
        (point, shard)
        for shard in sorted(weights)
        for i in range(vnodes * weights[shard])
        for point in points(f"{shard}-{i}")
    )
    keys = [point for point, _ in ring]
    position = bisect.bisect(keys, points(tenant)[0]) % len(ring)
    return ring[position][1]


def test_ring_is_the_documented_algorithm() -> None:
    weights = {"shard_a": 1, "shard_b": 3, "shard_c": 2}
    ring = Ring(weights, vnodes=40)
    for tenant in TENANTS[:2000]:
        assert ring.shard_for(tenant) == reference_shard_for(weights, 40, tenant)


def test_placement_does_not_depend_on_the_process_hash_seed() -> None:
    script = (
        "import json, sys; from router.core.hashing import Ring;"
        "r = Ring({'shard_a': 1, 'shard_b': 1, 'shard_c': 1}, 160);"
        "print(json.dumps([r.shard_for(f'tenant-{i}') for i in range(200)]))"
    )
    root = Path(__file__).resolve().parents[2]
    runs = set()
    for seed in ("1", "2", "31337"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, check=True
        )
        runs.add(out.stdout)
    assert len(runs) == 1
    here = Ring(THREE, 160)
    assert json.loads(runs.pop()) == [here.shard_for(f"tenant-{i}") for i in range(200)]


def test_insertion_order_does_not_matter() -> None:
    forward = Ring(THREE, 160)
    backward = Ring(dict(reversed(list(THREE.items()))), 160)
    assert forward == backward
    assert all(forward.shard_for(t) == backward.shard_for(t) for t in TENANTS[:2000])


def test_shares_are_proportional_to_weight() -> None:
    weights = {"shard_a": 1, "shard_b": 1, "shard_c": 2}
    ring = Ring(weights, vnodes=160)
    counts = Counter(ring.shard_for(t) for t in TENANTS)
    total_weight = sum(weights.values())
    for shard, weight in weights.items():
        expected = len(TENANTS) * weight / total_weight
        assert abs(counts[shard] - expected) < 0.1 * expected, (shard, counts)


def test_adding_a_shard_moves_about_a_quarter_and_only_to_it() -> None:
    before = Ring(THREE, 160)
    after = Ring({**THREE, "shard_d": 1}, 160)
    moved = [t for t in TENANTS if before.shard_for(t) != after.shard_for(t)]
    assert 0.15 * len(TENANTS) <= len(moved) <= 0.35 * len(TENANTS)
    assert {after.shard_for(t) for t in moved} == {"shard_d"}


def test_adding_a_shard_to_an_unequal_ring_moves_only_to_it() -> None:
    # uhashring's own relative `weight` would re-size the other shards here and shuffle tenants
    # between them; our per-shard vnode count must not.
    before = Ring({"shard_a": 1, "shard_b": 1, "shard_c": 2}, 160)
    after = Ring({"shard_a": 1, "shard_b": 1, "shard_c": 2, "shard_d": 1}, 160)
    moved = [t for t in TENANTS if before.shard_for(t) != after.shard_for(t)]
    assert 0.1 * len(TENANTS) <= len(moved) <= 0.3 * len(TENANTS)  # ideally 1/5
    assert {after.shard_for(t) for t in moved} == {"shard_d"}


def test_removing_a_shard_moves_only_its_tenants() -> None:
    before = Ring({**THREE, "shard_d": 1}, 160)
    after = Ring(THREE, 160)
    for tenant in TENANTS:
        old = before.shard_for(tenant)
        assert after.shard_for(tenant) == old or old == "shard_d"


def test_raising_a_weight_moves_tenants_only_to_that_shard() -> None:
    before = Ring(THREE, 160)
    after = Ring({**THREE, "shard_b": 2}, 160)
    moved = [t for t in TENANTS if before.shard_for(t) != after.shard_for(t)]
    assert moved and {after.shard_for(t) for t in moved} == {"shard_b"}


def test_from_topology_uses_weights_and_vnodes() -> None:
    shards = {
        name: Shard(name, ServerAddress("h", 5432 + i, "app"), (), weight)
        for i, (name, weight) in enumerate({"shard_a": 2, "shard_b": 1}.items())
    }
    topology = Topology(shards=shards, ring=RingConfig(vnodes=50), pins={}, source=Path("s"))
    ring = Ring.from_topology(topology)
    assert ring == Ring({"shard_a": 2, "shard_b": 1}, 50)
    assert (dict(ring.weights), ring.vnodes) == ({"shard_a": 2, "shard_b": 1}, 50)


def test_from_topology_leaves_out_drained_shards() -> None:
    # Weight 0 (draining) places no hashed tenant there: the same ring as without the shard.
    shards = {
        name: Shard(name, ServerAddress("h", 5432 + i, "app"), (), weight)
        for i, (name, weight) in enumerate({"shard_a": 1, "shard_b": 0, "shard_c": 1}.items())
    }
    ring = Ring.from_topology(Topology(shards=shards, ring=RingConfig(vnodes=50), pins={}, source=Path("s")))
    assert ring == Ring({"shard_a": 1, "shard_c": 1}, 50)
    assert "shard_b" not in {ring.shard_for(t) for t in TENANTS[:2000]}


def test_single_shard_takes_everything() -> None:
    ring = Ring({"only": 1}, 1)
    assert {ring.shard_for(t) for t in TENANTS[:500]} == {"only"}


@pytest.mark.parametrize(
    ("weights", "vnodes"),
    [({}, 160), ({"shard_a": 0}, 160), ({"shard_a": -1}, 160), ({"shard_a": 1}, 0)],
)
def test_invalid_rings_are_refused(weights: dict[str, int], vnodes: int) -> None:
    with pytest.raises(ValueError):
        Ring(weights, vnodes)
