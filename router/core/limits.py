"""The logged-in clients of one router process: admission under the client limit, their cancel
keys, and the per-tenant connection limit shared among the live router processes.

Owns: the clients by process id (cancels find them here), the count of clients per tenant, and
how many router processes the per-tenant limit is shared by (`refresh_membership`).

Must not: know how a client speaks or what it holds (it sees `Client`: a key, a tenant, whether a
server is attached), send cancels, or import any protocol or network code.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from router.core.cancel_keys import new_process_id
from router.errors import RouterError, TooManyClients

log = logging.getLogger(__name__)

__all__ = ["Client", "ClientLimits", "Clients", "Membership"]


class Client(Protocol):
    @property
    def key(self) -> tuple[int, bytes]:
        """(process id, secret key) as registered: what a cancel request must present."""
        ...

    @property
    def tenant(self) -> str | None: ...

    @property
    def server(self) -> object | None:
        """The server connection attached now, if any: a transaction of its tenant runs."""
        ...


class Membership(Protocol):
    """The live router processes (router.catalog.cluster.InstanceRegistry)."""

    async def live_instances(self) -> Sized: ...


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """`max_clients`: this process's share of `max_client_connections` (over `workers` workers);
    `per_tenant`: tenant.max_connections for the whole deployment, or None."""

    max_clients: int
    max_client_connections: int
    workers: int
    per_tenant: int | None


S = TypeVar("S", bound=Client)


class Clients(Generic[S]):
    """`on_change` is called whenever a client leaves or changes tenant (holds re-check then)."""

    def __init__(self, limits: ClientLimits, peer_id: int, worker: int, on_change: Callable[[], None]) -> None:
        self.limits = limits
        self._peer_id = peer_id
        self._worker = worker
        self._on_change = on_change
        self._by_process: dict[int, S] = {}
        self._per_tenant: Counter[str] = Counter()
        self.logins = 0  # clients ever admitted (metrics)
        # The live router processes the per-tenant limit is shared by.
        self.live_members = 1
        self.membership: Membership | None = None

    def __len__(self) -> int:
        return len(self._by_process)

    def get(self, process_id: int) -> S | None:
        return self._by_process.get(process_id)

    def sessions(self) -> list[S]:
        return list(self._by_process.values())

    def busy(self, tenant: str) -> bool:
        """Whether a client of `tenant` has a server attached (a transaction runs, or it is pinned)."""
        return any(s.tenant == tenant and s.server is not None for s in self._by_process.values())

    def register(self, session: S) -> tuple[int, bytes]:
        """Admit a logged-in client; return its cancel key. Raises TooManyClients."""
        limits = self.limits
        if len(self._by_process) >= limits.max_clients:
            raise TooManyClients(
                f"too many client connections (max_client_connections = {limits.max_client_connections}"
                f" across {limits.workers} worker(s))"
            )
        self.move(None, session.tenant)
        while True:
            process_id = new_process_id(self._peer_id, self._worker)
            if process_id not in self._by_process:
                break
        self._by_process[process_id] = session
        self.logins += 1
        return process_id, secrets.token_bytes(4)

    def unregister(self, session: S) -> None:
        process_id = session.key[0]
        if self._by_process.get(process_id) is session:
            del self._by_process[process_id]
            self._count_out(session.tenant)
        self._on_change()

    def tenant_share(self) -> int | None:
        """This process's share of the per-tenant connection limit, or None without a limit."""
        limit = self.limits.per_tenant
        return None if limit is None else max(1, limit // max(1, self.live_members))

    def move(self, old: str | None, new: str | None) -> None:
        """Count a client under `new` instead of `old`; TooManyClients if `new` is at its share."""
        share = self.tenant_share()
        if new is not None and new != old and share is not None and self._per_tenant[new] >= share:
            raise TooManyClients(
                f'tenant "{new}" has reached its connection limit ({self.limits.per_tenant}'
                f" across {self.live_members} router process(es), {share} here)"
            )
        self._count_out(old)
        if new is not None:
            self._per_tenant[new] += 1
        if old is not None:
            self._on_change()

    def _count_out(self, tenant: str | None) -> None:
        if tenant is not None:
            self._per_tenant[tenant] -= 1
            if self._per_tenant[tenant] <= 0:
                del self._per_tenant[tenant]

    def count(self, tenant: str) -> int:
        """Clients counted under `tenant` in this process."""
        return self._per_tenant[tenant]

    async def refresh_membership(self) -> None:
        """How many router processes are live (from the catalog's registry of instances)."""
        if self.membership is None:
            return
        try:
            self.live_members = max(1, len(await self.membership.live_instances()))
        except RouterError as exc:
            log.warning("could not count live router instances: %s", exc.message)
