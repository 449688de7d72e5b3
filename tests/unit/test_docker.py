"""docker/: the Dockerfile and compose.yaml, checked statically (these machines have no Docker daemon).

Each check reads the files as Docker and compose would and ties them to the router's own view: the
router's router.yaml and shards.yaml are loaded with the router's loaders, so a config the router would
refuse fails here, and every host, port, mount and environment variable the files name must exist on
the other side.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from router.config import RouterConfig, load_router_config
from router.core.topology import Topology, load_topology
from router.testing.pgcluster import MOVE_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"
DASHBOARD = DOCKER / "grafana" / "tenant-router.json"

# ${NAME}, ${NAME:-default}, ${NAME:?message}..., as compose and router.yaml write them; $$ escapes.
_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")
_PULLED_IMAGES = ("postgres:", "prom/prometheus:", "grafana/grafana:")


# --- reading the files -----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict), "compose.yaml must be a mapping"
    return document


def services() -> dict[str, dict[str, Any]]:
    found = compose().get("services")
    assert isinstance(found, dict) and found, "compose.yaml has no services"
    return found


def service(name: str) -> dict[str, Any]:
    found = services()
    assert name in found, f"compose.yaml has no service {name!r} (it has {sorted(found)})"
    return found[name]


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def references(text: str) -> set[str]:
    return {match.group(1) for match in _REFERENCE.finditer(text) if match.group(1)}


def references_in_values(path: Path) -> set[str]:
    """The environment variables a YAML file's values read (comments aside), as the router expands them."""

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
        elif isinstance(node, str):
            yield from references(node)

    return set(walk(yaml.safe_load(path.read_text())))


