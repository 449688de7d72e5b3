"""The router's one error taxonomy.

Every error the router raises on purpose is a RouterError carrying the SQLSTATE a PostgreSQL client
should see and a message a person understands. The session boundary turns them into ErrorResponse
messages; the command line prints them. Grouped by subsystem, one section each; every class names
its own SQLSTATE, even where it equals its parent's, so the table below is complete as read.

Must not import anything from the router (every layer imports this module, the sans-IO protocol
code included), nor know about sockets, drivers or wire formats.

Not here, on purpose: exceptions of the test harness (router/testing/, not the router's own), and
`router.sql.setting_values.Dynamic`, a signal inside the statement analysis that never leaves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def listing(items: Sequence[str], shown: int = 5) -> str:
    """Names for a message: the first `shown` of them, then how many more there are."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


class RouterError(Exception):
    """Base of every deliberate router error; `sqlstate` is what a client receives."""

    sqlstate = "XX000"
    severity = "FATAL"

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file: which file, which field (dotted path), and why."""

    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}"


class ConfigError(RouterError):
    """A config file is invalid; carries every problem found, not just the first."""

    sqlstate = "F0000"

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems) or "invalid configuration")


# --- wire protocol and authentication (raised by router/protocol/pg/ and the adapters) ------------


class ProtocolViolation(RouterError):
    """A peer, client or server, broke the PostgreSQL wire protocol."""

    sqlstate = "08P01"


class ClientProtocolError(ProtocolViolation):
    """The client broke the wire protocol (malformed or oversized message, wrong order)."""

    sqlstate = "08P01"


class FramingError(ProtocolViolation, ValueError):
    """Bytes that cannot be a valid message (impossible length, missing terminator, truncated
    field), from either peer: what the sans-IO codecs raise. Also a ValueError, which bad bytes are,
    so that code parsing them under `except ValueError` still catches it."""

    sqlstate = "08P01"


class AuthError(RouterError):
    """The peer's credentials or SCRAM exchange were wrong (the authentication math's verdict; the
    adapters turn it into AuthenticationFailed towards a client, BackendAuthFailed towards a server)."""

    sqlstate = "28P01"


class UnsupportedProtocolVersion(RouterError):
    """A startup packet asks for a protocol version the router does not speak."""

    sqlstate = "0A000"


class AuthenticationFailed(RouterError):
    """A client's password (or SCRAM proof) is wrong."""

    sqlstate = "28P01"


class InvalidAuthorization(RouterError):
    """Unknown user, or a user not allowed to do what it asked (e.g. switch tenant)."""

    sqlstate = "28000"


class TooManyClients(RouterError):
    """The router's client limit is reached."""

    sqlstate = "53300"


# --- routing -------------------------------------------------------------------------------------


class UnknownTenant(RouterError):
    """The tenant is in neither the catalog nor shards.yaml."""

    sqlstate = "3D000"


class TenantSuspended(RouterError):
    """The tenant's catalog status is `suspended`."""

    sqlstate = "08004"


class TenantSwitchRefused(RouterError):
    """`SET router.tenant` inside a transaction, or by a user not trusted for it."""

    sqlstate = "25001"
    severity = "ERROR"


class TenantHeld(RouterError):
    """The tenant is held (being moved or migrated) longer than a client may wait."""

    sqlstate = "55P03"
    severity = "ERROR"


class NoTenant(RouterError):
    """The session names no tenant and the user has no default one."""

    sqlstate = "28000"


# --- prepared statements -------------------------------------------------------------------------


class DuplicatePreparedStatement(RouterError):
    """A Parse of a statement name the client has defined already (as PostgreSQL answers it)."""

    sqlstate = "42P05"
    severity = "ERROR"


class ProtocolStatementFromSql(RouterError):
    """EXECUTE or DEALLOCATE of a statement the client parsed with the protocol."""

    sqlstate = "0A000"
    severity = "ERROR"


# --- pools and backends --------------------------------------------------------------------------


class PoolTimeout(RouterError):
    """No server connection became free within the wait timeout."""

    sqlstate = "53300"


class BackendUnavailable(RouterError):
    """A shard's server cannot be reached or died; the message names the shard."""

    sqlstate = "08006"


class PoolRetired(BackendUnavailable):
    """A pool was removed by a topology reload while a client waited for it or reached for it:
    the client retries with the new topology, it never sees this."""

    sqlstate = "08006"


class BackendAuthFailed(RouterError):
    """The router's own credentials towards a shard were rejected."""

    sqlstate = "08006"


class BackendPasswordRejected(BackendAuthFailed):
    """The server said the password is wrong (28P01): the role's password may have been changed
    on the server (router/net/role_guard.py repairs it through the admin credentials)."""

    sqlstate = "08006"


# --- the tenant catalog (router/catalog/) --------------------------------------------------------


class CatalogUnavailable(RouterError):
    """The catalog database cannot be reached (refused, timed out, credentials rejected); the
    message names its host:port."""

    sqlstate = "08006"


class CatalogError(RouterError):
    """The catalog answered, but not the way we need (not initialised, newer schema, ...)."""

    sqlstate = "55000"
    severity = "ERROR"


class TenantExists(CatalogError):
    """`tenants add` of a tenant id the catalog has already."""

    sqlstate = "42710"


# --- router instances agreeing through the catalog (router/catalog/cluster/) ----------------------


class ClusterError(RouterError):
    """Router instances could not agree on something through the catalog."""

    sqlstate = "55000"
    severity = "ERROR"


class TenantAlreadyHeld(ClusterError):
    """A hold was requested on a tenant that already has one."""

    sqlstate = "55006"


