"""router.yaml -> one frozen, validated RouterConfig; and the YAML loading every config file shares.

Owns: the shape of router.yaml and its defaults, `${VAR}` / `${VAR:-default}` expansion from the
environment, and turning every mistake in a file into a ConfigProblem (file, dotted field path,
reason with the bad value), all of them at once rather than the first.

Must not: open sockets, touch the catalog, read shards.yaml (topology.py does, through
`load_document` below), or keep any state: a reload calls `load_router_config` again and gets a new
object. The config types are built only by the loader in production; their validators still run
when code constructs them directly, except the one rule spanning sections (user names versus the
tenant separator), which lives on the file as a whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import yaml
from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from router.errors import ConfigError, ConfigProblem

__all__ = [
    "AuthConfig",
    "CatalogConfig",
    "HttpConfig",
    "ListenConfig",
    "PoolConfig",
    "RouterConfig",
    "ServerCredentials",
    "TenantConfig",
    "UserConfig",
    "load_document",
    "load_router_config",
]

# Unknown keys are mistakes (a typo silently falling back to a default is the worst outcome).
_SECTION: Final = ConfigDict(extra="forbid")

Port = Annotated[int, Field(ge=0, le=65535)]
NonEmpty = Annotated[str, Field(min_length=1)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
SessionStateKind = Literal["listen", "temp_table", "advisory_lock", "prepare", "hold_cursor"]
SecondsOrZero = Annotated[float, Field(ge=0, allow_inf_nan=False)]

# Error kind for a value that is missing because of another field: there is no bad value to show.
_ABSENT: Final = "absent"
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _problem(kind: str, message: str, loc: tuple[str | int, ...], value: object) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


def _raise_if(errors: list[InitErrorDetails], title: str) -> None:
    # pydantic merges a ValidationError raised inside a validator into the outer one, prefixing each
    # loc, so one validator can report several located problems instead of a single string.
    if errors:
        raise ValidationError.from_exception_data(title, errors)


# --- sections ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class ListenConfig:
    """Where PostgreSQL clients connect. Port 0 asks the OS for a free port (tests)."""

    host: NonEmpty = "127.0.0.1"
    port: Port = 6432


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class HttpConfig:
    """Health, metrics and the HTTP API (router.ops.http). Port 0 disables it. `tokens`: the bearer
    tokens the API accepts (write them as ${ENV} references); without one only /health, /ready and
    /metrics are served, so an empty list leaves the API closed."""

    host: NonEmpty = "127.0.0.1"
    port: Port = 9930
    tokens: tuple[NonEmpty, ...] = field(default=(), repr=False)

    @property
    def enabled(self) -> bool:
        return self.port != 0


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class CatalogConfig:
    """The tenant catalog database. `dsn` is a postgresql:// URI and usually carries a secret."""

    dsn: NonEmpty = field(repr=False)  # carries a password
    schema: str = "tenant_router"
    refresh_interval: Seconds = 5.0

    @field_validator("dsn")
    @classmethod
    def _dsn_is_uri(cls, dsn: str) -> str:
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise PydanticCustomError("dsn", "must be a postgresql:// URI")
        return dsn

    @field_validator("schema")
    @classmethod
    def _schema_is_identifier(cls, schema: str) -> str:
        if not _IDENTIFIER.fullmatch(schema):
            raise PydanticCustomError("identifier", "must be a lowercase SQL identifier")
        return schema


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class UserConfig:
    """A client-facing user. `tenant_switch` trusts it to choose its tenant per session/statement."""

    name: NonEmpty
    password: str | None = field(default=None, repr=False)
    tenant_switch: bool = False
    # Read/write splitting for this user's sessions; None = the global `reads.mode`.
    reads: ReadMode | None = None
    # Every session of this user is read-only: its transactions go to replicas (in explicit and auto).
    read_only: bool = False
    # May log in to the admin console: the virtual database `tenant_router` (SHOW POOLS, PAUSE...).
    console: bool = False


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class AuthConfig:
    """How clients authenticate to the router, and who may."""

    method: Literal["scram-sha-256", "md5", "trust"] = "scram-sha-256"
    users: tuple[UserConfig, ...]

    @field_validator("users")
    @classmethod
    def _users_are_usable(cls, users: tuple[UserConfig, ...], info: ValidationInfo) -> tuple[UserConfig, ...]:
        # min_length constraints are avoided on purpose: pydantic checks them after dropping invalid
        # items and would report a spurious "0 items" next to each item's own problem.
        if not users:
            raise PydanticCustomError("empty", "must list at least one user")
        method = info.data.get("method")  # absent when the method itself is invalid: reported there
        errors: list[InitErrorDetails] = []
        first_index: dict[str, int] = {}
        for index, user in enumerate(users):
            if user.name in first_index:
                message = f"duplicate user name (first defined at users[{first_index[user.name]}])"
                errors.append(_problem("duplicate", message, (index, "name"), user.name))
            first_index.setdefault(user.name, index)
            if user.password is None and method not in (None, "trust"):
                message = f"user {user.name!r} needs a password when auth.method is {method}"
                errors.append(_problem(_ABSENT, message, (index, "password"), None))
        _raise_if(errors, "AuthConfig")
        return users

    def user(self, name: str) -> UserConfig | None:
        """The configured user called `name`, or None."""
        return next((user for user in self.users if user.name == name), None)


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class ServerCredentials:
    """The role the router itself logs in as on every shard."""

    user: NonEmpty
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class AdminCredentials:
    """A role with the rights to provision on every shard (CREATE ROLE, CREATE DATABASE, owning the
    row-level security key): used by `tenant-router rls enable` and `tenants add/erase`, never by
    client traffic. Usually a superuser; the router's own `server.user` must not be one."""

    user: NonEmpty
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class PoolConfig:
    """Server connection pooling; `size` is per shard. A timeout of 0 for idle/lifetime disables it."""

    mode: Literal["transaction", "session"] = "transaction"
    size: Annotated[int, Field(ge=1)] = 20
    max_client_connections: Annotated[int, Field(ge=1)] = 10000
    wait_timeout: Seconds = 5.0
    connect_timeout: Seconds = 3.0
    idle_timeout: SecondsOrZero = 600.0
    lifetime: SecondsOrZero = 3600.0
    # Session state that cannot travel between server connections pins the client to its server
    # connection while it exists; kinds listed here are refused with an error instead.
    refuse: tuple[SessionStateKind, ...] = ()
    # What a server connection goes through when it passes to another client in transaction mode:
    # "exact" wipes it (RESET ALL, DEALLOCATE ALL...) unless its client ran only statements proven
    # inert, or ones that also wrote rows, after which DISCARD SEQUENCES suffices
    # (router.sql.inert_statements), so nothing a client did reaches the next one, even changes made
    # inside functions; "tracked" only undoes the changes the router saw (as PgBouncer's
    # parameter tracking does): cheaper, but not exact.
    handover: Literal["exact", "tracked"] = "exact"


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class PeerConfig:
    """Another router instance, for forwarding CancelRequests whose key it issued."""

    id: Annotated[int, Field(ge=0, le=255)]
    host: NonEmpty
    port: Port


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class ClusterConfig:
    """This instance among its peers: `peer_id` is encoded in every cancel key it hands out."""

    peer_id: Annotated[int, Field(ge=0, le=255)] = 0
    peers: tuple[PeerConfig, ...] = ()


