"""The move audit's own logic (router/testing/moveload.py), on values: it must be able to fail."""

from __future__ import annotations

from router.testing.moveload import Expected, PortLog, compare, parse_name, row_name, stale_reads


def test_row_names_round_trip() -> None:
    assert parse_name(row_name(12, 3)) == (12, 3)
    assert parse_name("bystander") is None
    assert parse_name("1:x") is None


def test_rows_exactly_as_acknowledged_pass() -> None:
    expected = Expected(acked={1: 0, 2: 3})
    assert compare(["1:0", "2:3"], expected, "here") == []


def test_missing_doubled_outdated_and_unknown_rows_are_each_reported() -> None:
    expected = Expected(acked={1: 0, 2: 1, 3: 2})
    problems = compare(["2:1", "2:1", "3:1", "4:0", "junk"], expected, "on shard_b")
    assert problems == [
        "on shard_b: a row no writer made: 'junk'",
        "on shard_b: 1 acknowledged rows missing, e.g. [1]",
        "on shard_b: row 2 is there 2 times: versions [1, 1]",
        "on shard_b: row 3 at version 1, last acknowledged 2",
        "on shard_b: row 4 (versions [0]) was never acknowledged",
    ]


def test_a_write_of_unknown_outcome_may_be_there_or_not() -> None:
    expected = Expected(acked={1: 0}, uncertain={1: {1}, 2: {0}})
    assert compare(["1:1", "2:0"], expected, "x") == []
    assert compare(["1:0"], expected, "x") == []
    assert compare(["1:0", "2:0", "2:0"], expected, "x") == ["x: row 2 (versions [0, 0]) was never acknowledged"]


def test_a_read_must_show_what_was_acknowledged_before_it() -> None:
    assert stale_reads({1: 0, 2: 1}, ["1:0", "2:2", "3:0"], 5432) == []
    assert stale_reads({1: 0, 2: 1}, ["2:0"], 5432) == [
        "read on port 5432: row 1 acknowledged at version 0, read as []",
        "read on port 5432: row 2 acknowledged at version 1, read as [0]",
    ]


def test_port_log_keeps_runs() -> None:
    log = PortLog()
    for port in (1, 1, 2, 2, 2, 1):
        log.add(port)
    assert log.runs == [(1, 2), (2, 3), (1, 1)]
    assert log.ports() == [1, 2, 1]


def test_seeded_rows() -> None:
    assert Expected.seeded(2).acked == {1: 0, 2: 0}
