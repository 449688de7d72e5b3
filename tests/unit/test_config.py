"""router.yaml loading: defaults, every problem reported at once, environment expansion."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from router.config import (
    AuthConfig,
    CatalogConfig,
    PoolConfig,
    RouterConfig,
    ServerCredentials,
    TenantConfig,
    UserConfig,
    load_router_config,
)
from router.errors import ConfigError, ConfigProblem

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = (
    "TENANT_ROUTER_CATALOG_DSN",
    "APP_PASSWORD",
    "REPORTING_PASSWORD",
    "TENANT_ROUTER_SERVER_PASSWORD",
    "TENANT_ROUTER_ADMIN_USER",
    "TENANT_ROUTER_ADMIN_PASSWORD",
    "TENANT_ROUTER_CONTEXT_SECRET",
)
# What the README's "Running it" exports before the first command.
EXAMPLE_SECRETS = {"TENANT_ROUTER_CONTEXT_SECRET": "0123abcd" * 8, "TENANT_ROUTER_ADMIN_PASSWORD": "admin-pw"}

MINIMAL = """\
catalog: {dsn: "postgresql://u:p@localhost/cat"}
auth:
  users: [{name: app, password: secret}]
server: {user: tenant_router}
"""


def write(tmp_path: Path, text: str, name: str = "router.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_router_config(path)
    assert all(p.file == str(path) for p in info.value.problems)
    return info.value.problems


def by_field(found: list[ConfigProblem]) -> dict[str, str]:
    return {p.field: p.reason for p in found}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in EXAMPLE_ENV:
        monkeypatch.delenv(name, raising=False)


def test_example_config_loads_with_its_documented_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EXAMPLE_SECRETS.items():
        monkeypatch.setenv(name, value)
    config = load_router_config(REPO / "config" / "router.yaml")
    assert config.path == (REPO / "config" / "router.yaml").resolve()
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 6432)
    assert config.http.port == 9930 and config.http.enabled
    assert config.catalog.dsn == "postgresql://tenant_router:router-secret@127.0.0.1:5499/router_catalog"
    assert config.shards_file == (REPO / "shards.yaml").resolve()
    assert config.auth.method == "scram-sha-256"
    app = config.auth.user("app")
    assert app == UserConfig(name="app", password="app-secret", tenant_switch=True)
    reporting = config.auth.user("reporting")
    assert reporting is not None and not reporting.tenant_switch
    assert config.auth.user("nobody") is None
    assert (config.server.user, config.server.password) == ("tenant_router", "router-secret")
    assert config.pool == PoolConfig()
    # The hardened setup: a signed tenant context and an admin for provisioning.
    assert config.tenant == TenantConfig(context_secret="0123abcd" * 8)
    assert config.admin is not None and (config.admin.user, config.admin.password) == ("postgres", "admin-pw")
    assert config.log_level == "INFO"


def test_example_config_does_not_fall_back_to_the_unsigned_mode() -> None:
    # Without its secrets the example refuses to load, rather than run unsigned by accident.
    found = by_field(problems(REPO / "config" / "router.yaml"))
    assert "TENANT_ROUTER_CONTEXT_SECRET" in found["tenant.context_secret"]
    assert "TENANT_ROUTER_ADMIN_PASSWORD" in found["admin.password"]


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_router_config(write(tmp_path, MINIMAL))
    assert config.shards_file == tmp_path.resolve() / "shards.yaml"
    assert config.pool.mode == "transaction" and config.pool.size == 20
    assert config.pool.max_client_connections == 10000
    assert (config.pool.wait_timeout, config.pool.connect_timeout) == (5.0, 3.0)
    assert (config.pool.idle_timeout, config.pool.lifetime) == (600.0, 3600.0)
    assert config.tenant.resolution == ("user", "option")
    assert (config.tenant.setting, config.tenant.separator) == ("app.tenant_id", ".")
    assert config.tenant.default_isolation == "shared"
    assert config.catalog.schema == "tenant_router" and config.catalog.refresh_interval == 5.0
    assert config.server.password is None


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_router_config(write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool.size = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.log_level = "DEBUG"  # type: ignore[misc]
    assert isinstance(config.auth.users, tuple)


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    text = MINIMAL.replace("{user: tenant_router}", "{user: tenant_router, password: Srv-Pw-1}")
    text = text.replace("password: secret", "password: Usr-Pw-2").replace("u:p@", "u:Dsn-Pw-3@")
    config = load_router_config(write(tmp_path, text))
    assert config.server.password == "Srv-Pw-1" and config.auth.users[0].password == "Usr-Pw-2"
    shown = repr(config)
    assert not any(secret in shown for secret in ("Srv-Pw-1", "Usr-Pw-2", "Dsn-Pw-3"))


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        listen: {port: 70000, hots: localhost}
        catalog: {dsn: "postgresql://localhost/cat", refresh_interval: 0}
        auth:
          method: md5
          users:
            - {name: app, password: a}
            - {name: app, password: b}
            - {name: reporting}
        server: {user: tenant_router}
        pool: {size: 0, mode: statement, wait_timeout: -1}
        tenant: {resolution: [user, user], setting: tenant, separator: "::"}
        log_level: loud
        colour: blue
        """,
    )
    found = by_field(problems(path))
    assert found == {
        "listen.port": "Input should be less than or equal to 65535 (got 70000)",
        "listen.hots": "unknown field",
        "catalog.refresh_interval": "Input should be greater than 0 (got 0)",
        "auth.users[1].name": "duplicate user name (first defined at users[0]) (got 'app')",
        "auth.users[2].password": "user 'reporting' needs a password when auth.method is md5",
        "pool.size": "Input should be greater than or equal to 1 (got 0)",
        "pool.mode": "Input should be 'transaction' or 'session' (got 'statement')",
        "pool.wait_timeout": "Input should be greater than 0 (got -1)",
        "tenant.resolution": "lists a method more than once (got ['user', 'user'])",
        "tenant.setting": "must be a custom setting name like app.tenant_id (got 'tenant')",
        "tenant.separator": "must be exactly one non-space character (got '::')",
        "log_level": "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'loud')",
        "colour": "unknown field",
    }


