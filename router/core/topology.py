"""shards.yaml -> one immutable Topology (shards, their servers, ring settings, pins); diff for reload.

Owns: the shape and rules of shards.yaml (file loading, environment expansion and problem reporting
are shared with router.yaml through `router.config.load_document`), and `diff_topologies`, which
tells a reload what changed.

Must not: hash tenants (hashing.py), decide placement (routing.py), connect to servers, or keep
state. A reload loads a new Topology, diffs it against the old one and swaps; nothing is mutated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Final, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic import dataclasses as pydantic_dataclasses
from pydantic_core import InitErrorDetails, PydanticCustomError

from router.config import RouterConfig, load_document, load_router_config
from router.errors import ConfigError, ConfigProblem

__all__ = [
    "RingConfig",
    "Role",
    "ServerAddress",
    "ServerKey",
    "Shard",
    "Topology",
    "TopologyDiff",
    "diff_topologies",
    "load_topology",
]

# --- the immutable result ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerAddress:
    """One PostgreSQL server of a shard; `weight` spreads reads over replicas."""

    host: str
    port: int
    dbname: str
    weight: int = 1


Role = Literal["primary", "replica"]


@dataclass(frozen=True, slots=True)
class ServerKey:
    """One server of the topology, as health checks and routing name it."""

    shard: str
    host: str
    port: int
    role: Role

    def __str__(self) -> str:
        return f"{self.shard} {self.role} {self.host}:{self.port}"


@dataclass(frozen=True)
class Shard:
    """A named shard: its primary, optional replicas, and its relative share of hashed tenants
    (0: none, the shard is being drained)."""

    name: str
    primary: ServerAddress
    replicas: tuple[ServerAddress, ...]
    weight: int


@dataclass(frozen=True)
class RingConfig:
    """`vnodes` ring points per unit of shard weight; changing it moves tenants."""

    vnodes: int = 160


@dataclass(frozen=True)
class Topology:
    """Every shard by name (sorted), ring settings, tenant -> shard pins, and the file it came from."""

    shards: Mapping[str, Shard]
    ring: RingConfig
    pins: Mapping[str, str]
    source: Path

    def __post_init__(self) -> None:
        # Read-only views over private copies, so no caller can change a topology after the fact.
        object.__setattr__(self, "shards", MappingProxyType(dict(self.shards)))
        object.__setattr__(self, "pins", MappingProxyType(dict(self.pins)))


# --- shards.yaml as written ----------------------------------------------------------------------

_FILE: Final = ConfigDict(extra="forbid")
_SHARD_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")


def _shard_name(name: str) -> str:
    if not _SHARD_NAME.fullmatch(name):
        reason = "a shard name is a lowercase letter, then up to 62 lowercase letters, digits or _"
        raise PydanticCustomError("shard_name", reason)
    return name


ShardName = Annotated[str, AfterValidator(_shard_name)]
Host = Annotated[str, Field(min_length=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
Weight = Annotated[int, Field(ge=1)]
# A shard of weight 0 gets no hashed tenants (drained: `rebalance plan` moves its tenants off it);
# its servers still serve the tenants pinned there until they are moved.
ShardWeight = Annotated[int, Field(ge=0)]


@pydantic_dataclasses.dataclass(frozen=True, kw_only=True, config=_FILE)
class _Primary:
    host: Host
    port: Port = 5432
    dbname: Annotated[str, Field(min_length=1)]


@pydantic_dataclasses.dataclass(frozen=True, kw_only=True, config=_FILE)
class _Replica:
    host: Host
    port: Port = 5432
    dbname: Annotated[str | None, Field(min_length=1)] = None  # None: the primary's
    weight: Weight = 1


@pydantic_dataclasses.dataclass(frozen=True, kw_only=True, config=_FILE)
class _Shard:
    weight: ShardWeight = 1
    primary: _Primary
    replicas: tuple[_Replica, ...] = ()


@pydantic_dataclasses.dataclass(frozen=True, kw_only=True, config=_FILE)
class _Ring:
    vnodes: Annotated[int, Field(ge=1)] = 160


@pydantic_dataclasses.dataclass(frozen=True, kw_only=True, config=_FILE)
class _ShardsFile:
    ring: _Ring = field(default_factory=_Ring)
    shards: dict[ShardName, _Shard]
    pins: dict[Annotated[str, Field(min_length=1)], str] = field(default_factory=dict)

    @field_validator("shards")
    @classmethod
    def _distinct_servers(cls, shards: dict[str, _Shard]) -> dict[str, _Shard]:
        if not shards:  # not min_length: pydantic would also report it when every shard is invalid
            raise PydanticCustomError("empty", "must define at least one shard")
        if all(shard.weight == 0 for shard in shards.values()):
            reason = "every shard has weight 0; at least one must have weight >= 1 to place tenants"
            raise PydanticCustomError("all_drained", reason)
        # Two shards on one database would mix their tenants' data: always a mistake.
        errors: list[InitErrorDetails] = []
        owner: dict[tuple[str, int, str], str] = {}
        for name, shard in shards.items():
            servers: list[tuple[str, str, int, str]] = [
                ("primary", shard.primary.host, shard.primary.port, shard.primary.dbname)
            ]
            servers += [
                (f"replicas[{i}]", r.host, r.port, r.dbname or shard.primary.dbname)
                for i, r in enumerate(shard.replicas)
            ]
            for where, host, port, dbname in servers:
                key = (host, port, dbname)
                if key in owner:
                    reason = f"same server and database as shards.{owner[key]}"
                    errors.append(_problem("duplicate", reason, (name, where), f"{host}:{port}/{dbname}"))
                owner.setdefault(key, f"{name}.{where}")
        _raise_if(errors)
        return shards

    @field_validator("pins")
    @classmethod
    def _pinned_shards_exist(cls, pins: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        shards = info.data.get("shards")
        if shards is None:  # shards itself is invalid: reported there
            return pins
        reason = "pins to a shard that shards does not define"
        _raise_if([_problem("unknown_shard", reason, (t,), s) for t, s in pins.items() if s not in shards])
        return pins


def _problem(kind: str, message: str, loc: tuple[str | int, ...], value: object) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


def _raise_if(errors: list[InitErrorDetails]) -> None:
    # pydantic merges a ValidationError raised in a validator into the outer one, prefixing locs.
    if errors:
        raise ValidationError.from_exception_data("shards.yaml", errors)


def load_topology(path: str | Path) -> Topology:
    """Read and validate shards.yaml; raise ConfigError naming every problem found."""
    path = Path(path)
    parsed = load_document(path, _ShardsFile)
    shards = {name: _to_shard(name, parsed.shards[name]) for name in sorted(parsed.shards)}
    return Topology(
        shards=shards,
        ring=RingConfig(vnodes=parsed.ring.vnodes),
        pins=parsed.pins,
        source=path.resolve(),
    )


def _to_shard(name: str, entry: _Shard) -> Shard:
    primary = entry.primary
    replicas = tuple(ServerAddress(r.host, r.port, r.dbname or primary.dbname, r.weight) for r in entry.replicas)
    return Shard(name, ServerAddress(primary.host, primary.port, primary.dbname), replicas, entry.weight)


# --- reload --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopologyDiff:
    """What a reload changes. `changed` = shards in both whose servers or weight differ; `weights`
    and `pins` map to (old, new), None meaning absent; `vnodes` is (old, new) if it changed."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    weights: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    pins: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)
    vnodes: tuple[int, int] | None = None

    @property
    def moves_tenants(self) -> bool:
        """Whether hashed or pinned placement can differ: the ring or the pins changed."""
        return bool(self.added or self.removed or self.weights or self.pins or self.vnodes)

    @property
    def empty(self) -> bool:
        return not (self.moves_tenants or self.changed)


