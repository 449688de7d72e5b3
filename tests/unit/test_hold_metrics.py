"""The hold metrics as Prometheus scrapes them, from a real `Holds` on the virtual clock: holds
counted, tenants held now, durations in the histogram's buckets; and several workers' expositions
summed into one, histogram buckets included; the /holds answer, one worker's and several summed."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.core.holds import Holds
from router.core.pool import Pool
from router.ops.http import holds_payload, merge_holds
from router.ops.metrics import RouterCollector, merge_expositions
from router.ops.move_readings import MoveFigures
from router.testing.virtualtime import in_virtual_time


@dataclass
class Repairs:
    repairs: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass
class Source:
    """The parts of a running router the collector reads; nothing but holds is going on."""

    holds: Holds
    client_count: int = 0
    connections_total: int = 0
    catalog: list[str] = field(default_factory=list)
    role_guard: Repairs = field(default_factory=Repairs)
    errors: Counter[str] = field(default_factory=Counter)
    move_figures: MoveFigures | None = None

    def iter_pools(self) -> Iterator[Pool]:
        return iter(())


def scrape(source: Source) -> str:
    registry = CollectorRegistry()
    registry.register(RouterCollector(source))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(("tenant_router_hold", "tenant_router_held"))
    }


async def held_and_released(holds: Holds, tenant: str, seconds: float) -> None:
    await holds.hold(tenant)
    await asyncio.sleep(seconds)
    await holds.release(tenant)


def make_holds() -> Holds:
    return Holds(10.0, lambda _tenant: False, lambda _callback: None)


@in_virtual_time
async def test_holds_held_tenants_and_hold_durations_are_exported() -> None:
    holds = make_holds()
    await held_and_released(holds, "acme", 0.02)
    await held_and_released(holds, "acme", 0.2)
    await held_and_released(holds, "globex", 4.0)
    await holds.hold("initech")  # held now
    got = samples(scrape(Source(holds)))
    assert got[("tenant_router_holds_total", ())] == 4
    assert got[("tenant_router_held_tenants", ())] == 1
    assert got[("tenant_router_hold_seconds_count", ())] == 3  # initech's hold has not ended
    assert abs(got[("tenant_router_hold_seconds_sum", ())] - 4.22) < 1e-9
    buckets = {dict(labels)["le"]: v for (name, labels), v in got.items() if name.endswith("_bucket")}
    assert list(buckets) == [
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "0.5",
        "1.0",
        "2.5",
        "5.0",
        "10.0",
        "+Inf",
    ]
    assert (buckets["0.01"], buckets["0.025"], buckets["0.1"], buckets["0.25"], buckets["2.5"]) == (0, 1, 1, 2, 2)
    assert buckets["5.0"] == buckets["+Inf"] == 3


@in_virtual_time
async def test_workers_hold_metrics_sum_into_the_instances() -> None:
    first, second = make_holds(), make_holds()
    await held_and_released(first, "acme", 0.02)
    await held_and_released(second, "acme", 0.03)
    await held_and_released(second, "globex", 7.0)
    merged = samples(merge_expositions([scrape(Source(first)), scrape(Source(second))]))
    assert merged[("tenant_router_holds_total", ())] == 3
    assert merged[("tenant_router_hold_seconds_count", ())] == 3
    assert merged[("tenant_router_hold_seconds_bucket", (("le", "0.025"),))] == 1
    assert merged[("tenant_router_hold_seconds_bucket", (("le", "0.05"),))] == 2
    assert merged[("tenant_router_hold_seconds_bucket", (("le", "+Inf"),))] == 3
    assert abs(merged[("tenant_router_hold_seconds_sum", ())] - 7.05) < 1e-9


@in_virtual_time
async def test_holds_answer_names_held_tenants_and_sums_over_workers() -> None:
    first, second = make_holds(), make_holds()
    for holds in (first, second):  # every worker enters every hold
        await held_and_released(holds, "acme", 0.01)
        await holds.hold("globex")
    await held_and_released(first, "acme", 0.01)
    one = holds_payload(first)
    assert one == {"held_now": ["globex"], "held_ever": {"acme": 2, "globex": 1}}
    assert json.loads(json.dumps(one)) == one  # what the endpoint sends
    merged = merge_holds([one, holds_payload(second)])
    assert merged == {"held_now": ["globex"], "held_ever": {"acme": 3, "globex": 2}}
    assert merge_holds([]) == {"held_now": [], "held_ever": {}}


def test_the_catalogs_moves_as_metrics() -> None:
    figures = MoveFigures(
        started=5,
        finished=3,
        failed=1,
        in_progress={"catching_up": 1},
        bytes_copied=123456,
        lag_bytes={"acme": 2048},
        cutover_buckets=((0.01, 0), (0.025, 2), (0.05, 3), (float("inf"), 3)),
        cutover_sum=0.07,
    )
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(
            scrape(Source(Holds(5.0, lambda _t: False, lambda _c: None), move_figures=figures))
        )
        for s in family.samples
        if s.name.startswith("tenant_router_move")
    }
    assert found[("tenant_router_moves_started_total", ())] == 5
    assert found[("tenant_router_moves_finished_total", ())] == 3
    assert found[("tenant_router_moves_failed_total", ())] == 1
    assert found[("tenant_router_moves_in_progress", (("stage", "catching_up"),))] == 1
    assert found[("tenant_router_move_bytes_copied_total", ())] == 123456
    assert found[("tenant_router_move_lag_bytes", (("tenant", "acme"),))] == 2048
    assert found[("tenant_router_move_cutover_hold_seconds_bucket", (("le", "0.025"),))] == 2
    assert found[("tenant_router_move_cutover_hold_seconds_count", ())] == 3
    # A process that does not read the catalog's moves (a worker other than 0) exports none.
    assert "tenant_router_move" not in scrape(Source(Holds(5.0, lambda _t: False, lambda _c: None)))
