"""The rebalance plan: which tenants' data is not where shards.yaml now places them. Pure.

Owns: `compute_plan` (catalog tenants, the catalog pins a reload made, the tenants with an open move
and the topology in; the moves, pins to clear, skipped tenants and problems out), `Plan.totals` and
the plan's two renderings (`render_text` for people, `to_json` for tools, with stable keys).

The rules, for each catalog tenant (the catalog pin is `tenants.shard`; its data is on the shard
`place_tenant` gives for it):
- a tenant with an open move is left to that move (`in_progress`);
- a reload pin (`reload_pins[t] == tenants.shard`: the reload pinned the tenant to its old shard
  when the ring or the shards.yaml pins stopped placing it there) moves to where shards.yaml places
  it now, `place_tenant(t, None, ...)`, and ends unpinned; if that is where it already is, only the
  pin is cleared (`unpins`);
- a tenant on a shard of weight 0 (drained) moves off it to `place_tenant(t, None, ...)` and ends
  unpinned, an operator's catalog pin to that shard included;
- any other catalog pin is an operator's and stays.
The ring leaves weight-0 shards out (router/core/hashing.py), so a hashed placement never lands on
a drained shard; a shards.yaml pin to one, or a tenant on a shard shards.yaml lacks, is a problem.

Must not: do I/O (sizes.py reads the catalog and estimates sizes), or decide placement itself:
router/core/routing.py does.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from router.catalog.schema import Tenant
from router.core.hashing import Ring
from router.core.routing import place_tenant
from router.core.topology import Topology
from router.isolation import Isolation

__all__ = [
    "REASON_DRAINED",
    "REASON_RELOAD_PIN",
    "Plan",
    "PlanTotals",
    "PlannedMove",
    "compute_plan",
    "human_bytes",
]

REASON_RELOAD_PIN: Final = "reload pin"
REASON_DRAINED: Final = "drained (weight 0)"

_BYTE_UNITS: Final = ("bytes", "kB", "MB", "GB", "TB", "PB")


@dataclass(frozen=True)
class PlannedMove:
    """One tenant to move: from `source` to `target`, with the catalog pin it ends with."""

    tenant: str
    isolation: Isolation
    source: str
    target: str
    pin: str | None  # the catalog pin after the move (None: placement decides)
    reason: str  # REASON_RELOAD_PIN, REASON_DRAINED, or (a directed move) the operator's
    rows: int | None = None  # estimated; None: not estimated
    bytes: int | None = None


@dataclass(frozen=True)
class PlanTotals:
    """The plan in numbers: how many of the catalog's tenants move, how much, between which shards."""

    tenants: int  # every tenant in the catalog
    moving: int
    rows: int  # the sum of the estimates there are
    bytes: int
    unsized: int  # moves without an estimate
    pairs: Mapping[tuple[str, str], int]  # (source, target) -> moves, sorted

    @property
    def share(self) -> float:
        """The share of the catalog's tenants that move (0.0 when there are none)."""
        return self.moving / self.tenants if self.tenants else 0.0


