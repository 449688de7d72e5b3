"""Live reload of shards.yaml, apart from the running router: which tenants a new topology moves,
when a reload is refused, its log line, the file watcher, the pid file and `tenant-router reload`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from router.cli import main
from router.config import RouterConfig, load_router_config
from router.core.hashing import Ring
from router.core.topology import RingConfig, ServerAddress, Shard, Topology, diff_topologies
from router.ops.reload import (
    FileWatcher,
    NoRunningRouter,
    ReloadSignalError,
    TenantMove,
    moved_tenants,
    pid_file_path,
    read_pid_file,
    reload_problems,
    remove_pid_file,
    signal_reload,
    summarize,
    write_pid_file,
)
from router.testing.virtualtime import in_virtual_time

TENANTS = [f"tenant{i:03d}" for i in range(600)]


def shard(name: str, weight: int = 1, replicas: tuple[ServerAddress, ...] = ()) -> Shard:
    return Shard(name, ServerAddress(f"{name}.db", 5432, "app"), replicas, weight)


def topology(*shards: Shard, pins: dict[str, str] | None = None, vnodes: int = 160) -> Topology:
    return Topology(
        shards={s.name: s for s in shards},
        ring=RingConfig(vnodes=vnodes),
        pins=pins or {},
        source=Path("/etc/router/shards.yaml"),
    )


def unpinned(tenants: list[str]) -> list[tuple[str, str | None]]:
    return [(t, None) for t in tenants]


AB = topology(shard("shard_a"), shard("shard_b"))
ABC = topology(shard("shard_a"), shard("shard_b"), shard("shard_c"))


# --- moved_tenants -------------------------------------------------------------------------------


def test_same_topology_moves_no_one() -> None:
    assert moved_tenants(unpinned(TENANTS), AB, AB) == []
    replicas_only = topology(shard("shard_a", replicas=(ServerAddress("r", 5432, "app"),)), shard("shard_b"))
    assert moved_tenants(unpinned(TENANTS), AB, replicas_only) == []


def test_adding_a_shard_moves_some_tenants_and_only_onto_it() -> None:
    moves = moved_tenants(unpinned(TENANTS), AB, ABC)
    old_ring, new_ring = Ring.from_topology(AB), Ring.from_topology(ABC)
    expected = [
        TenantMove(t, old_ring.shard_for(t), "shard_c")
        for t in TENANTS
        if new_ring.shard_for(t) != old_ring.shard_for(t)
    ]
    assert moves == expected
    assert all(m.new_shard == "shard_c" and m.old_shard in ("shard_a", "shard_b") for m in moves)
    # Roughly a third of the tenants: some move, most stay.
    assert len(TENANTS) // 6 < len(moves) < len(TENANTS) // 2
    assert {m.old_shard for m in moves} == {"shard_a", "shard_b"}


def test_removing_a_shard_moves_only_its_tenants() -> None:
    moves = moved_tenants(unpinned(TENANTS), ABC, AB)
    assert moves and all(m.old_shard == "shard_c" for m in moves)


def test_a_weight_change_moves_tenants_onto_the_heavier_shard() -> None:
    heavier = topology(shard("shard_a", weight=2), shard("shard_b"))
    moves = moved_tenants(unpinned(TENANTS), AB, heavier)
    assert moves
    assert {(m.old_shard, m.new_shard) for m in moves} == {("shard_b", "shard_a")}
    ring = Ring.from_topology(heavier)
    assert all(ring.shard_for(m.tenant) == m.new_shard for m in moves)


def test_a_vnodes_change_moves_tenants() -> None:
    assert moved_tenants(unpinned(TENANTS), AB, topology(shard("shard_a"), shard("shard_b"), vnodes=80))


def test_catalog_pinned_tenants_never_move() -> None:
    hashed = moved_tenants(unpinned(TENANTS), AB, ABC)
    pinned = [(m.tenant, m.old_shard) for m in hashed[:10]] + [(m.tenant, "shard_c") for m in hashed[10:20]]
    rest = [(t, None) for t in TENANTS if t not in {p for p, _ in pinned}]
    moves = moved_tenants([*pinned, *rest], AB, ABC)
    assert moves == hashed[20:]
    # Even a topology change that touches every hashed tenant leaves them alone.
    assert moved_tenants(pinned, AB, topology(shard("shard_z"))) == []


def test_shards_yaml_pins() -> None:
    hashed = moved_tenants(unpinned(TENANTS), AB, ABC)
    mover = hashed[0]
    # A tenant pinned in shards.yaml in both topologies stays put although its hash moved.
    keep = {mover.tenant: mover.old_shard}
    kept = moved_tenants(
        unpinned(TENANTS), topology(*AB.shards.values(), pins=keep), topology(*ABC.shards.values(), pins=keep)
    )
    assert kept == hashed[1:]
    # Changing, adding or removing a shards.yaml pin moves that tenant, and only it.
    stayer = next(t for t in TENANTS if t not in {m.tenant for m in hashed})
    home = Ring.from_topology(AB).shard_for(stayer)
    other = "shard_b" if home == "shard_a" else "shard_a"
    pinned_other = topology(*AB.shards.values(), pins={stayer: other})
    assert moved_tenants(unpinned(TENANTS), AB, pinned_other) == [TenantMove(stayer, home, other)]
    assert moved_tenants(unpinned(TENANTS), pinned_other, AB) == [TenantMove(stayer, other, home)]
    same_shard = topology(*AB.shards.values(), pins={stayer: home})
    assert moved_tenants(unpinned(TENANTS), AB, same_shard) == []


# --- reload_problems -----------------------------------------------------------------------------


def test_no_problems_without_a_removed_shard() -> None:
    assert reload_problems(AB, ABC, unpinned(TENANTS)) == []
    assert reload_problems(AB, topology(shard("shard_a", weight=3), shard("shard_b")), unpinned(TENANTS)) == []


def test_a_removed_shard_that_holds_no_tenants_is_fine() -> None:
    ring = Ring.from_topology(ABC)
    elsewhere = [t for t in TENANTS if ring.shard_for(t) != "shard_c"]
    assert reload_problems(ABC, AB, unpinned(elsewhere)) == []
    # Catalog-pinned away from it too.
    on_c = [(t, "shard_a") for t in TENANTS if ring.shard_for(t) == "shard_c"]
    assert reload_problems(ABC, AB, on_c) == []


def test_a_removed_shard_that_holds_tenants_is_refused() -> None:
    ring = Ring.from_topology(ABC)
    on_c = sorted(t for t in TENANTS if ring.shard_for(t) == "shard_c")
    (problem,) = reload_problems(ABC, AB, unpinned(TENANTS))
    assert problem == (
        f"shard shard_c is removed from shards.yaml but still holds {len(on_c)} tenants"
        f" ({', '.join(on_c[:5])} and {len(on_c) - 5} more); move them to another shard first"
    )


def test_catalog_and_shards_yaml_pins_to_a_removed_shard_count() -> None:
    ring = Ring.from_topology(ABC)
    not_on_c = [t for t in TENANTS if ring.shard_for(t) != "shard_c"]
    catalog_pinned = not_on_c[0]
    (problem,) = reload_problems(ABC, AB, [(catalog_pinned, "shard_c"), *unpinned(not_on_c[1:])])
    assert problem.startswith(f"shard shard_c is removed from shards.yaml but still holds 1 tenant ({catalog_pinned})")
    yaml_pinned = topology(*ABC.shards.values(), pins={not_on_c[1]: "shard_c"})
    (problem,) = reload_problems(yaml_pinned, AB, unpinned(not_on_c))
    assert f"holds 1 tenant ({not_on_c[1]})" in problem


def test_one_problem_per_removed_shard() -> None:
    ring = Ring.from_topology(ABC)
    problems = reload_problems(ABC, topology(shard("shard_a")), unpinned(TENANTS))
    assert [p.split()[1] for p in problems] == ["shard_b", "shard_c"]
    assert all(" tenants (" in p for p in problems)
    few = [t for t in TENANTS if ring.shard_for(t) == "shard_b"][:3]
    (problem,) = reload_problems(ABC, topology(shard("shard_a"), shard("shard_c")), unpinned(few))
    assert f"holds 3 tenants ({', '.join(sorted(few))});" in problem


# --- summarize -----------------------------------------------------------------------------------


def test_summary_of_no_change() -> None:
    assert summarize(diff_topologies(AB, AB), []) == "shards.yaml reloaded: no changes"


def test_summary_of_every_kind_of_change() -> None:
    old = topology(shard("shard_a"), shard("shard_b"), shard("shard_d"), pins={"bigcorp": "shard_a"})
    new = topology(
        shard("shard_a", weight=2),
        shard("shard_b", replicas=(ServerAddress("r", 5432, "app"),)),
        shard("shard_c"),
        pins={"bigcorp": "shard_b", "megacorp": "shard_c"},
    )
    moves = [TenantMove(f"t{i}", "shard_a", "shard_c") for i in range(37)]
    assert summarize(diff_topologies(old, new), moves) == (
        "shards.yaml reloaded: added shard_c; removed shard_d; changed shard_a, shard_b;"
        " weights shard_a 1->2; pins bigcorp shard_a->shard_b, megacorp (none)->shard_c;"
        " 37 tenants now map to another shard (pinned to their old shard until moved)"
    )
    detailed = summarize(diff_topologies(old, new), moves[:1], old=old, new=new)
    assert "changed shard_a (weight), shard_b (replicas);" in detailed
    assert detailed.endswith("; 1 tenant now maps to another shard (pinned to their old shard until moved)")


def test_summary_of_a_change_that_moves_no_one() -> None:
    old, new = AB, topology(shard("shard_a"), shard("shard_b", replicas=(ServerAddress("r", 5432, "app"),)))
    assert summarize(diff_topologies(old, new), [], old=old, new=new) == (
        "shards.yaml reloaded: added -; removed -; changed shard_b (replicas); weights -; no tenant moves"
    )
    vnodes = topology(shard("shard_a"), shard("shard_b"), vnodes=80)
    assert "; vnodes 160->80;" in summarize(diff_topologies(AB, vnodes), [TenantMove("x", "shard_a", "shard_b")])


# --- FileWatcher ---------------------------------------------------------------------------------

# The watcher tests run on a virtual clock: its polls are timers, so `settle()` is exactly six polls
# and the slow writer's pauses fall exactly between them, however loaded the machine is.

INTERVAL = 0.05


async def settle(intervals: int = 6) -> None:
    await asyncio.sleep(INTERVAL * intervals)  # `intervals` polls of the watcher on the virtual clock


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    path = tmp_path / "shards.yaml"
    path.write_text("shards: {}\n")
    return path


@in_virtual_time
async def test_watcher_reports_a_modification_once(watched: Path) -> None:
    calls: list[int] = []
    watcher = FileWatcher([watched], INTERVAL, lambda: calls.append(1))
    await watcher.start()
    try:
        await settle()
        assert calls == []  # the state at start is the baseline
        watched.write_text("shards: {a: 1}\n")
        await settle()
        assert len(calls) == 1
        await settle()
        assert len(calls) == 1
        watched.write_text("shards: {a: 12}\n")
        await settle()
        assert len(calls) == 2
    finally:
        await watcher.stop()


@in_virtual_time
async def test_watcher_waits_until_the_file_holds_still(watched: Path) -> None:
    calls: list[int] = []
    interval = 0.3
    watcher = FileWatcher([watched], interval, lambda: calls.append(1))
    await watcher.start()
    try:
        with watched.open("a") as file:
            for i in range(15):  # a slow writer: 0.6 s of appends, each well within one interval
                file.write(f"# line {i}\n")
                file.flush()
                await asyncio.sleep(0.04)  # the writer's pace: time passing is the point
        assert calls == []
        await asyncio.sleep(interval * 3)  # three polls after the last write
        assert len(calls) == 1
    finally:
        await watcher.stop()


@in_virtual_time
async def test_watcher_survives_deletion_and_reports_recreation(watched: Path) -> None:
    calls: list[int] = []
    watcher = FileWatcher([watched], INTERVAL, lambda: calls.append(1))
    await watcher.start()
    try:
        watched.unlink()
        await settle()
        assert calls == []  # nothing to read yet
        watched.write_text("shards: {b: 2}\n")
        await settle()
        assert len(calls) == 1
        # An editor's rename-replace: a new inode at the same path.
        replacement = watched.with_name("shards.yaml.tmp")
        replacement.write_text("shards: {b: 3}\n")
        os.replace(replacement, watched)
        await settle()
        assert len(calls) == 2
    finally:
        await watcher.stop()


@in_virtual_time
async def test_watcher_starts_on_a_missing_file_and_survives_a_failing_callback(tmp_path: Path) -> None:
    path = tmp_path / "later.yaml"
    calls: list[int] = []

    def on_change() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    watcher = FileWatcher([path], INTERVAL, on_change)
    await watcher.start()
    try:
        await settle()
        path.write_text("x\n")
        await settle()
        path.write_text("xy\n")
        await settle()
        assert len(calls) == 2
    finally:
        await watcher.stop()
    await watcher.stop()  # idempotent


@in_virtual_time
async def test_watcher_watches_several_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("a\n")
    second.write_text("b\n")
    calls: list[int] = []
    watcher = FileWatcher([first, second], INTERVAL, lambda: calls.append(1))
    await watcher.start()
    try:
        second.write_text("bb\n")
        await settle()
        assert len(calls) == 1
        with pytest.raises(RuntimeError):
            await watcher.start()
    finally:
        await watcher.stop()


# --- pid file ------------------------------------------------------------------------------------

ROUTER_YAML = """\
listen: {{host: 127.0.0.1, port: {port}}}
catalog: {{dsn: "postgresql://u:p@localhost/cat"}}
auth:
  users: [{{name: app, password: secret}}]
