"""Tenant placement: which shard holds a tenant, and why. Pure: values in, values out.

Owns: the precedence between the three ways a tenant gets a shard: a pin in the catalog (set per
tenant by operators or a rebalance), then a pin in shards.yaml, then the hash ring.

Must not: look anything up (the caller passes the catalog pin it already has), do I/O, or raise for
an unknown shard: a catalog pin naming a shard the topology lacks is returned as is, because only
the caller knows whether that is an error (serving a session) or a fact to show (admin listing).
Statement kinds and replicas come later and belong here too, still pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from router.core.hashing import Ring
from router.core.topology import Topology

__all__ = ["Placement", "PlacementReason", "place_tenant"]

PlacementReason = Literal["catalog pin", "shards.yaml pin", "hashed"]


@dataclass(frozen=True)
class Placement:
    """The shard a tenant lives on and which rule chose it (for logs, admin output, rebalance)."""

    shard: str
    reason: PlacementReason


def place_tenant(tenant_id: str, catalog_pin: str | None, topology: Topology, ring: Ring) -> Placement:
    """Catalog pin, else shards.yaml pin, else the ring. `ring` must be built from `topology`.

    The catalog pin is returned even if `topology` has no such shard; check
    `placement.shard in topology.shards` where that matters.
    """
    if catalog_pin is not None:
        return Placement(catalog_pin, "catalog pin")
    pinned = topology.pins.get(tenant_id)
    if pinned is not None:
        return Placement(pinned, "shards.yaml pin")
    return Placement(ring.shard_for(tenant_id), "hashed")
