"""shards.yaml loading and validation, and diffs between topologies."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from router.core.topology import (
    RingConfig,
    ServerAddress,
    Shard,
    Topology,
    diff_topologies,
    load_topology,
)
from router.errors import ConfigError, ConfigProblem

REPO = Path(__file__).resolve().parents[2]

TWO_SHARDS = """\
shards:
  shard_a:
    primary: {host: 10.0.0.1, port: 5433, dbname: app}
  shard_b:
    weight: 2
    primary: {host: 10.0.0.2, dbname: app}
    replicas:
      - {host: 10.0.0.3, port: 5434}
      - {host: 10.0.0.4, port: 5435, dbname: app_ro, weight: 3}
pins:
  bigcorp: shard_b
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shards.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert all(p.file == str(path) for p in info.value.problems)
    return info.value.problems


def by_field(found: list[ConfigProblem]) -> dict[str, str]:
    return {p.field: p.reason for p in found}


def test_example_shards_file_loads() -> None:
    topology = load_topology(REPO / "shards.yaml")
    assert topology.source == (REPO / "shards.yaml").resolve()
    assert topology.ring == RingConfig(vnodes=160)
    assert topology.shards == {
        "shard_a": Shard("shard_a", ServerAddress("127.0.0.1", 5433, "app"), (), 1),
        "shard_b": Shard("shard_b", ServerAddress("127.0.0.1", 5434, "app"), (), 1),
    }
    assert topology.pins == {}


def test_defaults_and_replicas(tmp_path: Path) -> None:
    topology = load_topology(write(tmp_path, TWO_SHARDS))
    assert topology.ring.vnodes == 160
    a, b = topology.shards["shard_a"], topology.shards["shard_b"]
    assert a.weight == 1 and a.replicas == ()
    assert b.weight == 2
    assert b.primary == ServerAddress("10.0.0.2", 5432, "app", 1)
    assert b.replicas == (
        ServerAddress("10.0.0.3", 5434, "app", 1),  # dbname defaults to the primary's
        ServerAddress("10.0.0.4", 5435, "app_ro", 3),
    )
    assert dict(topology.pins) == {"bigcorp": "shard_b"}


def test_topology_is_immutable(tmp_path: Path) -> None:
    topology = load_topology(write(tmp_path, TWO_SHARDS))
    with pytest.raises(TypeError):
        topology.shards["shard_c"] = topology.shards["shard_a"]  # type: ignore[index]
    with pytest.raises(TypeError):
        topology.pins["x"] = "shard_a"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        topology.shards["shard_a"].weight = 5  # type: ignore[misc]


