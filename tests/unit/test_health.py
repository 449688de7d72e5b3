"""Health checks without sockets: LSNs, backoff, lag, and up/down transitions driven by a fake probe."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from router.config import HealthConfig, ServerCredentials
from router.core.topology import RingConfig, ServerAddress, Shard, Topology
from router.ops.health import (
    HealthMonitor,
    Reading,
    ServerKey,
    backoff_delay,
    compute_lag,
)
from router.protocol.pg.wal import format_lsn, parse_lsn, record_end
from router.testing.virtualtime import in_virtual_time
from router.testing.waiting import wait_until_async

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
PRIMARY_A = ServerAddress("10.0.0.1", 5432, "app")
REPLICA_A = ServerAddress("10.0.0.2", 5432, "app")
PRIMARY_B = ServerAddress("10.0.1.1", 5432, "app")
P_A = ServerKey("shard_a", "10.0.0.1", 5432, "primary")
R_A = ServerKey("shard_a", "10.0.0.2", 5432, "replica")
P_B = ServerKey("shard_b", "10.0.1.1", 5432, "primary")


def topology(*, with_b: bool = False, replicas: tuple[ServerAddress, ...] = (REPLICA_A,)) -> Topology:
    shards = {"shard_a": Shard("shard_a", PRIMARY_A, replicas, 1)}
    if with_b:
        shards["shard_b"] = Shard("shard_b", PRIMARY_B, (), 1)
    return Topology(shards=shards, ring=RingConfig(), pins={}, source=Path("shards.yaml"))


def primary_reading(lsn: int) -> Reading:
    return Reading(in_recovery=False, current_lsn=lsn, now=NOW)


def replica_reading(replay: int, receive: int | None = None, replayed_at: datetime | None = None) -> Reading:
    return Reading(
        in_recovery=True,
        replay_lsn=replay,
        receive_lsn=replay if receive is None else receive,
        replay_timestamp=replayed_at,
        now=NOW,
    )


class FakeProbe:
    """Answers per server: a Reading, an exception to raise, or a callable producing either."""

    def __init__(self) -> None:
        self.answers: dict[ServerKey, Reading | BaseException | Callable[[], Reading]] = {}
        self.calls: list[ServerKey] = []
        self.timed_calls: list[tuple[ServerKey, float]] = []  # with the loop's time of each call
        self.gate: asyncio.Event | None = None  # when set: every probe waits for it

    async def __call__(self, key: ServerKey, address: ServerAddress) -> Reading:
        self.calls.append(key)
        self.timed_calls.append((key, asyncio.get_running_loop().time()))
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.get(key, primary_reading(0) if key.role == "primary" else replica_reading(0))
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer()
        return answer


class Events:
    def __init__(self) -> None:
        self.down: list[tuple[ServerKey, str]] = []
        self.up: list[ServerKey] = []

    def on_down(self, key: ServerKey, error: str) -> None:
        self.down.append((key, error))

    def on_up(self, key: ServerKey) -> None:
        self.up.append(key)


def monitor(
    probe: FakeProbe,
    events: Events | None = None,
    *,
    interval: float = 1.0,
    timeout: float = 2.0,
    max_backoff: float = 30.0,
    topo: Topology | None = None,
) -> HealthMonitor:
    events = events or Events()
    return HealthMonitor(
        topo or topology(),
        ServerCredentials(user="router"),
        HealthConfig(interval=interval, timeout=timeout, max_backoff=max_backoff),
        events.on_down,
        events.on_up,
        probe=probe,
    )


# --- pure helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("16/B374D848", 0x16_B374D848),
        ("0/0", 0),
        ("0/3000060", 0x3000060),
        ("ffffffff/ffffffff", 2**64 - 1),
        (" 1/0 ", 1 << 32),
    ],
)
def test_parse_lsn(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert parse_lsn(format_lsn(value)) == value


def test_format_lsn_matches_postgres() -> None:
    assert format_lsn(0x16_B374D848) == "16/B374D848"
    assert format_lsn(0x3000060) == "0/3000060"


@pytest.mark.parametrize(
    ("insert_lsn", "segment_offset", "end"),
    [
        (0x3000028, 0x28, 0x3000000),  # first page of a segment: past its long header
        (0x3002018, 0x2018, 0x3002000),  # any other page: past its short header
        (0x3002028, 0x2028, 0x3002028),  # a record ending 40 bytes into a page that is not a segment's first
        (0x30020F0, 0x20F0, 0x30020F0),
    ],
)
def test_record_end_is_where_a_caught_up_replica_stops(insert_lsn: int, segment_offset: int, end: int) -> None:
    assert record_end(insert_lsn, segment_offset, 8192) == end


@pytest.mark.parametrize("text", ["", "16", "16/", "/B3", "16/B374D848/1", "G/0", "123456789/0", "-1/0"])
def test_parse_lsn_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        parse_lsn(text)


def test_backoff_schedule() -> None:
    assert [backoff_delay(n, 1.0, 30.0) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [backoff_delay(n, 0.2, 1.0) for n in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff_delay(10_000, 1.0, 30.0) == 30.0  # no overflow however long it stays down
    assert backoff_delay(-1, 1.0, 30.0) == 1.0


def test_lag_caught_up_is_zero_even_when_idle_for_long() -> None:
    # An idle primary: the last commit replayed an hour ago, but there is nothing left to replay.
    reading = replica_reading(1000, replayed_at=NOW - timedelta(hours=1))
    assert compute_lag(reading, primary_lsn=1000) == (0, 0.0)
    # The primary's snapshot is a little older than the replica's: still caught up.
    assert compute_lag(reading, primary_lsn=900) == (0, 0.0)


def test_lag_behind_the_primary() -> None:
    reading = replica_reading(1000, replayed_at=NOW - timedelta(seconds=3.5))
    assert compute_lag(reading, primary_lsn=1500) == (500, 3.5)


def test_lag_behind_what_was_received() -> None:
    # Applying is delayed (recovery_min_apply_delay): received but not replayed counts as lag.
    reading = replica_reading(1000, receive=1800, replayed_at=NOW - timedelta(seconds=2))
    assert compute_lag(reading, primary_lsn=1500) == (800, 2.0)
    # Primary unknown (down, or not checked): what the replica received is the reference.
    assert compute_lag(reading, primary_lsn=None) == (800, 2.0)


def test_lag_unknown() -> None:
    # Behind, but no commit replayed yet: seconds unknown.
    assert compute_lag(replica_reading(1000, replayed_at=None), primary_lsn=2000) == (1000, None)
    # No reference at all.
    no_receive = Reading(in_recovery=True, replay_lsn=1000, receive_lsn=None, now=NOW)
    assert compute_lag(no_receive, primary_lsn=None) == (None, None)
    # Not a replica (promoted) or no replay position.
    assert compute_lag(Reading(in_recovery=False, replay_lsn=1000, now=NOW), primary_lsn=1000) == (None, None)
    assert compute_lag(Reading(in_recovery=True, receive_lsn=1000, now=NOW), primary_lsn=1000) == (None, None)


def test_lag_seconds_never_negative() -> None:
    # The replica's clock behind the primary's (the replay timestamp is the primary's commit time).
    reading = replica_reading(1000, replayed_at=NOW + timedelta(seconds=2))
    assert compute_lag(reading, primary_lsn=1100) == (100, 0.0)


# --- transitions driven by check_now / report_failure ---------------------------------------------


async def test_initial_status_is_optimistic_and_unmeasured() -> None:
    health = monitor(FakeProbe())
    status = health.status(R_A)
    assert status.up and status.failures == 0
    assert status.lag_bytes is None and status.replay_lsn is None and status.checked_at is None
    assert health.is_up(R_A)
    assert not health.replica_ok(R_A, 10**9, 1e9)  # never measured
    assert [s.key for s in health.statuses()] == [P_A, R_A]


async def test_down_and_up_transitions_with_backoff() -> None:
    probe, events = FakeProbe(), Events()
    health = monitor(probe, events, interval=1.0, max_backoff=5.0)
    loop = asyncio.get_running_loop()
    probe.answers[R_A] = ConnectionRefusedError(111, "Connection refused")

    before = loop.time()
    status = await health.check_now(R_A)
    assert not status.up and status.failures == 1
    assert status.last_error == "connection refused"
    assert events.down == [(R_A, "connection refused")]
    assert before + 2.0 <= status.next_check <= loop.time() + 2.0

    await health.check_now(R_A)
    await health.check_now(R_A)
    assert status.failures == 3
    assert len(events.down) == 1  # once per transition
    assert status.next_check <= loop.time() + 5.0  # 8s capped by max_backoff
    assert status.next_check >= loop.time() + 4.9
    assert not health.is_up(R_A)

    probe.answers[R_A] = replica_reading(50)
    await health.check_now(R_A)
    assert status.up and status.failures == 0 and status.last_error is None
    assert events.up == [R_A]
    await health.check_now(R_A)
    assert events.up == [R_A]  # already up: no second call
    assert health.is_up(R_A)


async def test_probe_timeout_marks_down() -> None:
    probe, events = FakeProbe(), Events()
    probe.gate = asyncio.Event()  # never set: a blackholed server
    health = monitor(probe, events, timeout=0.05)
    status = await asyncio.wait_for(health.check_now(P_A), 2)
    assert not status.up
    assert status.last_error == "no answer within 0.05s"
    assert events.down == [(P_A, "no answer within 0.05s")]


async def test_report_failure_marks_down_at_once() -> None:
    probe, events = FakeProbe(), Events()
    health = monitor(probe, events, interval=0.5)
    loop = asyncio.get_running_loop()
    health.report_failure(P_A, "connection refused")
    status = health.status(P_A)
    assert not status.up and status.failures == 1
    assert events.down == [(P_A, "connection refused")]
    assert status.next_check == pytest.approx(loop.time() + 1.0, abs=0.1)

    # A burst of failing clients neither repeats on_down nor stretches the backoff.
    next_check = status.next_check
    health.report_failure(P_A, "timeout")
    assert events.down == [(P_A, "connection refused")]
    assert status.failures == 1 and status.next_check == next_check
    assert status.last_error == "timeout"

    await health.check_now(P_A)
    assert status.up and events.up == [P_A]


async def test_check_started_before_a_report_cannot_bring_it_back() -> None:
    probe, events = FakeProbe(), Events()
    health = monitor(probe, events)
    probe.gate = asyncio.Event()
    running = asyncio.create_task(health.check_now(P_A))
    await wait_until_async(lambda: probe.calls, "the check to reach the probe", within=5.0)
    assert probe.calls == [P_A]
    health.report_failure(P_A, "connection refused")
    probe.gate.set()
    status = await running
    assert not status.up and events.up == []
    # A check that starts afterwards does.
    await health.check_now(P_A)
    assert status.up and events.up == [P_A]


async def test_callback_errors_are_contained(caplog: pytest.LogCaptureFixture) -> None:
    probe = FakeProbe()

    def boom(*_args: object) -> None:
        raise RuntimeError("callback bug")

    health = HealthMonitor(topology(), ServerCredentials(user="router"), HealthConfig(), boom, boom, probe=probe)
    probe.answers[P_A] = OSError(113, "No route to host")
    with caplog.at_level(logging.ERROR, logger="router.ops.health"):
        status = await health.check_now(P_A)
    assert not status.up and status.last_error == "No route to host"
    assert "on_down callback failed" in caplog.text


async def test_check_now_unknown_server() -> None:
    health = monitor(FakeProbe())
    with pytest.raises(KeyError):
        await health.check_now(P_B)
    assert health.status(P_B).up  # created on demand


# --- lag through the monitor ---------------------------------------------------------------------


async def test_replica_lag_against_primary_and_replica_ok() -> None:
    probe = FakeProbe()
    health = monitor(probe)
    probe.answers[P_A] = primary_reading(5000)
    probe.answers[R_A] = replica_reading(4000, replayed_at=NOW - timedelta(seconds=2))
    await health.check_now(P_A)
    status = await health.check_now(R_A)
    assert (status.replay_lsn, status.lag_bytes, status.lag_seconds) == (4000, 1000, 2.0)
    assert health.status(P_A).current_lsn == 5000

    assert health.replica_ok(R_A, max_lag_bytes=1000, max_lag_seconds=2.0)
    assert not health.replica_ok(R_A, max_lag_bytes=999, max_lag_seconds=2.0)
    assert not health.replica_ok(R_A, max_lag_bytes=1000, max_lag_seconds=1.9)
    assert health.replica_ok(R_A, 1000, 2.0, min_lsn=4000)
    assert not health.replica_ok(R_A, 1000, 2.0, min_lsn=4001)

    # Caught up.
    probe.answers[R_A] = replica_reading(5000, replayed_at=NOW - timedelta(minutes=5))
    await health.check_now(R_A)
    assert (status.lag_bytes, status.lag_seconds) == (0, 0.0)
    assert health.replica_ok(R_A, 0, 0.0, min_lsn=5000)

    # Down: not ok whatever it measured last.
    health.report_failure(R_A, "connection refused")
    assert not health.replica_ok(R_A, 10**9, 1e9)


async def test_primary_down_lag_falls_back_to_received_wal() -> None:
    probe = FakeProbe()
    health = monitor(probe)
    probe.answers[P_A] = primary_reading(9000)
    await health.check_now(P_A)
    health.report_failure(P_A, "connection refused")
    probe.answers[R_A] = replica_reading(4000, receive=4000)
    status = await health.check_now(R_A)
    assert (status.lag_bytes, status.lag_seconds) == (0, 0.0)  # not against the down primary's 9000


async def test_wrong_role_counts_as_up_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    probe, events = FakeProbe(), Events()
    health = monitor(probe, events)
    probe.answers[R_A] = Reading(in_recovery=False, current_lsn=7000, replay_lsn=3000, now=NOW)
    with caplog.at_level(logging.WARNING, logger="router.ops.health"):
        await health.check_now(R_A)
        status = await health.check_now(R_A)
    assert status.up and events.down == []
    assert status.lag_bytes is None and not health.replica_ok(R_A, 10**9, 1e9)
    assert caplog.text.count("not in recovery") == 1

    probe.answers[P_A] = Reading(in_recovery=True, replay_lsn=3000, receive_lsn=3000, now=NOW)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="router.ops.health"):
        primary = await health.check_now(P_A)
    assert primary.up and primary.current_lsn is None
    assert "is in recovery" in caplog.text


# --- the background tasks ------------------------------------------------------------------------
# They run on a virtual clock: `asyncio.sleep(x)` there advances the monitor's schedule by exactly x,
# so the tests assert the schedule itself, however loaded the machine is.


@in_virtual_time
async def test_rounds_check_primary_before_replicas_and_measure_from_the_same_round() -> None:
    probe = FakeProbe()
    lsn = {"primary": 1000}

    def primary_answer() -> Reading:
        lsn["primary"] += 100  # the primary keeps writing
        return primary_reading(lsn["primary"])

    probe.answers[P_A] = primary_answer
    probe.answers[R_A] = lambda: replica_reading(lsn["primary"] - 40, replayed_at=NOW - timedelta(seconds=1))
    health = monitor(probe, interval=0.01, topo=topology(with_b=True))
    await health.start()
    try:
        await health.wait_checked(2.0)
        await asyncio.sleep(0.05)  # five more rounds
    finally:
        await health.stop()
    shard_a = [k for k in probe.calls if k.shard == "shard_a"]
    assert len(shard_a) >= 6
    # Strictly alternating: primary, then its replica, round after round.
    assert shard_a[: len(shard_a) // 2 * 2 : 2] == [P_A] * (len(shard_a) // 2)
    assert P_B in probe.calls
    status = health.status(R_A)
    assert (status.lag_bytes, status.lag_seconds) == (40, 1.0)
    assert all(s.checked_at is not None for s in health.statuses())


@in_virtual_time
async def test_background_backoff_and_recovery() -> None:
    probe, events = FakeProbe(), Events()
    probe.answers[R_A] = ConnectionRefusedError(111, "Connection refused")
    health = monitor(probe, events, interval=0.01, max_backoff=0.08)
    started = asyncio.get_running_loop().time()
    await health.start()
    try:
        await asyncio.sleep(0.4)  # 0.4 s of the schedule, on the virtual clock
        replica_at = [at - started for key, at in probe.timed_calls if key == R_A]
        primary_at = [at - started for key, at in probe.timed_calls if key == P_A]
        # The failing replica backs off: 0.02, 0.04, 0.08, then capped at max_backoff ...
        gaps = [b - a for a, b in itertools.pairwise(replica_at)]
        assert gaps == pytest.approx([backoff_delay(n, 0.01, 0.08) for n in range(1, len(replica_at))])
        assert replica_at == pytest.approx([0.0, 0.02, 0.06, 0.14, 0.22, 0.30, 0.38])
        # ... while the healthy primary keeps its interval.
        assert [b - a for a, b in itertools.pairwise(primary_at)] == pytest.approx([0.01] * (len(primary_at) - 1))
        assert len(primary_at) >= 40
        assert events.down == [(R_A, "connection refused")]
        assert health.status(R_A).failures == len(replica_at)

        probe.answers[R_A] = replica_reading(0)
        await asyncio.sleep(0.1)  # past the next backed-off check, at 0.46
        assert events.up == [R_A]
        assert health.is_up(R_A) and health.status(R_A).failures == 0
    finally:
        await health.stop()


@in_virtual_time
async def test_wait_checked_times_out_without_start() -> None:
    health = monitor(FakeProbe())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await health.wait_checked(0.05)
    assert loop.time() - started == pytest.approx(0.05)


@in_virtual_time
async def test_stop_never_hangs_on_a_blackholed_probe() -> None:
    probe = FakeProbe()
    probe.gate = asyncio.Event()  # never set
    health = monitor(probe, interval=0.01, timeout=30.0)
    await health.start()
    await wait_until_async(lambda: probe.calls, "the first probe to start", within=1.0)
    await asyncio.wait_for(health.stop(), 1.0)  # well before the probe's 30 s timeout
    with pytest.raises(RuntimeError):  # a stopped monitor can be started again, a running one not
        await health.start()
        await health.start()
    await health.stop()


@in_virtual_time
async def test_set_topology_adds_and_removes_servers() -> None:
    probe, events = FakeProbe(), Events()
    health = monitor(probe, events, interval=0.02, topo=topology(replicas=()))
    await health.start()
    try:
        await health.wait_checked(2.0)
        assert [s.key for s in health.statuses()] == [P_A]

        health.set_topology(topology(with_b=True))
        await health.wait_checked(2.0)
        assert [s.key for s in health.statuses()] == [P_A, R_A, P_B]
        assert R_A in probe.calls and P_B in probe.calls

        health.set_topology(topology(replicas=()))
        assert [s.key for s in health.statuses()] == [P_A]
        await asyncio.sleep(0.05)  # checks that were due when it changed have run
        probe.calls.clear()
        await asyncio.sleep(0.1)  # five more intervals: only P_A is checked
        assert probe.calls and set(probe.calls) == {P_A}
        with pytest.raises(KeyError):
            await health.check_now(R_A)
        assert events.down == []
    finally:
        await health.stop()


def test_lag_seconds_is_capped_by_the_time_since_the_replica_was_caught_up() -> None:
    from datetime import UTC, datetime, timedelta

    from router.ops.health import Reading, compute_lag

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    reading = Reading(
        in_recovery=True,
        replay_lsn=100,
        receive_lsn=200,
        replay_timestamp=now - timedelta(hours=1),  # the last commit replayed was an hour ago
        now=now,
    )
    assert compute_lag(reading, 200) == (100, 3600.0)
    assert compute_lag(reading, 200, caught_up_at=now - timedelta(seconds=1.5)) == (100, 1.5)