ReadMode = Literal["off", "explicit", "auto"]


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class ReadsConfig:
    """Read/write splitting over each shard's replicas.

    `mode`: off (all to the primary); explicit (read-only sessions and BEGIN READ ONLY go to a
    replica); auto (also plain reads outside a transaction). A replica whose replay lag exceeds
    `max_lag_bytes` or `max_lag_seconds` gets no reads. `read_your_writes`: after a client commits a
    write, its reads (per session, or per tenant for all its sessions in this process) go only to
    replicas that have replayed that commit, else to the primary.
    """

    mode: ReadMode = "off"
    volatile_functions: tuple[NonEmpty, ...] = ()  # functions whose calls must run on the primary
    max_lag_bytes: Annotated[int, Field(ge=0)] = 16 * 1024 * 1024
    max_lag_seconds: Seconds = 10.0
    read_your_writes: Literal["off", "session", "tenant"] = "session"


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class HealthConfig:
    """Background health checks of every server: a failing server is marked down, its idle
    connections dropped, and it is retried with exponential backoff up to `max_backoff`."""

    interval: Seconds = 1.0  # between checks (and lag measurements) of a healthy server
    timeout: Seconds = 2.0  # for one check, connecting included
    max_backoff: Seconds = 30.0


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class ReloadConfig:
    """Live reload of shards.yaml: SIGHUP, `tenant-router reload`, or the file watcher."""

    watch: bool = True
    watch_interval: Seconds = 1.0


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class RebalanceConfig:
    """Online tenant moves (router/rebalance/): `tenants move`, `rebalance apply`."""

    # The longest a cutover may hold a tenant's new transactions; past it the move lets go and
    # tries again later, the tenant served on its source meanwhile.
    max_hold: Seconds = 2.0
    # Cutover attempts before a move gives up and is rolled back.
    max_attempts: Annotated[int, Field(ge=1)] = 5
    retry_interval: Seconds = 5.0
    # The longest the initial copy and the catch-up after it may take.
    catchup_timeout: Seconds = 3600.0
    # A cutover is tried once the target is this close (bytes of WAL) behind the source.
    cutover_lag_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024
    # The target's replication failing this long without a break (DDL on the tenant during its
    # move is not replicated, say) stops the move with the reason, instead of catchup_timeout.
    failing_for: Seconds = 60.0