def test_direct_construction_copies_mappings() -> None:
    shards = {"s": Shard("s", ServerAddress("h", 1, "d"), (), 1)}
    topology = Topology(shards=shards, ring=RingConfig(), pins={}, source=Path("x"))
    shards.clear()
    assert list(topology.shards) == ["s"]


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        ring: {vnodes: 0, points: 3}
        shards:
          Shard-A:
            primary: {host: h1, port: 5432, dbname: app}
          shard_b:
            weight: -1
            primary: {host: h2, port: 70000, dbname: app, weight: 2}
          shard_c:
            primary: {host: "", dbname: app}
            replicas:
              - {host: r, port: 0, colour: red}
        pins:
          bigcorp: shard_z
        """,
    )
    assert by_field(problems(path)) == {
        "ring.vnodes": "Input should be greater than or equal to 1 (got 0)",
        "ring.points": "unknown field",
        "shards.Shard-A": "invalid key: a shard name is a lowercase letter, then up to 62 lowercase "
        "letters, digits or _ (got 'Shard-A')",
        "shards.shard_b.weight": "Input should be greater than or equal to 0 (got -1)",
        "shards.shard_b.primary.port": "Input should be less than or equal to 65535 (got 70000)",
        "shards.shard_b.primary.weight": "unknown field",
        "shards.shard_c.primary.host": "String should have at least 1 character (got '')",
        "shards.shard_c.replicas[0].port": "Input should be greater than or equal to 1 (got 0)",
        "shards.shard_c.replicas[0].colour": "unknown field",
    }


def test_pins_must_name_a_defined_shard(tmp_path: Path) -> None:
    text = TWO_SHARDS + "  acme: shard_a\n  smallco: shard_q\n"
    assert by_field(problems(write(tmp_path, text))) == {
        "pins.smallco": "pins to a shard that shards does not define (got 'shard_q')"
    }


def test_at_least_one_shard(tmp_path: Path) -> None:
    assert by_field(problems(write(tmp_path, "shards: {}\n"))) == {"shards": "must define at least one shard (got {})"}
    assert by_field(problems(write(tmp_path, "ring: {vnodes: 10}\n"))) == {"shards": "required field is missing"}


def test_weight_zero_drains_a_shard_but_not_every_shard(tmp_path: Path) -> None:
    drained = load_topology(write(tmp_path, TWO_SHARDS.replace("weight: 2", "weight: 0")))
    assert drained.shards["shard_b"].weight == 0
    all_zero = TWO_SHARDS.replace("weight: 2", "weight: 0").replace("shard_a:\n", "shard_a:\n    weight: 0\n")
    (everything_drained,) = problems(write(tmp_path, all_zero))
    assert everything_drained.field == "shards"
    assert everything_drained.reason.startswith(
        "every shard has weight 0; at least one must have weight >= 1 to place tenants"
    )
    replica_zero = TWO_SHARDS.replace("dbname: app_ro, weight: 3", "dbname: app_ro, weight: 0")
    assert by_field(problems(write(tmp_path, replica_zero))) == {
        "shards.shard_b.replicas[1].weight": "Input should be greater than or equal to 1 (got 0)"
    }


def test_two_shards_on_one_database_is_a_mistake(tmp_path: Path) -> None:
    text = TWO_SHARDS.replace("{host: 10.0.0.3, port: 5434}", "{host: 10.0.0.1, port: 5433}")
    assert by_field(problems(write(tmp_path, text))) == {
        "shards.shard_b.replicas[0]": "same server and database as shards.shard_a.primary (got '10.0.0.1:5433/app')"
    }


def test_environment_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TR_TEST_SHARD_HOST", "db.internal")
    monkeypatch.delenv("TR_TEST_UNSET", raising=False)
    text = TWO_SHARDS.replace("host: 10.0.0.1, port: 5433", 'host: "${TR_TEST_SHARD_HOST}", port: 5433')
    text = text.replace("port: 5435", 'port: "${TR_TEST_UNSET:-6000}"')
    topology = load_topology(write(tmp_path, text))
    assert topology.shards["shard_a"].primary.host == "db.internal"
    assert topology.shards["shard_b"].replicas[1].port == 6000
    missing = text.replace("${TR_TEST_SHARD_HOST}", "${TR_TEST_UNSET}")
    assert by_field(problems(write(tmp_path, missing))) == {
        "shards.shard_a.primary.host": "environment variable TR_TEST_UNSET is not set"
    }


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    (bad,) = problems(write(tmp_path, "shards:\n  shard_a: {primary: {host: h\n"))
    assert bad.field.startswith("line ") and bad.reason.startswith("invalid YAML")
    (missing,) = problems(tmp_path / "absent.yaml")
    assert (missing.field, missing.reason) == ("(file)", "file not found")


# --- diff ----------------------------------------------------------------------------------------


def topology(weights: dict[str, int], pins: dict[str, str] | None = None, vnodes: int = 160) -> Topology:
    shards = {
        name: Shard(name, ServerAddress(f"{name}.db", 5432, "app"), (), weight) for name, weight in weights.items()
    }
    return Topology(shards=shards, ring=RingConfig(vnodes), pins=pins or {}, source=Path("shards.yaml"))


def test_diff_of_equal_topologies_is_empty() -> None:
    diff = diff_topologies(topology({"a": 1, "b": 1}), topology({"a": 1, "b": 1}))
    assert diff.empty and not diff.moves_tenants
    assert (diff.added, diff.removed, diff.changed, dict(diff.weights), dict(diff.pins), diff.vnodes) == (
        (),
        (),
        (),
        {},
        {},
        None,
    )


def test_diff_reports_each_kind_of_change() -> None:
    old = topology({"a": 1, "b": 1, "c": 1}, pins={"x": "a", "y": "b"})
    new_shards = dict(topology({"a": 1, "b": 3, "d": 1}).shards)
    new_shards["a"] = dataclasses.replace(new_shards["a"], primary=ServerAddress("moved.db", 5432, "app"))
    new = Topology(shards=new_shards, ring=RingConfig(80), pins={"y": "d", "z": "a"}, source=Path("s"))
    diff = diff_topologies(old, new)
    assert diff.added == ("d",)
    assert diff.removed == ("c",)
    assert diff.changed == ("a", "b")
    assert dict(diff.weights) == {"b": (1, 3)}
    assert dict(diff.pins) == {"x": ("a", None), "y": ("b", "d"), "z": (None, "a")}
    assert diff.vnodes == (160, 80)
    assert diff.moves_tenants and not diff.empty


def test_server_change_alone_does_not_move_tenants() -> None:
    old = topology({"a": 1})
    moved = Shard("a", ServerAddress("new.db", 5432, "app"), (), 1)
    new = Topology(shards={"a": moved}, ring=RingConfig(), pins={}, source=Path("s"))
    diff = diff_topologies(old, new)
    assert diff.changed == ("a",) and not diff.moves_tenants and not diff.empty
