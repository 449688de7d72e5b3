"""The pure parts of benchmarks/rebalance.py: quantiles, the router's histogram, pgbench's log, the
lost-row check and the stage clock."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from benchmarks.rebalance import (
    Check,
    LoggedTransaction,
    StageClock,
    histogram_delta,
    histogram_quantile,
    missing_rows,
    parse_histogram,
    parse_pgbench_log,
    percentile,
    throughput,
)
from router.catalog.moves import Move
from router.rebalance.mover import MoveProgress

INF = math.inf


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0
    assert percentile([0.2], 0.99) == 0.2
    assert percentile([], 0.5) is None


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    # 10 observations: 4 under 0.05 s, 6 between 0.05 and 0.1 s.
    buckets = [(0.05, 4.0), (0.1, 10.0), (0.25, 10.0), (INF, 10.0)]
    assert histogram_quantile(buckets, 0.5) == 0.05 + 0.05 * (5 - 4) / 6
    assert histogram_quantile(buckets, 0.2) == 0.05 * 2 / 4
    assert histogram_quantile(buckets, 1.0) == 0.1


def test_histogram_quantile_past_the_last_bound_and_empty() -> None:
    assert histogram_quantile([(0.1, 1.0), (INF, 3.0)], 0.99) == 0.1
    assert histogram_quantile([(0.1, 0.0), (INF, 0.0)], 0.5) is None
    assert histogram_quantile([], 0.5) is None


def test_histogram_delta_subtracts_the_earlier_scrape() -> None:
    before = [(0.1, 2.0), (INF, 3.0)]
    after = [(0.1, 5.0), (INF, 7.0)]
    assert histogram_delta(after, before) == [(0.1, 3.0), (INF, 4.0)]
    assert histogram_delta(after, []) == after


def test_parse_histogram_reads_a_metrics_exposition() -> None:
    text = """\
# HELP tenant_router_hold_seconds How long each hold lasted here
# TYPE tenant_router_hold_seconds histogram
tenant_router_hold_seconds_bucket{le="0.05"} 1.0
tenant_router_hold_seconds_bucket{le="0.1"} 3.0
tenant_router_hold_seconds_bucket{le="+Inf"} 4.0
tenant_router_hold_seconds_count 4.0
tenant_router_hold_seconds_sum 0.5
# HELP tenant_router_holds_total Holds
# TYPE tenant_router_holds_total counter
tenant_router_holds_total 4.0
"""
    assert parse_histogram(text, "tenant_router_hold_seconds") == [(0.05, 1.0), (0.1, 3.0), (INF, 4.0)]
    assert parse_histogram(text, "tenant_router_other_seconds") == []


def test_parse_pgbench_log_lines_and_failures() -> None:
    lines = [
        "0 0 1520 0 1765000000 250000",
        "1 4 failed 0 1765000001 5",
        "garbage",
        "2 7 980 0 1765000002 0 12",  # with a schedule lag column
    ]
    assert list(parse_pgbench_log(lines)) == [
        LoggedTransaction(0, 0, 1520, 1765000000.25),
        LoggedTransaction(1, 4, None, 1765000001.000005),
        LoggedTransaction(2, 7, 980, 1765000002.0),
    ]


def test_missing_rows_counts_every_committed_counter_not_found() -> None:
    committed = {(1, 0): 3, (1, 1): 2, (2, 0): 1}
    present = {(1, 0): {1, 2, 3, 4}, (1, 1): {2}}  # 4: in flight when the run ended, committed
    assert missing_rows(committed, present) == 2  # (1, 1) lacks 1, (2, 0) lacks 1
    assert missing_rows(committed, {(1, 0): {1, 2, 3}, (1, 1): {1, 2}, (2, 0): {1}}) == 0


def test_throughput_counts_ends_inside_the_window() -> None:
    ends = [10.0, 10.5, 11.0, 12.0, 13.0]
    assert throughput(ends, 10.0, 12.0) == 1.5  # 10.0, 10.5, 11.0 in [10, 12)
    assert throughput(ends, 12.0, 12.0) is None


def _progress(activity: str) -> MoveProgress:
    now = datetime.now(UTC)
    move = Move(1, "t", "shared", "shard_a", "shard_b", None, "catching_up", 0, 0, 0, None, None, None, None, None,
                now, now, None)  # fmt: skip
    return MoveProgress(move, activity, 0)


def test_stage_clock_takes_the_copy_as_done_after_its_progress() -> None:
    clock = StageClock()
    for activity in ("copying", "catching up", "copying (0 of 1 tables done)"):
        clock.progress(_progress(activity))
    assert clock.copy_done is None
    clock.progress(_progress("catching up"))
    assert clock.copy_done is not None
    done = clock.copy_done
    clock.progress(_progress("catching up"))
    assert clock.copy_done == done


def test_stage_clock_without_copy_progress_uses_the_second_catching_up() -> None:
    clock = StageClock()
    clock.progress(_progress("catching up"))  # the stage's own report
    assert clock.copy_done is None
    clock.progress(_progress("catching up"))
    assert clock.copy_done is not None


def test_check_renders_bars_and_checks() -> None:
    assert Check(True, "hold p99 90 ms <= 250 ms", bar=True).render() == "HOLDS: hold p99 90 ms <= 250 ms"
    assert Check(False, "hold p99 300 ms <= 250 ms", bar=True).render().startswith("DOES NOT HOLD: ")
    assert Check(False, "rows missing: 3").render() == "FAILED: rows missing: 3"
    assert Check(True, "rows missing: 0").render() == "ok: rows missing: 0"