class HoldNotAcknowledged(ClusterError):
    """Some instance that had to acknowledge a hold did not in time; the hold was removed again."""

    sqlstate = "55P03"

    def __init__(self, message: str, *, tenant_id: str, hold_id: str, missing: tuple[str, ...]) -> None:
        super().__init__(
            message,
            hint="an instance that does not acknowledge is hung, overloaded or cut off from the catalog;"
            " see `tenant-router instances`",
        )
        self.tenant_id = tenant_id
        self.hold_id = hold_id
        self.missing = missing


# --- operations: `tenant-router reload` (router/ops/reload.py) -----------------------------------
# Never sent to a client: the command prints them. 58000 (system_error): the failure is the
# operating system's answer (no such process, not permitted, unreadable pid file).


class ReloadSignalError(RouterError):
    """`tenant-router reload` could not signal a running router; the message says why."""

    sqlstate = "58000"


class NoRunningRouter(ReloadSignalError):
    """No pid file for the configured port, or the process it names is gone."""

    sqlstate = "58000"


# --- admin (router/admin/: provisioning, tenant admin, tenant lifecycle) -------------------------


class ProvisioningError(RouterError):
    """Something on a shard is not as isolation needs it; the message says what and how to fix it."""

    sqlstate = "55000"
    severity = "ERROR"


class UnknownShard(ProvisioningError):
    """A shard named that shards.yaml does not have."""

    sqlstate = "42704"


class AdminRequired(ProvisioningError):
    """The operation needs `admin` (or `tenant.context_secret`) in router.yaml."""

    sqlstate = "F0000"


class UnsafeLayout(ProvisioningError):
    """Carrying on would leave something the router's role could use to reach other tenants."""

    sqlstate = "42501"


class TenantAdminError(RouterError):
    """A tenant command could not be carried out; the message says what and where."""

    sqlstate = "55000"
    severity = "ERROR"


class ProvisioningFailed(TenantAdminError):
    """The tenant's schema or database could not be created (the catalog row was removed again)."""

    sqlstate = "55000"


class TenantLifecycleError(TenantAdminError):
    """An export, import or erase could not be carried out; the message says what and where."""

    sqlstate = "55000"


class ArchiveInvalid(TenantLifecycleError):
    """The file is not an export archive this router can read, or its contents do not match its manifest."""

    sqlstate = "22000"


class ImportRefused(TenantLifecycleError):
    """The import would mix the archive's rows with rows the tenant already has (and `replace` is off)."""

    sqlstate = "55000"


class VerificationFailed(TenantLifecycleError):
    """The rows read back after loading differ from the manifest; the import was rolled back."""

    sqlstate = "XX001"


class ConfirmationMismatch(TenantLifecycleError):
    """`erase_tenant` needs the tenant id typed again; nothing was done."""

    sqlstate = "22023"


# --- online rebalancing (router/rebalance/) ------------------------------------------------------
# Never sent to a client: `tenants move` and `rebalance` print them. A client of a tenant being
# moved sees, at worst, TenantHeld.


class MoveError(RouterError):
    """A tenant move could not be carried out; the message says at which stage and why."""

    sqlstate = "55000"
    severity = "ERROR"


class MovePrerequisiteMissing(MoveError):
    """A shard lacks what an online tenant move needs (a setting, a free slot or WAL sender, a
    privilege of the admin role); `problems` names each, with its value. Nothing was changed."""

    sqlstate = "55000"

    def __init__(self, message: str, problems: Sequence[str], *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = tuple(problems)


class MoveConflict(MoveError):
    """Another move of the tenant is open, or another process moved the move on meanwhile."""

    sqlstate = "55006"


class HoldExpired(MoveError):
    """The cutover's hold expired before the tenant's placement was switched; nothing was switched."""

    sqlstate = "55P03"


class CutoverTooSlow(MoveError):
    """The target did not apply the source's last commit within `rebalance.max_hold`; the hold was
    released, the tenant stays on its source, the cutover is tried again later."""

    sqlstate = "55P03"


class MoveVerificationFailed(MoveError):
    """The target's copy differs from the source's; the move was rolled back, the tenant stays put."""

    sqlstate = "XX001"


class UnknownMove(MoveError):
    """No move of that id is on record in the catalog."""

    sqlstate = "42704"


# --- the admin console (the virtual database `tenant_router`) -----------------------------------


class ConsoleRefused(RouterError):
    """A user without `console: true` connected to the admin console's database."""

    sqlstate = "42501"


class ConsoleSyntaxError(RouterError):
    """A console command the router does not know, or one missing its argument."""

    sqlstate = "42601"
    severity = "ERROR"


class ConsoleUnsupported(RouterError):
    """What the console does not do: the extended query protocol, COPY, function calls."""

    sqlstate = "0A000"
    severity = "ERROR"


class ConsoleCommandFailed(RouterError):
    """A console command that could not do what it was asked (catalog down, hold not acknowledged);
    the message says which tenant and why."""

    sqlstate = "55000"
    severity = "ERROR"


# --- the HTTP API (router.ops.http) --------------------------------------------------------------


class ApiError(RouterError):
    """A request to the HTTP API the router cannot carry out as sent."""

    sqlstate = "08P01"


class MalformedRequest(ApiError):
    """The body is not JSON, or not a JSON object (HTTP 400)."""

    sqlstate = "22P02"


class InvalidRequest(ApiError):
    """A field is missing, of the wrong type, or of a value the router refuses (HTTP 422)."""

    sqlstate = "22023"


class ApiUnauthorized(ApiError):
    """No bearer token, or one that is not among `http.tokens` (HTTP 401)."""

    sqlstate = "28000"


class ReloadRejected(ApiError):
    """POST /v1/reload: shards.yaml is invalid or would strand tenants; nothing changed (HTTP 422)."""

    sqlstate = "F0000"
