"""Every metric the router exports, defined in one place.

The router keeps plain counters on its objects (no locks or label lookups on the hot path); this
collector reads them when Prometheus scrapes, through `MetricsSource`, which the composition root
(router.app.Router) satisfies: this module must not import it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from router.core.pool import Pool
    from router.ops.move_readings import MoveFigures


class RoleRepairs(Protocol):
    @property
    def repairs(self) -> Mapping[tuple[str, str], int]:
        """Repairs of the router's server roles by (shard, kind) (router.net.role_guard)."""
        ...


class HoldDurations(Protocol):
    @property
    def sum(self) -> float: ...

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at most that long), the last bound infinite (router.core.holds)."""
        ...


class HoldRecords(Protocol):
    """This process's holds (router.core.holds.Holds)."""

    @property
    def held(self) -> Mapping[str, object]: ...

    @property
    def held_ever(self) -> Mapping[str, int]: ...

    @property
    def hold_seconds(self) -> HoldDurations: ...


class MetricsSource(Protocol):
    """What the metrics read of a running router."""

    @property
    def move_figures(self) -> MoveFigures | None:
        """The catalog's tenant moves (router.ops.move_readings), in the process that reads them."""
        ...

    @property
    def client_count(self) -> int: ...

    @property
    def connections_total(self) -> int: ...

    @property
    def catalog(self) -> Sized: ...

    @property
    def role_guard(self) -> RoleRepairs: ...

    @property
    def errors(self) -> Mapping[str, int]: ...

    @property
    def holds(self) -> HoldRecords: ...

    def iter_pools(self) -> Iterator[Pool]: ...


class RouterCollector(Collector):
    def __init__(self, router: MetricsSource) -> None:
        self._router = router

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        router = self._router
        clients = GaugeMetricFamily("tenant_router_clients", "Logged-in client connections")
        clients.add_metric([], router.client_count)
        yield clients
        logins = CounterMetricFamily("tenant_router_client_logins", "Client logins accepted")
        logins.add_metric([], router.connections_total)
        yield logins
        tenants = GaugeMetricFamily("tenant_router_catalog_tenants", "Tenants in the catalog cache")
        tenants.add_metric([], len(router.catalog))
        yield tenants
        labels = ["shard", "database"]
        servers = GaugeMetricFamily(
            "tenant_router_server_connections", "Server connections by state", labels=[*labels, "state"]
        )
        waiting = GaugeMetricFamily(
            "tenant_router_pool_waiting_clients", "Clients waiting for a server connection", labels=labels
        )
        transactions = CounterMetricFamily(
            "tenant_router_transactions", "Transactions completed through the pool", labels=labels
        )
        timeouts = CounterMetricFamily(
            "tenant_router_pool_wait_timeouts", "Clients that gave up waiting for a server", labels=labels
        )
        failures = CounterMetricFamily(
            "tenant_router_server_connect_failures", "Failed server connection attempts", labels=labels
        )
        handovers = CounterMetricFamily(
            "tenant_router_pool_handovers", "Server sessions passed to another client", labels=labels
        )
        wipes = CounterMetricFamily(
            "tenant_router_pool_handover_wipes",
            "Hand-overs that wiped the server session first (pool.handover: exact, after a statement not proven inert)",
            labels=labels,
        )
        sequence_resets = CounterMetricFamily(
            "tenant_router_pool_handover_sequence_resets",
            "Hand-overs that only discarded sequence state first (pool.handover: exact, after rows were written)",
            labels=labels,
        )
        for pool in router.iter_pools():
            key = [pool.key.shard, pool.key.database]
            servers.add_metric([*key, "idle"], pool.idle_count)
            servers.add_metric([*key, "active"], pool.active_count)
            waiting.add_metric(key, pool.waiting)
            transactions.add_metric(key, pool.transactions)
            timeouts.add_metric(key, pool.wait_timeouts)
            failures.add_metric(key, pool.connect_failures)
            handovers.add_metric(key, pool.handovers)
            wipes.add_metric(key, pool.wipes)
            sequence_resets.add_metric(key, pool.sequence_resets)
        yield from (servers, waiting, transactions, timeouts, failures, handovers, wipes, sequence_resets)
        repairs = CounterMetricFamily(
            "tenant_router_role_repairs",
            "Server roles the router repaired as the admin after a session acting as them changed them"
            " (kind: password, role_defaults); each one is also logged as an ERROR",
            labels=["shard", "kind"],
        )
        for (shard, kind), count in sorted(router.role_guard.repairs.items()):
            repairs.add_metric([shard, kind], count)
        yield repairs
        errors = CounterMetricFamily("tenant_router_errors", "Errors the router sent to clients", labels=["sqlstate"])
        for sqlstate, count in sorted(router.errors.items()):
            errors.add_metric([sqlstate], count)
        yield errors
        yield from _hold_metrics(router.holds)
        figures = router.move_figures
        if figures is not None:
            yield from _move_metrics(figures)