def test_problem_renders_as_file_field_reason(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "pool: {size: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_router_config(path)
    assert str(info.value) == f"{path}: pool.size: Input should be greater than or equal to 1 (got 0)"


def test_required_sections_and_fields(tmp_path: Path) -> None:
    found = by_field(problems(write(tmp_path, "auth: {users: []}\nserver: {}\n")))
    assert found == {
        "catalog": "required field is missing",
        "auth.users": "must list at least one user (got [])",
        "server.user": "required field is missing",
    }


def test_empty_file_names_the_required_sections(tmp_path: Path) -> None:
    found = by_field(problems(write(tmp_path, "")))
    assert set(found) == {"catalog", "auth", "server"}


def test_unknown_fields_at_every_level(tmp_path: Path) -> None:
    text = MINIMAL.replace("server: {user: tenant_router}", "server: {user: tenant_router, pasword: x}")
    text += "pool: {sise: 3}\nlisten_port: 1\n"
    text = text.replace("password: secret}", "password: secret, admin: true}")
    found = by_field(problems(write(tmp_path, text)))
    assert found == {
        "server.pasword": "unknown field",
        "pool.sise": "unknown field",
        "listen_port": "unknown field",
        "auth.users[0].admin": "unknown field",
    }


def test_password_optional_with_trust(tmp_path: Path) -> None:
    text = "catalog: {dsn: 'postgresql://h/c'}\nauth: {method: trust, users: [{name: app}]}\nserver: {user: r}\n"
    config = load_router_config(write(tmp_path, text))
    assert config.auth.users == (UserConfig(name="app"),)


def test_user_names_must_not_contain_the_separator(tmp_path: Path) -> None:
    text = MINIMAL.replace("name: app", "name: app_x") + "tenant: {separator: _}\n"
    assert by_field(problems(write(tmp_path, text))) == {
        "auth.users[0].name": "must not contain the tenant separator '_' (got 'app_x')"
    }


def test_catalog_dsn_must_be_a_uri_and_is_not_echoed(tmp_path: Path) -> None:
    text = MINIMAL.replace("postgresql://u:p@localhost/cat", "host=x password=hunter2")
    found = problems(write(tmp_path, text))
    assert [(p.field, p.reason) for p in found] == [("catalog.dsn", "must be a postgresql:// URI (got <redacted>)")]


def test_environment_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TR_TEST_PASSWORD", "from-env")
    monkeypatch.setenv("TR_TEST_PORT", "7000")
    monkeypatch.setenv("TR_TEST_EMPTY", "")
    monkeypatch.delenv("TR_TEST_UNSET", raising=False)
    text = """\
    listen: {port: "${TR_TEST_PORT}", host: "${TR_TEST_UNSET:-0.0.0.0}"}
    catalog: {dsn: "postgresql://u:${TR_TEST_PASSWORD}@h/c?x=${TR_TEST_EMPTY:-1}"}
    auth: {users: [{name: app, password: "pre-${TR_TEST_PASSWORD}-$${LITERAL}"}]}
    server: {user: "${TR_TEST_EMPTY}r"}
    """
    config = load_router_config(write(tmp_path, text))
    assert config.listen.port == 7000
    assert config.listen.host == "0.0.0.0"
    assert config.catalog.dsn == "postgresql://u:from-env@h/c?x=1"
    assert config.auth.users[0].password == "pre-from-env-${LITERAL}"
    assert config.server.user == "r"


def test_missing_environment_variable_names_field_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TR_TEST_UNSET", raising=False)
    monkeypatch.delenv("TR_TEST_UNSET_PORT", raising=False)
    text = MINIMAL.replace("password: secret", 'password: "${TR_TEST_UNSET}"')
    text += 'listen: {port: "${TR_TEST_UNSET_PORT}"}\npool: {size: 0}\n'
    assert by_field(problems(write(tmp_path, text))) == {
        "auth.users[0].password": "environment variable TR_TEST_UNSET is not set",
        "listen.port": "environment variable TR_TEST_UNSET_PORT is not set",
        "pool.size": "Input should be greater than or equal to 1 (got 0)",
    }


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "catalog:\n  dsn: [unclosed\nserver: {user: r}\n"))
    assert len(found) == 1
    assert found[0].field.startswith("line ")
    assert found[0].reason.startswith("invalid YAML: ")


