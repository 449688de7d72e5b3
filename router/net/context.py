"""The seam between client sessions and the rest of the router.

A session asks the router, through this interface, who a user is, where a tenant's transactions
go, and how to end a session cleanly. It is the union of what the lease asks
(router.core.lease.LeaseRouter), what the PostgreSQL session asks
(router.protocol.pg.session_core.SessionRouter) and what login and the network adapter ask. The
network layer depends on this Protocol only, never on the composition root that implements it;
the client session type is a parameter, so that this module need not import the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

from router.core.lease import LeaseRouter
from router.protocol.pg.session_core import SessionRouter

if TYPE_CHECKING:
    from router.config import UserConfig
    from router.core.target import Target
    from router.protocol.pg.auth import ScramVerifier
    from router.protocol.pg.console import Command, Table
    from router.sql.read_statements import ReadClassifier

Client = TypeVar("Client", contravariant=True)


class RouterContext(LeaseRouter, SessionRouter, Protocol[Client]):
    auth_method: str
    tenant_resolution: tuple[str, ...]
    tenant_separator: str
    login_timeout: float
    read_mode: str  # off | explicit | auto: the default for users that do not set their own
    read_classifier: ReadClassifier

    def scram_verifier(self, user: UserConfig) -> ScramVerifier: ...

    def default_target(self) -> Target:
        """For a trusted user that logs in without a tenant: where server parameters come from."""
        ...

    def register_client(self, session: Client) -> tuple[int, bytes]:
        """Admit a logged-in client; return its cancel key. Raises TooManyClients."""
        ...

    def unregister_client(self, session: Client) -> None: ...

    async def cancel(self, process_id: int, secret_key: bytes) -> None: ...

    async def console_command(self, command: Command) -> Table:
        """Carry out an admin console command (router/console/); RouterError if it cannot be done."""
        ...
