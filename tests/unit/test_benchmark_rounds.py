"""The benchmark's rounds: which run of several counts, and the spread it prints."""

from __future__ import annotations

from benchmarks.run import Names, Result, failures, median_runs, spread_table


def run(target: str, tps: float | None, *, exit_code: int = 0, clients: int = 100) -> Result:
    return Result(target=target, mode="simple", clients=clients, duration=10, exit_code=exit_code, tps=tps)


def test_the_median_run_counts_per_target_and_cell() -> None:
    results = [
        run("direct", 30_000),
        run("router-2", 18_000),
        run("direct", 26_000),
        run("router-2", 21_000),
        run("direct", 28_000),
        run("router-2", 15_000),
        run("direct", 9_000, clients=16),
    ]
    chosen = {(r.target, r.clients): r.tps for r in median_runs(results)}
    assert chosen == {("direct", 100): 28_000, ("router-2", 100): 18_000, ("direct", 16): 9_000}


def test_an_even_count_takes_the_upper_middle_run() -> None:
    assert [r.tps for r in median_runs([run("direct", 1), run("direct", 4), run("direct", 2), run("direct", 3)])] == [3]


def test_a_failed_round_is_not_hidden_by_the_others() -> None:
    results = [run("router-2", 18_000), run("router-2", None, exit_code=2), run("router-2", 19_000)]
    (chosen,) = median_runs(results)
    assert not chosen.ok
    assert chosen.exit_code == 2


def test_the_spread_shows_lowest_and_highest_tps() -> None:
    results = [
        run("direct", 26_000),
        run("direct", 30_500),
        run("router-1", 17_000),
        run("router-1", None, exit_code=1),
    ]
    table = spread_table(results, Names("router-1", "router-1", pgbouncer=False))
    assert "26,000-30,500" in table
    assert "17,000-17,000" in table  # a failed run has no tps to count


def test_a_cell_that_failed_in_several_rounds_is_listed_once() -> None:
    results = [
        run("pgbouncer", None, exit_code=2),
        run("pgbouncer", 9_000),
        run("pgbouncer", None, exit_code=2),
        run("router-2", 18_000),
    ]
    results[0].errors = ['ERROR:  prepared statement "P_0" already exists']
    listing = failures(results)
    assert listing.splitlines()[0] == "pgbouncer -M simple -c 100: exit code 2, 2 of 3 runs"
    assert listing.count("already exists") == 1
    assert "router-2" not in listing


def test_the_baseline_bars_compare_every_cell_and_the_added_latency() -> None:
    from benchmarks.run import baseline_bars

    names = Names("router-1", "router-1", False, "before-1")
    results = [run("router-1", 9_800), run("before-1", 10_000), run("router-1", 9_000, clients=16)]
    results.append(run("before-1", 10_000, clients=16))
    latency = [
        Result(target=t, mode="simple", clients=1, duration=10, exit_code=0, mean_us=us)
        for t, us in (("direct", 100.0), ("router-1", 160.0), ("before-1", 158.0))
    ]
    holds = [holds for holds, _line in baseline_bars(results, latency, names)]
    assert holds == [False, True, True]  # -c 16 at 0.90x fails; -c 100 at 0.98x holds; 160 <= 158 * 1.03
    assert baseline_bars(results, latency, Names("router-1", "router-1", False)) == []