server: {{user: tenant_router}}
"""

SHARDS_YAML = """\
shards:
  shard_a:
    primary: {host: 10.0.0.1, dbname: app}
"""


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile.gettempdir(), where pid files live, is this test's own directory."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(ROUTER_YAML.format(port=16432))
    (tmp_path / "shards.yaml").write_text(SHARDS_YAML)
    return path


@pytest.fixture
def config(config_path: Path) -> RouterConfig:
    return load_router_config(config_path)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def sighup_caught() -> Iterator[list[int]]:
    caught: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGHUP, handler)
    try:
        yield caught
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_pid_file_path(config: RouterConfig, private_tmp: Path) -> None:
    assert pid_file_path(config) == private_tmp / "tenant-router-16432.pid"


def test_write_read_remove(tmp_path: Path) -> None:
    path = tmp_path / "router.pid"
    assert read_pid_file(path) is None
    write_pid_file(path)
    assert read_pid_file(path) == os.getpid()
    assert path.read_text() == f"{os.getpid()}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["router.pid"]  # no temporary file left behind
    assert remove_pid_file(path)
    assert not path.exists()
    assert not remove_pid_file(path)


def test_remove_leaves_another_process_s_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "router.pid"
    path.write_text("1\n")
    assert not remove_pid_file(path)
    assert read_pid_file(path) == 1


def test_read_refuses_garbage(tmp_path: Path) -> None:
    path = tmp_path / "router.pid"
    path.write_text("not a pid\n")
    with pytest.raises(ValueError, match="does not hold a process id"):
        read_pid_file(path)
    assert not remove_pid_file(path)


def test_signal_reload_without_a_pid_file(config: RouterConfig, private_tmp: Path) -> None:
    with pytest.raises(NoRunningRouter, match="no running router was found for port 16432: there is no pid file"):
        signal_reload(config)


def test_signal_reload_to_a_process_that_is_gone(config: RouterConfig, private_tmp: Path) -> None:
    pid = dead_pid()
    pid_file_path(config).write_text(f"{pid}\n")
    with pytest.raises(NoRunningRouter, match=f"no running router was found for port 16432: pid {pid} from "):
        signal_reload(config)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc")
def test_signal_reload_to_a_pid_reused_by_a_newer_process(config: RouterConfig, private_tmp: Path) -> None:
    path = pid_file_path(config)
    path.write_text(f"{os.getpid()}\n")
    os.utime(path, (0, 0))  # written in 1970: long before this process started
    with pytest.raises(NoRunningRouter, match="is not running"):
        signal_reload(config)


def test_signal_reload_with_a_broken_pid_file(config: RouterConfig, private_tmp: Path) -> None:
    pid_file_path(config).write_text("")
    with pytest.raises(ReloadSignalError, match="cannot read the pid file of the router on port 16432"):
        signal_reload(config)


def test_signal_reload_sends_sighup(config: RouterConfig, private_tmp: Path, sighup_caught: list[int]) -> None:
    write_pid_file(pid_file_path(config))
    assert signal_reload(config) == os.getpid()
    assert sighup_caught == [signal.SIGHUP]


# --- tenant-router reload ------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_reload_command_signals_the_router(
    config_path: Path, private_tmp: Path, sighup_caught: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    write_pid_file(private_tmp / "tenant-router-16432.pid")
    code, out, err = run_cli(capsys, "--config", str(config_path), "reload")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{config_path}: ok",
        f"{config_path.parent / 'shards.yaml'}: ok (1 shards: shard_a)",
        f"reload signalled to pid {os.getpid()}",
    ]
    assert sighup_caught == [signal.SIGHUP]


def test_reload_command_without_a_running_router(
    config_path: Path, private_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_cli(capsys, "--config", str(config_path), "reload")
    assert code == 1
    assert err.startswith("error: no running router was found for port 16432")


def test_reload_command_reports_the_same_problems_as_check(
    config_path: Path, private_tmp: Path, capsys: pytest.CaptureFixture[str], sighup_caught: list[int]
) -> None:
    write_pid_file(private_tmp / "tenant-router-16432.pid")
    config_path.write_text(ROUTER_YAML.format(port=16432) + "pool: {size: 0}\nworkers: 0\n")
    (config_path.parent / "shards.yaml").write_text(SHARDS_YAML + "pins: {bigcorp: shard_z}\n")
    results: dict[str, tuple[int, str, str]] = {}
    for command in ("check", "reload"):
        results[command] = run_cli(capsys, "--config", str(config_path), command)
    assert results["check"] == results["reload"]
    code, out, err = results["reload"]
    assert (code, out) == (2, "")
    assert f"{config_path}: pool.size:" in err
    assert f"{config_path}: workers:" in err
    assert "shards.yaml: pins.bigcorp:" in err
    assert sighup_caught == []  # nothing signalled


def test_reload_command_in_a_fresh_process(tmp_path: Path) -> None:
    bad = tmp_path / "router.yaml"
    bad.write_text("listen: {port: -1}\n")
    outputs = []
    for command in ("check", "reload"):
        result = subprocess.run(
            [sys.executable, "-m", "router.cli", "--config", str(bad), command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        outputs.append((result.returncode, result.stdout, result.stderr))
    assert outputs[0] == outputs[1]
    assert outputs[1][0] == 2
    assert f"{bad}: listen.port:" in outputs[1][2]
