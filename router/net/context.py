"""The seam between client sessions and the rest of the router.

A session asks the router, through this interface, who a user is, where a tenant's transactions
go, and how to end a session cleanly. The network layer depends on this Protocol only, never on
the composition root that implements it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from router.config import UserConfig
    from router.core.pool import Pool
    from router.core.target import Target
    from router.errors import RouterError
    from router.net.client import ClientSession
    from router.net.server import ServerConnection
    from router.protocol.pg.auth import ScramVerifier
    from router.sql.read_statements import ReadClassifier


class RouterContext(Protocol):
    auth_method: str
    tenant_resolution: tuple[str, ...]
    tenant_separator: str
    tenant_setting: str  # the tenant id's setting (app.tenant_id): the router's, never a client's
    transaction_pooling: bool
    login_timeout: float
    refused_state: frozenset[str]
    exact_handover: bool
    held: dict[str, list[Any]]
    read_mode: str  # off | explicit | auto: the default for users that do not set their own
    read_classifier: ReadClassifier
    read_your_writes: str  # off | session | tenant
    # The tenants whose Target is known, by tenant: the same dict for the router's lifetime, from
    # which entries are dropped when they change, so a session may keep it and look up its target
    # without a call (a miss asks `resolve_target`).
    targets: dict[str, Target]

    def user(self, name: str) -> UserConfig | None: ...

    def scram_verifier(self, user: UserConfig) -> ScramVerifier: ...

    def resolve_target(self, tenant: str) -> Target:
        """Raises UnknownTenant / TenantSuspended."""
        ...

    def default_target(self) -> Target:
        """For a trusted user that logs in without a tenant: where server parameters come from."""
        ...

    def register_client(self, session: ClientSession) -> tuple[int, bytes]:
        """Admit a logged-in client; return its cancel key. Raises TooManyClients."""
        ...

    def unregister_client(self, session: ClientSession) -> None: ...

    async def cancel(self, process_id: int, secret_key: bytes) -> None: ...

    def end_session(self, server: ServerConnection, pool: Pool, reset: bool) -> None:
        """A client left while holding a clean server connection: give it back, wiped first in
        session mode or when `reset` (it holds session state such as locks or LISTENs)."""
        ...

    def close_idle_connections(self, host: str, port: int, databases: tuple[str, ...]) -> None:
        """Close pooled idle connections to these databases (before DROP/ALTER DATABASE)."""
        ...

    def count_error(self, sqlstate: str) -> None: ...

    def move_client(self, old: str | None, new: str | None) -> None:
        """Count a logged-in client under another tenant; raises TooManyClients at its limit."""
        ...

    def read_pool(self, target: Target, min_lsn: int | None) -> Pool | None:
        """The pool of the replica a read should use (replayed at least `min_lsn`), or None: the primary."""
        ...

    def replica_failed(self, pool: Pool, exc: RouterError) -> None:
        """A replica could not serve a read: stop choosing it until its health check passes."""
        ...

    def note_commit(self, tenant: str, lsn: int) -> None:
        """A write of `tenant` committed at WAL position `lsn` (read-your-writes per tenant)."""
        ...

    def commit_pending(self, tenant: str) -> None:
        """A write of `tenant` has just committed at a position not read yet: until `commit_settled`,
        the tenant's reads (read-your-writes per tenant) go to the primary."""
        ...

    def commit_settled(self, tenant: str) -> None:
        """The position of a pending commit is noted (`note_commit`), or will never be."""
        ...

    def tenant_commit_position(self, tenant: str) -> int | None: ...

    def wait_for_release(
        self, tenant: str, resume: Callable[[], None], fail: Callable[[RouterError], None]
    ) -> Cancellable | None:
        """If the tenant is held, queue `resume` for when it is released and return the ticket."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...