def test_duplicate_yaml_keys_are_problems(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL + "pool: {size: 2}\npool: {size: 3}\n"))
    assert [(p.field, p.reason) for p in found] == [
        ("line 6, column 1", "duplicate key 'pool' (only the last one would count)")
    ]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "- just\n- a list\n"))
    assert [(p.field, p.reason) for p in found] == [("(file)", "must be a mapping of sections, got list")]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert [(p.file, p.field, p.reason) for p in problems(path)] == [(str(path), "(file)", "file not found")]


def test_shards_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    config = load_router_config(write(tmp_path, MINIMAL + "shards_file: ../topo/s.yaml\n", "etc/router.yaml"))
    assert config.shards_file == tmp_path.resolve() / "topo" / "s.yaml"


def test_http_port_zero_disables(tmp_path: Path) -> None:
    config = load_router_config(write(tmp_path, MINIMAL + "http: {port: 0}\nlog_level: debug\n"))
    assert not config.http.enabled
    assert config.log_level == "DEBUG"


def test_types_validate_when_constructed_directly() -> None:
    with pytest.raises(ValueError):
        PoolConfig(size=0)
    with pytest.raises(ValueError):
        AuthConfig(users=(UserConfig(name="app"),))  # scram needs a password
    with pytest.raises(ValueError):
        CatalogConfig(dsn="mysql://x")
    users = (UserConfig(name="app", password="p"),)
    config = RouterConfig(
        path=Path("/etc/router.yaml"),
        catalog=CatalogConfig(dsn="postgresql://h/c"),
        shards_file=Path("/etc/shards.yaml"),
        auth=AuthConfig(users=users),
        server=ServerCredentials(user="r"),
    )
    assert config.pool == PoolConfig() and config.auth.user("app") is users[0]


def test_a_context_secret_requires_the_exact_hand_over(tmp_path: Path) -> None:
    text = MINIMAL + "tenant: {context_secret: s3cret}\npool: {handover: tracked}\n"
    found = by_field(problems(write(tmp_path, text)))
    assert list(found) == ["pool"]
    assert found["pool"].startswith("handover must be exact when tenant.context_secret is set")
    assert "s3cret" not in str(found)
    exact = load_router_config(write(tmp_path, MINIMAL + "tenant: {context_secret: s3cret}\n"))
    assert exact.pool.handover == "exact" and exact.tenant.context_secret == "s3cret"