@dataclass
class Plan:
    """What `rebalance plan` prints and `rebalance apply` runs. Lists are sorted by tenant id."""

    moves: list[PlannedMove] = field(default_factory=list)
    unpins: list[str] = field(default_factory=list)  # already where shards.yaml places them: clear the pin
    in_progress: list[str] = field(default_factory=list)  # an open move: not planned again
    problems: list[str] = field(default_factory=list)
    tenant_count: int = 0  # every tenant of the catalog, for the share that moves

    def with_sizes(self, sizes: Mapping[str, tuple[int, int]]) -> Plan:
        """The same plan, each move carrying the (rows, bytes) estimate `sizes` has for its tenant."""
        moves = [
            replace(move, rows=sizes[move.tenant][0], bytes=sizes[move.tenant][1]) if move.tenant in sizes else move
            for move in self.moves
        ]
        return replace(self, moves=moves)

    def totals(self) -> PlanTotals:
        pairs = Counter((move.source, move.target) for move in self.moves)
        return PlanTotals(
            tenants=self.tenant_count,
            moving=len(self.moves),
            rows=sum(move.rows or 0 for move in self.moves),
            bytes=sum(move.bytes or 0 for move in self.moves),
            unsized=sum(1 for move in self.moves if move.rows is None or move.bytes is None),
            pairs=dict(sorted(pairs.items())),
        )

    @property
    def empty(self) -> bool:
        """Nothing to move and no pin to clear."""
        return not (self.moves or self.unpins)

    def render_text(self) -> str:
        """One line per move (tenant, isolation, from -> to, rows, bytes, why), then the rest and totals."""
        lines: list[str] = []
        if self.moves:
            table = [("TENANT", "ISOLATION", "FROM -> TO", "ROWS", "SIZE", "REASON")]
            table += [
                (
                    m.tenant,
                    m.isolation,
                    f"{m.source} -> {m.target}",
                    "?" if m.rows is None else f"{m.rows:,}",
                    "?" if m.bytes is None else human_bytes(m.bytes),
                    m.reason,
                )
                for m in self.moves
            ]
            widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
            right = {3, 4}  # numbers align right
            for row in table:
                cells = [
                    c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
                ]
                lines.append("  ".join(cells).rstrip())
        else:
            lines.append("no tenant needs to move: every tenant is where shards.yaml places it")
        if self.unpins:
            lines.append(
                f"pins to clear ({len(self.unpins)}; already where shards.yaml places them, no data moves):"
                f" {', '.join(self.unpins)}"
            )
        if self.in_progress:
            lines.append(
                f"moves in progress ({len(self.in_progress)}; not planned again): {', '.join(self.in_progress)}"
            )
        lines += [f"problem: {problem}" for problem in self.problems]
        lines += self._totals_text()
        return "\n".join(lines)

    def _totals_text(self) -> list[str]:
        totals = self.totals()
        size = f"{totals.rows:,} rows, {human_bytes(totals.bytes)} to copy"
        if totals.unsized:
            size += f" ({totals.unsized} {_plural(totals.unsized, 'move')} without an estimate)"
        lines = [
            f"total: {totals.moving} of {totals.tenants} {_plural(totals.tenants, 'tenant')} move"
            f" ({totals.share:.1%}); {size}"
        ]
        for (source, target), count in totals.pairs.items():
            pair_bytes = sum(m.bytes or 0 for m in self.moves if (m.source, m.target) == (source, target))
            lines.append(f"  {source} -> {target}: {count} {_plural(count, 'move')}, {human_bytes(pair_bytes)}")
        return lines

    def to_json(self) -> dict[str, Any]:
        """The plan for tools; keys and their order are stable, sizes unknown are null."""
        totals = self.totals()
        return {
            "moves": [
                {
                    "tenant": m.tenant,
                    "isolation": m.isolation,
                    "source": m.source,
                    "target": m.target,
                    "pin": m.pin,
                    "reason": m.reason,
                    "rows": m.rows,
                    "bytes": m.bytes,
                }
                for m in self.moves
            ],
            "unpins": list(self.unpins),
            "in_progress": list(self.in_progress),
            "problems": list(self.problems),
            "totals": {
                "tenants": totals.tenants,
                "moving": totals.moving,
                "share": round(totals.share, 6),
                "rows": totals.rows,
                "bytes": totals.bytes,
                "unsized": totals.unsized,
                "pairs": [
                    {
                        "source": source,
                        "target": target,
                        "moves": count,
                        "rows": sum(m.rows or 0 for m in self.moves if (m.source, m.target) == (source, target)),
                        "bytes": sum(m.bytes or 0 for m in self.moves if (m.source, m.target) == (source, target)),
                    }
                    for (source, target), count in totals.pairs.items()
                ],
            },
        }

    def render_json(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def compute_plan(
    tenants: Iterable[Tenant], reload_pins: Mapping[str, str], open_moves: Collection[str], topology: Topology
) -> Plan:
    """The plan for `tenants` under `topology` (see the module docstring for the rules).

    `reload_pins`: tenant -> shard, the catalog's reload_pins (a pin the reload made); one that no
    longer equals the tenant's catalog pin was replaced by an operator's and counts as theirs.
    `open_moves`: tenants with a move not yet cleaned or aborted.
    """
    ring = Ring.from_topology(topology)
    plan = Plan()
    for tenant in sorted(tenants, key=lambda t: t.id):
        plan.tenant_count += 1
        if tenant.id in open_moves:
            plan.in_progress.append(tenant.id)
            continue
        _plan_tenant(plan, tenant, reload_pins.get(tenant.id), topology, ring)
    return plan


def _plan_tenant(plan: Plan, tenant: Tenant, reload_pin: str | None, topology: Topology, ring: Ring) -> None:
    current = place_tenant(tenant.id, tenant.shard, topology, ring)
    source = topology.shards.get(current.shard)
    if source is None:
        plan.problems.append(
            f"tenant {tenant.id} is on shard {current.shard} ({current.reason}), which {topology.source.name}"
            f" does not define: add the shard back (with weight 0 to drain it) so its data can be moved"
        )
        return
    by_reload = tenant.shard is not None and reload_pin == tenant.shard
    drained = source.weight == 0
    if not (by_reload or drained):
        return  # placed by shards.yaml, or an operator's pin: stays
    wanted = place_tenant(tenant.id, None, topology, ring)
    if topology.shards[wanted.shard].weight == 0:
        plan.problems.append(
            f"{topology.source.name} pins tenant {tenant.id} to shard {wanted.shard}, which has weight 0"
            f" (drained): pin it to another shard or give {wanted.shard} a weight"
        )
        return
    if wanted.shard == current.shard:
        plan.unpins.append(tenant.id)
        return
    reason = REASON_DRAINED if drained else REASON_RELOAD_PIN
    plan.moves.append(PlannedMove(tenant.id, tenant.isolation, current.shard, wanted.shard, None, reason))


def human_bytes(size: int) -> str:
    """`size` as pg_size_pretty writes it (1024-based: bytes, kB, MB, ...), with one decimal above bytes."""
    value = float(size)
    for unit in _BYTE_UNITS:
        if abs(value) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else noun + "s"
