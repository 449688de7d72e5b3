"""The consistent-hashing ring that places un-pinned tenants on shards. Pure: values in, values out.

Owns: tenant id -> shard for a given set of shard weights and vnodes. The placement is a contract
with data already on disk, so it is pinned by golden vectors in tests/unit/test_hashing.py; any
change that moves a pinned tenant is a data migration, not a refactor.

Must not: know about pins or the catalog (routing.py decides precedence), do I/O, use Python's
`hash()` (salted per process) or any other per-process state.

How: uhashring's ketama ring (md5, 4 points per vnode name, bisect to the next point). uhashring's
own `weight` is relative: a node gets vnodes * nodes * weight // total_weight points, so adding a
shard of unequal weight re-sizes every other shard and moves tenants between old shards. We instead
give every node weight 1 and `vnodes * weight` vnodes, so a shard's points depend only on its own
weight: shares are proportional to weight and adding or removing a shard moves only tenants to or
from that shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from uhashring import HashRing

if TYPE_CHECKING:
    from router.core.topology import Topology

__all__ = ["Ring"]

# Each ketama vnode name yields 4 points (one per 4-byte slice of its md5). Part of the contract.
_POINTS_PER_VNODE = 4


class Ring:
    """An immutable ring over `weights` (shard -> weight >= 1) with `vnodes` per unit of weight."""

    __slots__ = ("_hash_ring", "_vnodes", "_weights")

    def __init__(self, weights: Mapping[str, int], vnodes: int) -> None:
        if not weights:
            raise ValueError("a ring needs at least one shard")
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        for shard, weight in weights.items():
            if weight < 1:
                raise ValueError(f"weight of shard {shard!r} must be >= 1, got {weight}")
        self._weights: Mapping[str, int] = MappingProxyType(dict(sorted(weights.items())))
        self._vnodes = vnodes
        # Sorted insertion: the rare md5 point collision is resolved the same way everywhere.
        nodes = {shard: {"vnodes": vnodes * weight, "weight": 1} for shard, weight in self._weights.items()}
        self._hash_ring: Any = HashRing(nodes, hash_fn="ketama", replicas=_POINTS_PER_VNODE)

    @classmethod
    def from_topology(cls, topology: Topology) -> Ring:
        """The ring for every shard of `topology` at its weight; a shard of weight 0 (drained) is
        left out, so no hashed tenant lands on it, just as if it were removed."""
        weights = {name: shard.weight for name, shard in topology.shards.items() if shard.weight > 0}
        return cls(weights, topology.ring.vnodes)

    def shard_for(self, tenant_id: str) -> str:
        """The shard that owns `tenant_id` (hashed as UTF-8)."""
        shard: str = self._hash_ring.get_node(tenant_id)
        return shard

    @property
    def weights(self) -> Mapping[str, int]:
        return self._weights

    @property
    def vnodes(self) -> int:
        return self._vnodes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._vnodes == other._vnodes and dict(self._weights) == dict(other._weights)

    def __hash__(self) -> int:
        return hash((self._vnodes, tuple(self._weights.items())))

    def __repr__(self) -> str:
        return f"Ring({dict(self._weights)!r}, vnodes={self._vnodes})"
