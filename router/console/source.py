"""What the admin console reads of a running router: `ConsoleSource`, which the composition root
(router.app.Router) satisfies, and the views of pools, clients, servers, the catalog and holds it
goes through.

Must not: import the network layer or the composition root (these Protocols are how the console
avoids them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from router.catalog.store import Tenant
    from router.config import RouterConfig
    from router.core.pool import Pool
    from router.core.topology import Topology


class _State(Protocol):
    @property
    def value(self) -> str: ...


class ServerView(Protocol):
    @property
    def label(self) -> str: ...

    @property
    def process_id(self) -> int: ...

    @property
    def state(self) -> _State: ...

    @property
    def client(self) -> object | None: ...


class _SessionView(Protocol):
    @property
    def user(self) -> str | None: ...

    @property
    def phase(self) -> _State: ...


class _LeaseView(Protocol):
    @property
    def waiting(self) -> bool: ...


class ClientView(Protocol):
    @property
    def key(self) -> tuple[int, bytes]: ...

    @property
    def peer(self) -> str: ...

    @property
    def tenant(self) -> str | None: ...

    @property
    def server(self) -> ServerView | None: ...

    @property
    def session(self) -> _SessionView: ...

    @property
    def lease(self) -> _LeaseView: ...


class _Clients(Protocol):
    def sessions(self) -> Sequence[ClientView]: ...

    def count(self, tenant: str) -> int: ...


class _Catalog(Protocol):
    @property
    def connected(self) -> bool: ...

    def snapshot(self) -> dict[str, Tenant]: ...


class _Holds(Protocol):
    @property
    def held(self) -> Mapping[str, Sized]: ...

    @property
    def held_ever(self) -> Mapping[str, int]: ...


class _Worker(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def count(self) -> int: ...


class ConsoleSource(Protocol):
    """What the console reads of a running router (router.app.Router)."""

    @property
    def config(self) -> RouterConfig: ...

    @property
    def worker(self) -> _Worker: ...

    @property
    def topology(self) -> Topology: ...

    @property
    def catalog(self) -> _Catalog: ...

    @property
    def holds(self) -> _Holds: ...

    @property
    def clients(self) -> _Clients: ...

    def iter_pools(self) -> Iterator[Pool]: ...

    async def reload(self) -> bool: ...
