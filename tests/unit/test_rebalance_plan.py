"""The rebalance plan (router/rebalance/plan.py): which tenants move where, what only loses its pin,
what is skipped or wrong, and how the plan reads as text and as JSON; and what a shard must have
for moves (router/rebalance/prereq.py's findings)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from router.catalog.schema import Tenant
from router.core.hashing import Ring
from router.core.routing import place_tenant
from router.core.topology import RingConfig, ServerAddress, Shard, Topology
from router.isolation import ISOLATIONS, Isolation
from router.ops.reload import moved_tenants
from router.rebalance.plan import (
    REASON_DRAINED,
    REASON_RELOAD_PIN,
    Plan,
    PlannedMove,
    compute_plan,
    human_bytes,
)
from router.rebalance.prereq import move_findings

IDS = [f"t{i:03d}" for i in range(200)]
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def shard(name: str, weight: int = 1) -> Shard:
    return Shard(name, ServerAddress(f"{name}.db", 5432, "app"), (), weight)


def topology(weights: dict[str, int], pins: dict[str, str] | None = None) -> Topology:
    return Topology(
        shards={name: shard(name, w) for name, w in weights.items()},
        ring=RingConfig(vnodes=160),
        pins=pins or {},
        source=Path("/etc/router/shards.yaml"),
    )


def tenant(tenant_id: str, pin: str | None = None, isolation: Isolation | None = None) -> Tenant:
    chosen = isolation or ISOLATIONS[sum(map(ord, tenant_id)) % len(ISOLATIONS)]
    return Tenant(tenant_id, chosen, pin, "active", CREATED, {})


def after_reload(tenants: Iterable[Tenant], old: Topology, new: Topology) -> tuple[list[Tenant], dict[str, str]]:
    """The catalog after a reload from `old` to `new`: what router/ops/reload.py pins, and records."""
    tenants = list(tenants)
    moves = moved_tenants([(t.id, t.shard) for t in tenants], old, new)
    pinned = {move.tenant: move.old_shard for move in moves}
    return [tenant(t.id, pinned.get(t.id, t.shard), t.isolation) for t in tenants], pinned


def placed(plan: Plan, tenants: list[Tenant], topology: Topology) -> dict[str, str]:
    """Where every tenant is once `plan` is carried out (moves end with their pin; unpins unpinned)."""
    ring = Ring.from_topology(topology)
    pins = {t.id: t.shard for t in tenants}
    pins.update({m.tenant: m.pin for m in plan.moves})
    pins.update(dict.fromkeys(plan.unpins))
    return {t.id: place_tenant(t.id, pins[t.id], topology, ring).shard for t in tenants}


# --- scale out -----------------------------------------------------------------------------------

AB = topology({"shard_a": 1, "shard_b": 1})
ABC = topology({"shard_a": 1, "shard_b": 1, "shard_c": 1})


def test_scale_out_moves_exactly_the_tenants_whose_ring_placement_changed() -> None:
    tenants, reload_pins = after_reload((tenant(t) for t in IDS), AB, ABC)
    plan = compute_plan(tenants, reload_pins, (), ABC)

    old_ring, new_ring = Ring.from_topology(AB), Ring.from_topology(ABC)
    changed = {t: (old_ring.shard_for(t), new_ring.shard_for(t)) for t in IDS}
    changed = {t: pair for t, pair in changed.items() if pair[0] != pair[1]}
    assert 40 <= len(changed) <= 95  # about a third of 200: the ring works as it should
    isolation = {t.id: t.isolation for t in tenants}
    assert plan.moves == [
        PlannedMove(t, isolation[t], source, target, None, REASON_RELOAD_PIN)
        for t, (source, target) in sorted(changed.items())
    ]
    assert {m.target for m in plan.moves} == {"shard_c"}  # consistent hashing: only to the new shard
    assert (plan.unpins, plan.in_progress, plan.problems) == ([], [], [])
    # Carried out, every tenant is where the ring says and no pin is left.
    assert placed(plan, tenants, ABC) == {t: new_ring.shard_for(t) for t in IDS}
    totals = plan.totals()
    assert (totals.tenants, totals.moving, totals.share) == (200, len(changed), len(changed) / 200)
    assert dict(totals.pairs) == {pair: sum(1 for p in changed.values() if p == pair) for pair in set(changed.values())}


def test_a_plan_carried_out_plans_nothing_more() -> None:
    tenants, reload_pins = after_reload((tenant(t) for t in IDS), AB, ABC)
    plan = compute_plan(tenants, reload_pins, (), ABC)
    done = [tenant(t.id, None, t.isolation) if t.id in reload_pins else t for t in tenants]
    again = compute_plan(done, {}, (), ABC)
    assert again.moves == [] and again.empty and again.totals().moving == 0
    assert plan.totals().moving > 0


# --- drain ---------------------------------------------------------------------------------------


def test_draining_a_shard_by_weight_0_moves_every_tenant_off_it() -> None:
    drained = topology({"shard_a": 1, "shard_b": 0, "shard_c": 1})
    operator_pinned = [tenant("op-b", "shard_b"), tenant("op-a", "shard_a")]
    tenants, reload_pins = after_reload([*(tenant(t) for t in IDS), *operator_pinned], ABC, drained)
    on_b_before = {
        t.id for t in tenants if place_tenant(t.id, t.shard, ABC, Ring.from_topology(ABC)).shard == "shard_b"
    }
    assert "op-b" in on_b_before and len(on_b_before) > 40

    plan = compute_plan(tenants, reload_pins, (), drained)

    assert {m.tenant for m in plan.moves} == on_b_before
    assert all(m.source == "shard_b" and m.target != "shard_b" for m in plan.moves)
    assert all(m.pin is None and m.reason == REASON_DRAINED for m in plan.moves)
    after = placed(plan, tenants, drained)
    assert "shard_b" not in after.values()
    # The ring-placed ones go where the ring of the remaining shards puts them; so does the
    # operator's tenant, which ends unpinned; the operator's pin to a live shard stays.
    ring = Ring.from_topology(drained)
    assert {m.tenant: m.target for m in plan.moves} == {t: ring.shard_for(t) for t in on_b_before}
    assert after["op-a"] == "shard_a" and "op-a" not in {m.tenant for m in plan.moves}


def test_hashed_tenants_never_land_on_a_drained_shard() -> None:
    drained = topology({"shard_a": 0, "shard_b": 1, "shard_c": 1})
    plan = compute_plan([tenant(t) for t in IDS], {}, (), drained)
    assert plan.moves == [] and plan.problems == []  # placed by the ring: never on shard_a


def test_a_shards_yaml_pin_to_a_drained_shard_is_a_problem() -> None:
    drained = topology({"shard_a": 1, "shard_b": 0}, pins={"acme": "shard_b"})
    plan = compute_plan([tenant("acme"), tenant("globex", "shard_b")], {}, (), drained)
    assert plan.problems == [
        "shards.yaml pins tenant acme to shard shard_b, which has weight 0 (drained):"
        " pin it to another shard or give shard_b a weight"
    ]
    # An operator's pin to the drained shard moves to where shards.yaml places the tenant.
    assert [(m.tenant, m.source, m.target, m.pin) for m in plan.moves] == [("globex", "shard_b", "shard_a", None)]


# --- pins that stay, tenants skipped, pins cleared -----------------------------------------------


def test_operator_pins_stay() -> None:
    ring = Ring.from_topology(ABC)
    elsewhere = next(t for t in IDS if ring.shard_for(t) != "shard_a")
    # Pinned by an operator (no reload pin), and a reload pin an operator replaced since.
    tenants = [tenant(elsewhere, "shard_a"), tenant("t-repinned", "shard_b")]
    plan = compute_plan(tenants, {"t-repinned": "shard_a"}, (), ABC)
    assert plan.empty and plan.problems == [] and plan.totals().tenants == 2


def test_tenants_with_an_open_move_are_not_planned_again() -> None:
    tenants, reload_pins = after_reload((tenant(t) for t in IDS), AB, ABC)
    moving = sorted(reload_pins)[:3]
    plan = compute_plan(tenants, reload_pins, set(moving), ABC)
    assert plan.in_progress == moving
    assert not {m.tenant for m in plan.moves} & set(moving)
    assert len(plan.moves) == len(reload_pins) - 3


def test_a_reload_pin_where_shards_yaml_places_the_tenant_is_only_cleared() -> None:
    # A reload pinned acme to shard_a; shards.yaml now pins it there itself: no data moves.
    topo = topology({"shard_a": 1, "shard_b": 1}, pins={"acme": "shard_a"})
    ring = Ring.from_topology(topo)
    back = next(t for t in IDS if ring.shard_for(t) == "shard_b")  # the ring places it where it is
    plan = compute_plan(
        [tenant("acme", "shard_a"), tenant(back, "shard_b")], {"acme": "shard_a", back: "shard_b"}, (), topo
    )
    assert plan.unpins == sorted(["acme", back]) and plan.moves == [] and not plan.empty


def test_a_tenant_on_a_shard_shards_yaml_lacks_is_a_problem() -> None:
    plan = compute_plan([tenant("acme", "shard_z"), tenant("globex", "shard_z")], {"globex": "shard_z"}, (), AB)
    assert plan.moves == []
    assert plan.problems == [
        f"tenant {t} is on shard shard_z (catalog pin), which shards.yaml does not define:"
        " add the shard back (with weight 0 to drain it) so its data can be moved"
        for t in ("acme", "globex")
    ]


# --- sizes, totals, rendering --------------------------------------------------------------------


def sample_plan() -> Plan:
    plan = Plan(
        moves=[
            PlannedMove("acme", "shared", "shard_a", "shard_c", None, REASON_RELOAD_PIN),
            PlannedMove("globex", "schema", "shard_a", "shard_c", None, REASON_RELOAD_PIN),
            PlannedMove("initech", "database", "shard_b", "shard_c", None, REASON_DRAINED),
        ],
        unpins=["hooli"],
        in_progress=["umbrella"],
        problems=["something"],
        tenant_count=8,
    )
    return plan.with_sizes({"acme": (1200, 2048), "globex": (10, 5 * 1024 * 1024)})


def test_totals_sum_the_estimates_and_count_moves_per_shard_pair() -> None:
    totals = sample_plan().totals()
    assert (totals.tenants, totals.moving, totals.share) == (8, 3, 3 / 8)
    assert (totals.rows, totals.bytes, totals.unsized) == (1210, 2048 + 5 * 1024 * 1024, 1)
    assert dict(totals.pairs) == {("shard_a", "shard_c"): 2, ("shard_b", "shard_c"): 1}
    assert Plan().totals().share == 0.0


def test_text_has_one_line_per_move_then_the_totals() -> None:
    text = sample_plan().render_text().splitlines()
    assert text[0].split() == ["TENANT", "ISOLATION", "FROM", "->", "TO", "ROWS", "SIZE", "REASON"]
    assert text[1].split() == ["acme", "shared", "shard_a", "->", "shard_c", "1,200", "2.0", "kB", "reload", "pin"]
    assert text[2].split() == ["globex", "schema", "shard_a", "->", "shard_c", "10", "5.0", "MB", "reload", "pin"]
    assert text[3].split() == ["initech", "database", "shard_b", "->", "shard_c", "?", "?", "drained", "(weight", "0)"]
    assert text[4:] == [
        "pins to clear (1; already where shards.yaml places them, no data moves): hooli",
        "moves in progress (1; not planned again): umbrella",
        "problem: something",
        "total: 3 of 8 tenants move (37.5%); 1,210 rows, 5.0 MB to copy (1 move without an estimate)",
        "  shard_a -> shard_c: 2 moves, 5.0 MB",
        "  shard_b -> shard_c: 1 move, 0 bytes",
    ]
    assert Plan(tenant_count=3).render_text().splitlines() == [
        "no tenant needs to move: every tenant is where shards.yaml places it",
        "total: 0 of 3 tenants move (0.0%); 0 rows, 0 bytes to copy",
    ]


def test_json_has_stable_keys() -> None:
    document = json.loads(sample_plan().render_json())
    assert list(document) == ["moves", "unpins", "in_progress", "problems", "totals"]
    assert document["moves"][0] == {
        "tenant": "acme",
        "isolation": "shared",
        "source": "shard_a",
        "target": "shard_c",
        "pin": None,
        "reason": "reload pin",
        "rows": 1200,
        "bytes": 2048,
    }
    assert document["moves"][2]["rows"] is None and document["moves"][2]["bytes"] is None
    assert (document["unpins"], document["in_progress"], document["problems"]) == (
        ["hooli"],
        ["umbrella"],
        ["something"],
    )
    assert document["totals"] == {
        "tenants": 8,
        "moving": 3,
        "share": 0.375,
        "rows": 1210,
        "bytes": 2048 + 5 * 1024 * 1024,
        "unsized": 1,
        "pairs": [
            {"source": "shard_a", "target": "shard_c", "moves": 2, "rows": 1210, "bytes": 2048 + 5 * 1024 * 1024},
            {"source": "shard_b", "target": "shard_c", "moves": 1, "rows": 0, "bytes": 0},
        ],
    }


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1024, "1.0 kB"),
        (1536, "1.5 kB"),
        (3 * 1024**3, "3.0 GB"),
        (2 * 1024**6, "2048.0 PB"),
    ],
)
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


# --- what moves need of a shard (router/rebalance/prereq.py) -------------------------------------

READY = {
    "version": 150004,
    "version_text": "15.4",
    "wal_level": "logical",
    "max_replication_slots": 10,
    "used_replication_slots": 2,
    "max_wal_senders": 10,
    "used_wal_senders": 2,
    "max_logical_replication_workers": 4,
    "role": "admin",
    "superuser": True,
    "replication": False,
    "creates_subscriptions": False,
}


def test_a_ready_shard_has_no_findings() -> None:
    assert move_findings(READY) == []
    assert (
        move_findings(
            {**READY, "superuser": False, "replication": True, "version": 160001, "creates_subscriptions": True}
        )
        == []
    )


@pytest.mark.parametrize(
    ("changes", "finding"),
    [
        (
            {"version": 140009, "version_text": "14.9"},
            "server version is 14.9; moves need PostgreSQL 15 or later (publications with row filters)",
        ),
        (
            {"wal_level": "replica"},
            "wal_level is replica; moves need wal_level = logical (set it in postgresql.conf and restart)",
        ),
        (
            {"used_replication_slots": 10},
            "no free replication slot: max_replication_slots is 10 and 10 in use; each move needs one"
            " (raise max_replication_slots in postgresql.conf and restart, or drop unused slots)",
        ),
        (
            {"max_wal_senders": 0, "used_wal_senders": 0},
            "no free WAL sender: max_wal_senders is 0 and 0 in use; each move needs one"
            " (raise max_wal_senders in postgresql.conf and restart)",
        ),
        (
            {"max_logical_replication_workers": 0},
            "max_logical_replication_workers is 0; moves need at least 1 (set it in postgresql.conf and restart)",
        ),
        (
            {"superuser": False, "replication": True},
            "the admin role admin is not a superuser: PostgreSQL 15 lets only superusers create subscriptions,"
            " so tenants cannot move to this shard (ALTER ROLE admin SUPERUSER)",
        ),
        (
            {"superuser": False, "replication": True, "version": 160001},
            "the admin role admin is neither a superuser nor a member of pg_create_subscription, so it cannot"
            " create subscriptions: tenants cannot move to this shard (GRANT pg_create_subscription TO admin,"
            " or make it a superuser)",
        ),
        (
            {"superuser": False, "version": 160001, "creates_subscriptions": True},
            "the admin role admin has neither SUPERUSER nor REPLICATION, so it cannot stream a publication:"
            " tenants cannot move off this shard (ALTER ROLE admin REPLICATION)",
        ),
    ],
)
def test_each_missing_prerequisite_is_named_with_its_value(changes: dict[str, object], finding: str) -> None:
    assert move_findings({**READY, **changes}) == [finding]


def test_every_missing_prerequisite_is_named_at_once() -> None:
    found = move_findings({**READY, "wal_level": "minimal", "max_logical_replication_workers": 0, "superuser": False})
    assert [f.split()[0] for f in found] == ["wal_level", "max_logical_replication_workers", "the", "the"]
