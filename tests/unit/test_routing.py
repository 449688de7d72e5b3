"""place_tenant precedence: catalog pin, then shards.yaml pin, then the ring."""

from __future__ import annotations

from pathlib import Path

from router.core.hashing import Ring
from router.core.routing import Placement, place_tenant
from router.core.topology import RingConfig, ServerAddress, Shard, Topology

SHARDS = {name: Shard(name, ServerAddress(f"{name}.db", 5432, "app"), (), 1) for name in ("shard_a", "shard_b")}
TOPOLOGY = Topology(shards=SHARDS, ring=RingConfig(), pins={"bigcorp": "shard_b"}, source=Path("shards.yaml"))
RING = Ring.from_topology(TOPOLOGY)


def test_unpinned_tenant_is_hashed() -> None:
    assert place_tenant("acme", None, TOPOLOGY, RING) == Placement(RING.shard_for("acme"), "hashed")


def test_shards_yaml_pin_beats_the_ring() -> None:
    assert RING.shard_for("bigcorp") == "shard_a"  # so the pin below visibly overrides the ring
    assert place_tenant("bigcorp", None, TOPOLOGY, RING) == Placement("shard_b", "shards.yaml pin")


def test_catalog_pin_beats_everything() -> None:
    assert place_tenant("bigcorp", "shard_a", TOPOLOGY, RING) == Placement("shard_a", "catalog pin")
    assert RING.shard_for("acme") == "shard_b"
    assert place_tenant("acme", "shard_a", TOPOLOGY, RING) == Placement("shard_a", "catalog pin")


def test_catalog_pin_to_an_unknown_shard_is_returned_for_the_caller_to_judge() -> None:
    placement = place_tenant("acme", "shard_gone", TOPOLOGY, RING)
    assert placement == Placement("shard_gone", "catalog pin")
    assert placement.shard not in TOPOLOGY.shards