def _move_metrics(figures: MoveFigures) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
    """The catalog's moves: the same figures in every instance (take max() across instances)."""
    for name, value, text in (
        ("started", figures.started, "Tenant moves recorded in the catalog"),
        ("finished", figures.finished, "Tenant moves finished: on the target, the source cleaned up"),
        ("failed", figures.failed, "Tenant moves rolled back: the tenant stayed on its source"),
    ):
        counter = CounterMetricFamily(f"tenant_router_moves_{name}", text)
        counter.add_metric([], value)
        yield counter
    stages = GaugeMetricFamily("tenant_router_moves_in_progress", "Open tenant moves by stage", labels=["stage"])
    for stage, count in sorted(figures.in_progress.items()):
        stages.add_metric([stage], count)
    yield stages
    copied = CounterMetricFamily("tenant_router_move_bytes_copied", "Bytes of tenant data moves have copied")
    copied.add_metric([], figures.bytes_copied)
    yield copied
    lag = GaugeMetricFamily(
        "tenant_router_move_lag_bytes", "How far (WAL bytes) an open move's target is behind", labels=["tenant"]
    )
    for tenant, behind in sorted(figures.lag_bytes.items()):
        lag.add_metric([tenant], behind)
    yield lag
    holds = HistogramMetricFamily(
        "tenant_router_move_cutover_hold_seconds", "How long each move's cutover held its tenant (the mover's view)"
    )
    holds.add_metric([], [(_bound(b), c) for b, c in figures.cutover_buckets], figures.cutover_sum)
    yield holds


def _hold_metrics(holds: HoldRecords) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
    total = CounterMetricFamily("tenant_router_holds", "Holds on a tenant this process entered (rebalance cutovers)")
    total.add_metric([], sum(holds.held_ever.values()))
    yield total
    held = GaugeMetricFamily("tenant_router_held_tenants", "Tenants held now: their new transactions wait")
    held.add_metric([], len(holds.held))
    yield held
    durations = holds.hold_seconds
    seconds = HistogramMetricFamily(
        "tenant_router_hold_seconds", "How long each hold lasted here, from entering it to its release"
    )
    buckets = [(_bound(bound), count) for bound, count in durations.cumulative()]
    seconds.add_metric([], buckets, durations.sum)
    yield seconds


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def merge_expositions(texts: list[str]) -> str:
    """Sum the metrics of several workers, sample by sample (same name and labels), into one
    exposition. Every router metric is a count, a gauge or a histogram of things each worker owns,
    so the sum is the instance's exact value (a tenant held by every worker counts once per worker
    in tenant_router_held_tenants)."""
    families: dict[str, tuple[str, str]] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, (family.type, family.documentation))
            samples = sums.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value
    lines: list[str] = []
    for name, (kind, documentation) in families.items():
        header = f"{name}_total" if kind == "counter" else name  # as prometheus_client writes them
        lines.append(f"# HELP {header} {documentation}")
        lines.append(f"# TYPE {header} {kind}")
        for (sample_name, labels), value in sums[name].items():
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample_name}{{{rendered}}} {value!r}" if rendered else f"{sample_name} {value!r}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