def diff_topologies(old: Topology, new: Topology) -> TopologyDiff:
    """Compare two topologies; every name list is sorted."""
    common = sorted(old.shards.keys() & new.shards.keys())
    return TopologyDiff(
        added=tuple(sorted(new.shards.keys() - old.shards.keys())),
        removed=tuple(sorted(old.shards.keys() - new.shards.keys())),
        changed=tuple(name for name in common if old.shards[name] != new.shards[name]),
        weights=MappingProxyType(
            {
                name: (old.shards[name].weight, new.shards[name].weight)
                for name in common
                if old.shards[name].weight != new.shards[name].weight
            }
        ),
        pins=MappingProxyType(
            {
                tenant: (old.pins.get(tenant), new.pins.get(tenant))
                for tenant in sorted(old.pins.keys() | new.pins.keys())
                if old.pins.get(tenant) != new.pins.get(tenant)
            }
        ),
        vnodes=None if old.ring == new.ring else (old.ring.vnodes, new.ring.vnodes),
    )


def load_both(path: str | Path) -> tuple[RouterConfig, Topology]:
    """Load router.yaml and the shards file it names, reporting the problems of both together."""
    problems: list[ConfigProblem] = []
    config: RouterConfig | None = None
    shards_file: Path | None
    try:
        config = load_router_config(path)
        shards_file = config.shards_file
    except ConfigError as exc:
        problems += exc.problems
        shards_file = _shards_file_named_in(Path(path))
    topology: Topology | None = None
    if shards_file is not None:
        try:
            topology = load_topology(shards_file)
        except ConfigError as exc:
            problems += exc.problems
    if problems or config is None or topology is None:
        raise ConfigError(problems)
    return config, topology


def _shards_file_named_in(path: Path) -> Path | None:
    """Where an invalid router.yaml points for shards, so both files' problems show at once."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    name = raw.get("shards_file", "shards.yaml") if isinstance(raw, dict) else "shards.yaml"
    return path.parent / str(name)
