"""The progress board of `rebalance apply` and the SQL of a move's publication, on values only."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from router.catalog.moves import Move
from router.core.topology import ServerAddress
from router.rebalance.mover import MoveProgress
from router.rebalance.progress import ProgressBoard, TerminalProgress, format_duration
from router.rebalance.replication import ReplicationNames, SharedTable, Side, publication_sql

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def move(move_id: int, tenant: str = "acme", stage: str = "copying", copied: int = 0) -> Move:
    return Move(
        move_id=move_id,
        tenant_id=tenant,
        isolation="shared",
        source="shard_a",
        target="shard_c",
        pin=None,
        stage=stage,
        attempts=0,
        rows_copied=0,
        bytes_copied=copied,
        hold_seconds=0.05 if stage == "cleaned" else None,
        lag_bytes=None,
        last_error=None,
        owner=None,
        owner_seen_at=None,
        created_at=NOW,
        updated_at=NOW,
        finished_at=None,
    )


def test_the_board_counts_moves_and_bytes_and_estimates_the_time_left() -> None:
    board = ProgressBoard(total=4, total_bytes=4_000_000, started=100.0)
    board.event("started", move(1))
    board.progress(MoveProgress(move(1), "copying (0 of 1 tables done)", 500_000, None))
    board.event("finished", move(1, stage="cleaned", copied=1_000_000))
    board.event("started", move(2, "globex"))
    board.progress(MoveProgress(move(2, "globex"), "catching up", 1_000_000, 2048))
    assert board.done == 1 and board.bytes_copied == 2_000_000
    # 2 MB in 10 s: the 2 MB left take 10 s more.
    assert board.eta(110.0) == 10.0
    lines = board.render(110.0)
    assert lines[0].startswith("[######..................] 1/4 moves done | ")
    assert "ETA 10s" in lines[0]
    assert "globex" in lines[1] and "catching up" in lines[1] and "behind" in lines[1]


def test_without_byte_estimates_the_eta_goes_by_moves() -> None:
    board = ProgressBoard(total=3, total_bytes=None, started=0.0)
    board.event("started", move(1))
    board.event("failed", move(1))
    assert board.failed == 1 and board.eta(30.0) == 60.0
    assert "1 failed" in board.render(30.0)[0]


def test_a_log_gets_one_line_per_change_of_stage() -> None:
    out = io.StringIO()
    printer = TerminalProgress(ProgressBoard(total=1, total_bytes=None, started=0.0), out)
    for _ in range(3):
        printer.progress(MoveProgress(move(1), "catching up", 10, None))
    printer.progress(MoveProgress(move(1), "holding", 10, None))
    printer.event("finished", move(1, stage="cleaned", copied=10))
    assert out.getvalue().splitlines() == [
        "acme: shard_a -> shard_c: catching up",
        "acme: shard_a -> shard_c: holding",
        "acme: moved to shard_c (held 50 ms)",
    ]


def test_durations() -> None:
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_publications_per_isolation_model() -> None:
    names = ReplicationNames(7)
    tables = [SharedTable("public", "items", "tenant_id"), SharedTable("app", "Orders", "owner")]
    assert publication_sql(names, "shared", "o'brien", tables) == (
        'CREATE PUBLICATION "tenant_router_move_7" FOR TABLE "public"."items" WHERE ("tenant_id" = \'o\'\'brien\'),'
        ' TABLE "app"."Orders" WHERE ("owner" = \'o\'\'brien\'),'
        " TABLE tenant_router_move.markers WHERE (move_id = 7)"
    )
    assert publication_sql(names, "schema", "acme", []) == (
        'CREATE PUBLICATION "tenant_router_move_7" FOR TABLES IN SCHEMA "tenant_acme",'
        " TABLE tenant_router_move.markers WHERE (move_id = 7)"
    )
    assert publication_sql(names, "database", "acme", []) == 'CREATE PUBLICATION "tenant_router_move_7" FOR ALL TABLES'


def test_a_subscription_connection_string_quotes_its_values() -> None:
    from router.admin.shard_access import Login

    side = Side("shard_a", ServerAddress("db.example", 5432, "app"), "tenant_acme")
    assert side.conninfo(Login("admin", "it's\\secret")) == (
        "host='db.example' port='5432' dbname='tenant_acme' user='admin'"
        " application_name='tenant-router-move' password='it\\'s\\\\secret'"
    )