_CUSTOM_SETTING: Final = re.compile(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*")


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class TenantConfig:
    """How a session's tenant is found: `resolution` is tried in order ("user" = `name<sep>tenant`
    user names, "option" = the `setting` startup option); `setting` is also set on server sessions."""

    resolution: tuple[Literal["user", "option"], ...] = ("user", "option")
    setting: str = "app.tenant_id"
    separator: str = "."
    default_isolation: Literal["shared", "schema", "database"] = "shared"
    # Client connections one tenant may hold across ALL router instances and workers; each worker
    # enforces its share (the limit divided by the live workers registered in the catalog).
    max_connections: Annotated[int, Field(ge=1)] | None = None
    # Signs the tenant context (HMAC-SHA256) so a client cannot forge it, and derives the passwords
    # of per-tenant roles. Shared with the shards' verifying function by `tenant-router rls enable`.
    context_secret: str | None = field(default=None, repr=False)
    # The application's schema for a new `schema` or `database` tenant: one .sql file, or a folder of
    # them applied in name order (relative to router.yaml), run as the tenant's role in its namespace.
    schema_sql: str | None = None

    @field_validator("resolution")
    @classmethod
    def _non_empty_without_repeats(cls, resolution: tuple[str, ...]) -> tuple[str, ...]:
        if not resolution:
            raise PydanticCustomError("empty", "must list at least one method")
        if len(set(resolution)) != len(resolution):
            raise PydanticCustomError("duplicate", "lists a method more than once")
        return resolution

    @field_validator("setting")
    @classmethod
    def _custom_setting(cls, setting: str) -> str:
        # PostgreSQL accepts SET of unknown names only with a prefix ("placeholder" GUCs).
        if not _CUSTOM_SETTING.fullmatch(setting):
            raise PydanticCustomError("setting", "must be a custom setting name like app.tenant_id")
        return setting

    @field_validator("separator")
    @classmethod
    def _one_character(cls, separator: str) -> str:
        if len(separator) != 1 or separator.isspace():
            raise PydanticCustomError("separator", "must be exactly one non-space character")
        return separator


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    """The whole of router.yaml; `path` and `shards_file` are absolute."""

    path: Path
    listen: ListenConfig = field(default_factory=ListenConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    catalog: CatalogConfig
    shards_file: Path
    auth: AuthConfig
    server: ServerCredentials
    pool: PoolConfig = field(default_factory=PoolConfig)
    tenant: TenantConfig = field(default_factory=TenantConfig)
    log_level: str = "INFO"
    # Worker processes sharing the listen port; None = one per core. Pool sizes are instance totals.
    workers: int | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    reads: ReadsConfig = field(default_factory=ReadsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)
    admin: AdminCredentials | None = None

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers is not None else max(1, os.cpu_count() or 1)


@dataclass(frozen=True, kw_only=True, config=_SECTION)
class _RouterFile:
    """router.yaml as written. `tenant` precedes `auth` so auth's validator can see the separator."""

    listen: ListenConfig = field(default_factory=ListenConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    catalog: CatalogConfig
    shards_file: NonEmpty = "shards.yaml"
    tenant: TenantConfig = field(default_factory=TenantConfig)
    auth: AuthConfig
    server: ServerCredentials
    pool: PoolConfig = field(default_factory=PoolConfig)
    log_level: str = "INFO"
    workers: Annotated[int, Field(ge=1, le=64)] | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    reads: ReadsConfig = field(default_factory=ReadsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)
    admin: AdminCredentials | None = None

    @field_validator("auth")
    @classmethod
    def _names_without_separator(cls, auth: AuthConfig, info: ValidationInfo) -> AuthConfig:
        tenant = info.data.get("tenant")
        if not isinstance(tenant, TenantConfig):  # tenant itself was invalid: reported there
            return auth
        message = f"must not contain the tenant separator {tenant.separator!r}"
        errors = [
            _problem("separator", message, ("users", index, "name"), user.name)
            for index, user in enumerate(auth.users)
            if tenant.separator in user.name
        ]
        _raise_if(errors, "AuthConfig")
        return auth

    @field_validator("pool")
    @classmethod
    def _exact_handover_when_hardened(cls, pool: PoolConfig, info: ValidationInfo) -> PoolConfig:
        tenant = info.data.get("tenant")
        if isinstance(tenant, TenantConfig) and tenant.context_secret is not None and pool.handover != "exact":
            raise PydanticCustomError(
                "handover",
                "handover must be exact when tenant.context_secret is set: a tracked hand-over leaves"
                " what a client did unseen (a temporary table, say) to the next tenant",
            )
        return pool

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.upper() not in _LOG_LEVELS:
            raise PydanticCustomError("log_level", "must be one of " + ", ".join(_LOG_LEVELS))
        return level.upper()


def load_router_config(path: str | Path) -> RouterConfig:
    """Read and validate router.yaml; raise ConfigError naming every problem found."""
    path = Path(path)
    parsed = load_document(path, _RouterFile)
    absolute = path.resolve()
    return RouterConfig(
        path=absolute,
        listen=parsed.listen,
        http=parsed.http,
        catalog=parsed.catalog,
        shards_file=(absolute.parent / parsed.shards_file).resolve(),
        auth=parsed.auth,
        server=parsed.server,
        pool=parsed.pool,
        tenant=parsed.tenant,
        log_level=parsed.log_level,
        workers=parsed.workers,
        cluster=parsed.cluster,
        reads=parsed.reads,
        health=parsed.health,
        reload=parsed.reload,
        rebalance=parsed.rebalance,
        admin=parsed.admin,
    )


# --- shared by every YAML config file ------------------------------------------------------------

T = TypeVar("T")
Loc = tuple[str | int, ...]
WHOLE_FILE: Final = "(file)"

_SECRET_FIELDS: Final = frozenset({"password", "dsn", "context_secret", "tokens"})
# `$${` escapes a literal `${`; otherwise ${NAME} or ${NAME:-default} (default used if unset or empty).
_REFERENCE: Final = re.compile(r"\$(\$\{)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_document(path: Path, schema: type[T]) -> T:
    """Read a YAML file, expand environment references, validate it against `schema` (a pydantic
    dataclass); raise ConfigError with every problem, each naming `path` and a dotted field path."""
    file = str(path)
    document, problems = _read_yaml(path)
    document, unresolved = _expand_environment(document, (), os.environ)
    problems += [ConfigProblem(file, _dotted(loc), reason) for loc, reason in unresolved]
    try:
        result = TypeAdapter(schema).validate_python(document)
    except ValidationError as exc:
        skip = {loc for loc, _ in unresolved}  # already reported as a missing variable
        problems += [_from_pydantic(file, error) for error in exc.errors() if error["loc"] not in skip]
    if problems:
        raise ConfigError(problems)
    return result


class _Loader(yaml.SafeLoader):
    """SafeLoader that remembers duplicate mapping keys (PyYAML silently keeps the last one)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.Mark, object]] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                loader.duplicates.append((key_node.start_mark, key))
            seen.add(key)
        except TypeError:  # unhashable key: the base constructor reports it
            pass
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> tuple[object, list[ConfigProblem]]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(file, WHOLE_FILE, "file not found")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(file, WHOLE_FILE, f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem(file, WHOLE_FILE, f"cannot read: {exc.strerror}")]) from None
    loader = _Loader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_from_yaml(file, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(file, WHOLE_FILE, f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if document is None:  # an empty file: let validation name the required fields
        document = {}
    if not isinstance(document, dict):
        reason = f"must be a mapping of sections, got {type(document).__name__}"
        raise ConfigError([ConfigProblem(file, WHOLE_FILE, reason)])
    problems = [
        ConfigProblem(file, _at(mark), f"duplicate key {key!r} (only the last one would count)")
        for mark, key in loader.duplicates
    ]
    return document, problems


def _expand_environment(node: object, loc: Loc, environ: Mapping[str, str]) -> tuple[object, list[tuple[Loc, str]]]:
    """Expand references in every string value (not keys); list what could not be resolved."""
    if isinstance(node, dict):
        out: dict[object, object] = {}
        unresolved: list[tuple[Loc, str]] = []
        for key, value in node.items():
            out[key], missing = _expand_environment(value, (*loc, _loc_part(key)), environ)
            unresolved += missing
        return out, unresolved
    if isinstance(node, list):
        items: list[object] = []
        unresolved = []
        for index, value in enumerate(node):
            item, missing = _expand_environment(value, (*loc, index), environ)
            items.append(item)
            unresolved += missing
        return items, unresolved
    if not isinstance(node, str):
        return node, []
    missing_names: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return escaped
        value = environ.get(name)
        if default is not None and not value:
            return default
        if value is None:
            missing_names.append(name)
            return match.group(0)
        return value

    expanded = _REFERENCE.sub(substitute, node)
    return expanded, [(loc, f"environment variable {name} is not set") for name in missing_names]


def _loc_part(key: object) -> str | int:
    return key if isinstance(key, str | int) and not isinstance(key, bool) else str(key)


def _from_pydantic(file: str, error: ErrorDetails) -> ConfigProblem:
    loc = error["loc"]
    kind = error["type"]
    if loc and loc[-1] == "[key]":  # a mapping key itself is invalid (e.g. a shard name)
        loc = (*loc[:-2], str(loc[-2]))
        return ConfigProblem(file, _dotted(loc), f"invalid key: {error['msg']} (got {error['input']!r})")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return ConfigProblem(file, _dotted(loc), "unknown field")
    if kind in ("missing", "missing_keyword_only_argument"):
        return ConfigProblem(file, _dotted(loc), "required field is missing")
    if kind == _ABSENT:
        return ConfigProblem(file, _dotted(loc), error["msg"])
    return ConfigProblem(file, _dotted(loc), f"{error['msg']} (got {_shown(loc, error['input'])})")


def _shown(loc: Loc, value: object) -> str:
    if any(part in _SECRET_FIELDS for part in loc):
        return "<redacted>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _dotted(loc: Loc) -> str:
    """('auth', 'users', 1, 'name') -> 'auth.users[1].name'; () -> '(file)'."""

    def parts() -> Iterator[str]:
        for index, part in enumerate(loc):
            if isinstance(part, int):
                yield f"[{part}]"
            else:
                yield part if index == 0 else f".{part}"

    return "".join(parts()) or WHOLE_FILE


def _at(mark: yaml.Mark | None) -> str:
    return WHOLE_FILE if mark is None else f"line {mark.line + 1}, column {mark.column + 1}"


def _from_yaml(file: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    reason = "; ".join(part for part in (exc.context, exc.problem) if part)
    return ConfigProblem(file, _at(exc.problem_mark), f"invalid YAML: {reason or exc}")