def environment(entry: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, mapping or list form."""
    env = entry.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(key): str(value) for key, value in env.items()}


def container_ports(entry: dict[str, Any]) -> set[int]:
    """The ports a service listens on inside its container: `ports` (container side) and `expose`."""
    ports: set[int] = set()
    for item in entry.get("ports", []):
        target = item["target"] if isinstance(item, dict) else str(item).rpartition(":")[2]
        ports.add(int(str(target).partition("/")[0]))
    ports.update(int(str(item).partition("/")[0]) for item in entry.get("expose", []))
    return ports


@dataclass(frozen=True)
class Mount:
    source: Path  # on the host: a bind mount
    target: PurePosixPath


def bind_mounts(entry: dict[str, Any]) -> list[Mount]:
    mounts = []
    for item in entry.get("volumes", []):
        if isinstance(item, dict):
            source, target = str(item.get("source", "")), str(item["target"])
        else:
            source, target = [*str(item).split(":"), ""][:2]
        if source.startswith((".", "/")):
            mounts.append(Mount((DOCKER / source).resolve(), PurePosixPath(target)))
    return mounts


def host_path(entry: dict[str, Any], inside: str) -> Path | None:
    """The host file a path inside the service's container comes from, through its bind mounts."""
    path = PurePosixPath(inside)
    for mount in sorted(bind_mounts(entry), key=lambda m: len(m.target.parts), reverse=True):
        if path == mount.target or mount.target in path.parents:
            return mount.source.joinpath(*path.parts[len(mount.target.parts) :])
    return None


def command_text(entry: dict[str, Any]) -> str:
    command = entry.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment compose gives the router: the router service's variables, valued from .env.example."""
    values = env_example()
    for name, value in environment(service("router")).items():
        names = references(value)
        assert names <= set(values), f"the router's {name} reads {sorted(names - set(values))}, not in .env.example"
        monkeypatch.setenv(name, values[names.pop()] if names else value)
    return values


@pytest.fixture
def router_config(secrets: dict[str, str]) -> RouterConfig:
    return load_router_config(router_yaml_on_host())


@pytest.fixture
def topology(router_config: RouterConfig) -> Topology:
    return load_topology(router_config.shards_file)


# --- the Dockerfile ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} must use the exec (JSON) form: {self.arguments}"
        return value


def dockerfile_instructions() -> list[Instruction]:
    """The Dockerfile's instructions (comments and line continuations handled)."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    instructions = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_preamble() -> list[Instruction]:
    """What comes before the first FROM (global ARGs)."""
    return list(itertools.takewhile(lambda i: i.keyword != "FROM", dockerfile_instructions()))


def dockerfile_stages() -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def final_stage() -> list[Instruction]:
    stages = dockerfile_stages()
    assert stages, "the Dockerfile has no FROM"
    return stages[-1]


def last(stage: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in stage if instruction.keyword == keyword]
    assert found, f"the Dockerfile's final stage has no {keyword}"
    return found[-1]


def image_config_path() -> str:
    """The router.yaml the image's default command serves."""
    command = last(final_stage(), "CMD").exec_form()
    assert "serve" in command, f"the default command must be serve: {command}"
    assert "--config" in command, f"the default command must name its --config: {command}"
    return command[command.index("--config") + 1]


def router_yaml_on_host() -> Path:
    path = host_path(service("router"), image_config_path())
    assert path is not None, f"no volume of the router service mounts {image_config_path()}"
    return path


# --- compose.yaml --------------------------------------------------------------------------------------


def test_compose_has_the_catalog_two_shards_a_replica_the_router_prometheus_and_grafana() -> None:
    assert set(services()) == {
        "catalog",
        "shard-a",
        "shard-b",
        "shard-b-replica",
        "setup",
        "router",
        "prometheus",
        "grafana",
    }
    for name in ("catalog", "shard-a", "shard-b", "shard-b-replica"):
        assert service(name)["image"] == "postgres:15", name
    assert service("prometheus")["image"].startswith("prom/prometheus:")
    assert service("grafana")["image"].startswith("grafana/grafana:")


def test_every_service_has_an_image_or_a_build_that_exists() -> None:
    for name, entry in services().items():
        assert "build" in entry or "image" in entry, f"service {name} has neither image nor build"
        if "build" in entry:
            build = entry["build"]
            context = (DOCKER / (build if isinstance(build, str) else build.get("context", "."))).resolve()
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            assert context.is_dir(), f"service {name}: build context {context} does not exist"
            assert dockerfile.is_file(), f"service {name}: {dockerfile} does not exist"
            assert dockerfile.resolve() == DOCKERFILE, f"service {name} builds from {dockerfile}, not docker/Dockerfile"
        else:
            image = entry["image"]
            assert image.startswith(_PULLED_IMAGES), f"service {name}: unexpected image {image}"
            tag = image.rpartition(":")[2]
            assert tag and tag != "latest" and "/" not in tag, f"service {name}: image {image} must name a tag"


def test_the_router_publishes_the_ports_router_yaml_listens_on(router_config: RouterConfig) -> None:
    wanted = {router_config.listen.port, router_config.http.port}
    assert container_ports(service("router")) == wanted
    # Inside a container, loopback is unreachable from the published ports and from Prometheus.
    assert router_config.listen.host in ("0.0.0.0", "::")
    assert router_config.http.host in ("0.0.0.0", "::")
    exposed = {int(port.partition("/")[0]) for port in last(final_stage(), "EXPOSE").arguments.split()}
    assert wanted <= exposed, f"the Dockerfile EXPOSEs {exposed}, router.yaml listens on {wanted}"


def test_shards_and_catalog_name_compose_services_and_their_ports(
    router_config: RouterConfig, topology: Topology
) -> None:
    servers = [(f"shard {name} primary", shard.primary) for name, shard in topology.shards.items()]
    servers += [
        (f"shard {name} replica", replica) for name, shard in topology.shards.items() for replica in shard.replicas
    ]
    assert len(topology.shards) == 2
    assert sum(len(shard.replicas) for shard in topology.shards.values()) == 1
    for what, server in servers:
        entry = service(server.host)
        assert server.port in container_ports(entry), f"{what}: {server.host} does not listen on {server.port}"
    dsn = urlsplit(router_config.catalog.dsn)
    assert dsn.hostname is not None and dsn.hostname in services(), f"the catalog dsn names no service: {dsn.hostname}"
    assert (dsn.port or 5432) in container_ports(service(dsn.hostname))
    assert dsn.username == router_config.server.user, "the router's catalog role is its shard role"


def test_every_variable_router_yaml_reads_is_set_from_env_example() -> None:
    router_env = environment(service("router"))
    read = set().union(
        *(references_in_values(router_yaml_on_host().parent / name) for name in ("router.yaml", "shards.yaml"))
    )
    assert read, "router.yaml reads its secrets from the environment"
    assert read <= set(router_env), f"router.yaml reads {sorted(read - set(router_env))}, unset in compose"
    assert environment(service("setup")) == router_env, "setup runs the same router.yaml"
    # Compose fills every variable from docker/.env, whose template is .env.example; no secret is
    # written into compose.yaml itself.
    example = env_example()
    assert references_in_values(COMPOSE) <= set(example), "compose reads variables .env.example lacks"
    for name in read:
        assert references(router_env[name]), f"{name} must come from docker/.env, not be written in compose.yaml"


def test_the_init_scripts_get_the_variables_they_read() -> None:
    for name in ("catalog", "shard-a", "shard-b"):
        entry = service(name)
        env = set(environment(entry)) | {"PGDATA"}  # PGDATA: set by the postgres image
        for script in (mount.source for mount in bind_mounts(entry) if mount.source.suffix == ".sh"):
            needed = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", script.read_text()))
            assert needed <= env, f"{name}: {script.name} reads {sorted(needed - env)}, unset in compose"


def test_volumes_mount_files_that_exist() -> None:
    declared = set(compose().get("volumes") or {})
    for name, entry in services().items():
        for item in entry.get("volumes", []):
            source = str(item.get("source", "")) if isinstance(item, dict) else str(item).split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"service {name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"service {name} uses volume {source}, not declared"


def test_prometheus_scrapes_the_router_service_on_its_http_port(router_config: RouterConfig) -> None:
    entry = service("prometheus")
    config = host_path(entry, "/etc/prometheus/prometheus.yml")
    assert config is not None and config.is_file(), "prometheus.yml is not mounted where Prometheus reads it"
    scrape = yaml.safe_load(config.read_text())
    targets = [
        target
        for job in scrape["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"router:{router_config.http.port}"]
    assert "router" in services()


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    entry = service("grafana")
    provisioning = host_path(entry, "/etc/grafana/provisioning")
    assert provisioning is not None and provisioning.is_dir(), "Grafana's provisioning folder is not mounted"

    sources = [
        ds
        for file in (provisioning / "datasources").glob("*.y*ml")
        for ds in yaml.safe_load(file.read_text())["datasources"]
    ]
    prometheus = [ds for ds in sources if ds["type"] == "prometheus"]
    assert len(prometheus) == 1
    url = urlsplit(prometheus[0]["url"])
    assert url.hostname == "prometheus" and url.port in container_ports(service("prometheus"))

    providers = [
        p
        for file in (provisioning / "dashboards").glob("*.y*ml")
        for p in yaml.safe_load(file.read_text())["providers"]
    ]
    read = {host_path(entry, str(PurePosixPath(p["options"]["path"]) / DASHBOARD.name)) for p in providers}
    assert DASHBOARD.resolve() in read, (
        "no dashboard provider reads docker/grafana/tenant-router.json through the mounts"
    )

    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(all_panels(dashboard["panels"]))
    assert panels and all(panel.get("targets") for panel in panels if panel.get("type") != "row")
    for panel in panels:
        for source in [panel.get("datasource"), *(target.get("datasource") for target in panel.get("targets", []))]:
            uid = source.get("uid", "") if isinstance(source, dict) else source or ""
            assert not uid or uid == prometheus[0]["uid"] or uid.startswith("$"), (
                f"panel {panel.get('title')!r} names data source {uid!r}, not the provisioned one"
            )


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def test_the_router_accepts_router_yaml_and_shards_yaml(secrets: dict[str, str]) -> None:
    """The router's own loaders, with the environment compose gives it: what `serve` would refuse fails here."""
    config = load_router_config(router_yaml_on_host())
    assert config.shards_file == router_yaml_on_host().parent / "shards.yaml"
    mounted = PurePosixPath(image_config_path()).parent / config.shards_file.name
    assert host_path(service("router"), str(mounted)) == config.shards_file, "shards.yaml is not beside router.yaml"
    assert set(load_topology(config.shards_file).shards) == {"shard_a", "shard_b"}


def test_router_yaml_is_the_hardened_setup(router_config: RouterConfig, topology: Topology) -> None:
    # Loading it at all (the fixtures) is the router's own validation; these are the brief's choices.
    assert router_config.tenant.context_secret == env_example()["TENANT_ROUTER_CONTEXT_SECRET"]
    assert router_config.admin is not None and router_config.admin.user == "postgres"
    assert router_config.workers == 2
    assert router_config.pool.handover == "exact"
    schema_sql = router_config.tenant.schema_sql
    assert schema_sql is None or (router_config.path.parent / schema_sql).is_file()
    # The role the router logs in as is made, LOGIN only, by the init script of every shard and the catalog.
    for name in ("catalog", "shard-a", "shard-b"):
        scripts = [
            m.source for m in bind_mounts(service(name)) if str(m.target).startswith("/docker-entrypoint-initdb.d/")
        ]
        assert len(scripts) == 1, f"{name} has no init script"
        created = re.search(r"CREATE ROLE (\w+) LOGIN([^;]*);", scripts[0].read_text())
        assert created is not None and created.group(1) == router_config.server.user, (
            f"{name}: no role {router_config.server.user}"
        )
        attributes = created.group(2).split()
        for power in ("SUPERUSER", "CREATEDB", "CREATEROLE", "BYPASSRLS", "REPLICATION"):
            assert f"NO{power}" in attributes, f"{name}: the router's role must be created NO{power}"


def test_shards_run_with_what_moves_need(topology: Topology) -> None:
    hosts = {shard.primary.host for shard in topology.shards.values()}
    hosts |= {replica.host for shard in topology.shards.values() for replica in shard.replicas}
    for host in hosts:
        entry = service(host)
        found = re.search(r"config_file=(\S+)", command_text(entry))
        assert found is not None, f"{host} does not run with the shards' settings file"
        conf = host_path(entry, found.group(1))
        assert conf is not None and conf.is_file(), f"{host}: {found.group(1)} is not mounted"
        settings = dict(
            (key.strip(), value.strip().strip("'"))
            for key, _, value in (line.split("#")[0].partition("=") for line in conf.read_text().splitlines())
            if key.strip()
        )
        assert {key: settings.get(key) for key in MOVE_SETTINGS} == dict(MOVE_SETTINGS), host
        assert settings.get("listen_addresses") == "*", f"{host} must listen beyond its own container"
        assert settings.get("port", "5432") == "5432" and 5432 in container_ports(entry)


def test_the_replica_is_a_base_backup_of_its_shards_primary(topology: Topology) -> None:
    for shard in topology.shards.values():
        for replica in shard.replicas:
            entry = service(replica.host)
            command = command_text(entry)
            assert "pg_basebackup" in command and f"--host={shard.primary.host}" in command, replica.host
            assert "--write-recovery-conf" in command, f"{replica.host} must start as a standby"
            assert entry["depends_on"][shard.primary.host]["condition"] == "service_healthy"


def test_setup_runs_once_the_databases_are_healthy_and_the_router_after_it(topology: Topology) -> None:
    setup = service("setup")
    databases = {"catalog"} | {shard.primary.host for shard in topology.shards.values()}
    databases |= {replica.host for shard in topology.shards.values() for replica in shard.replicas}
    waits = {name: dep["condition"] for name, dep in setup["depends_on"].items()}
    assert waits == {name: "service_healthy" for name in databases}
    for name in databases:
        assert service(name).get("healthcheck"), f"setup waits for {name} to be healthy, but it has no healthcheck"
    calls = re.findall(r"tenant-router --config (\S+) ([a-z][^|&>\\\n]*)", command_text(setup))
    commands = [arguments.strip() for _, arguments in calls]
    assert "catalog init" in commands
    assert "rls enable items --column tenant_id" in commands
    added = [i for i, command in enumerate(commands) if command.startswith("tenants add ")]
    assert added and "--isolation shared" in commands[added[0]], commands
    assert commands.index("catalog init") < commands.index("rls enable items --column tenant_id") < added[0]
    for config, _ in calls:
        assert host_path(setup, config) == router_yaml_on_host(), f"setup runs {config}, not the router's file"
    assert service("router")["depends_on"]["setup"]["condition"] == "service_completed_successfully"


# --- the Dockerfile ------------------------------------------------------------------------------------


def test_the_image_runs_tenant_router_serve_as_a_non_root_user() -> None:
    stage = final_stage()
    user = last(stage, "USER").arguments.split(":")[0]
    assert user not in ("root", "0"), f"the image runs as {user}"
    assert last(stage, "ENTRYPOINT").exec_form() == ["tenant-router"]
    assert image_config_path() == "/etc/tenant-router/router.yaml"
    base = last(stage, "FROM").arguments.split()[0]
    arguments = dict(i.arguments.partition("=")[::2] for i in dockerfile_preamble() if i.keyword == "ARG")
    base = arguments.get(base.strip("${}"), base) if base.startswith("$") else base
    assert base.startswith("python:3.11-slim"), f"the image is based on {base}"


def test_the_forwarding_path_is_compiled_in_a_stage_the_image_only_copies_from() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a multi-stage build keeps the compiler out of the image"
    builders = [
        stage for stage in stages[:-1] if any("setup.py" in i.arguments and "build_ext" in i.arguments for i in stage)
    ]
    assert len(builders) == 1, "one build stage runs setup.py build_ext"
    name = builders[0][0].arguments.split()[-1]
    final = stages[-1]
    assert any(i.keyword == "COPY" and f"--from={name}" in i.arguments for i in final), "the image copies the build"
    for instruction in final:
        if instruction.keyword == "RUN":
            assert not re.search(r"\b(gcc|build-essential|mypy|setup\.py)\b", instruction.arguments), instruction


def test_the_healthcheck_asks_health_on_the_http_port(router_config: RouterConfig) -> None:
    healthcheck = last(final_stage(), "HEALTHCHECK").arguments
    assert f":{router_config.http.port}/health" in healthcheck


def test_dockerignore_keeps_local_builds_out_and_what_the_image_copies_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        # Docker's rules, as far as these patterns need: a match on a folder leaves out all of it.
        parts = PurePosixPath(path).parts
        for depth in range(len(parts)):
            prefix = "/".join(parts[: depth + 1])
            for pattern in patterns:
                if pattern.startswith("**/"):
                    if fnmatch.fnmatchcase(parts[depth], pattern[3:]):
                        return True
                elif fnmatch.fnmatchcase(prefix, pattern):
                    return True
        return False

    assert ignored("router/core/pool.cpython-311-x86_64-linux-gnu.so")
    assert ignored("router/native.json")
    copied = [
        source
        for stage in dockerfile_stages()
        for instruction in stage
        if instruction.keyword == "COPY" and "--from=" not in instruction.arguments
        for source in instruction.arguments.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not ignored(source), f"the Dockerfile copies {source}, which .dockerignore leaves out"
    assert not ignored("router/core/pool.py")
