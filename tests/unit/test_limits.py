"""The logged-in clients of one process without sockets: admission under the client limit, cancel
keys, the per-tenant limit shared among live router processes, and the events holds listen to."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from router.core.cancel_keys import owner_of
from router.core.limits import ClientLimits, Clients
from router.errors import RouterError, TooManyClients


@dataclass
class Session:
    tenant: str | None
    server: object | None = None
    key: tuple[int, bytes] = field(default=(0, b""))


class Members:
    def __init__(self, count: int) -> None:
        self.count = count
        self.error: RouterError | None = None

    async def live_instances(self) -> list[str]:
        if self.error is not None:
            raise self.error
        return [f"router-{i}" for i in range(self.count)]


def make(max_clients: int = 10, per_tenant: int | None = None) -> tuple[Clients[Session], list[str]]:
    events: list[str] = []
    limits = ClientLimits(max_clients, max_clients * 2, 2, per_tenant)
    return Clients(limits, peer_id=3, worker=1, on_change=lambda: events.append("changed")), events


def admitted(clients: Clients[Session], tenant: str | None) -> Session:
    session = Session(tenant)
    session.key = clients.register(session)
    return session


def test_a_client_gets_a_cancel_key_of_this_process_and_is_found_by_it() -> None:
    clients, _ = make()
    session = admitted(clients, "acme")
    process_id, secret = session.key
    assert (owner_of(process_id).peer_id, owner_of(process_id).worker) == (3, 1)
    assert len(secret) == 4
    assert clients.get(process_id) is session and clients.sessions() == [session]
    assert (len(clients), clients.logins, clients.count("acme")) == (1, 1, 1)


def test_the_client_limit_refuses_the_client_past_this_worker_s_share() -> None:
    clients, _ = make(max_clients=2)
    admitted(clients, "acme")
    admitted(clients, None)
    with pytest.raises(TooManyClients) as refused:
        admitted(clients, "acme")
    assert refused.value.message == "too many client connections (max_client_connections = 4 across 2 worker(s))"
    assert (len(clients), clients.logins, clients.count("acme")) == (2, 2, 1)


def test_leaving_frees_the_place_and_the_tenant_s_count_and_tells_the_holds() -> None:
    clients, events = make(max_clients=1)
    session = admitted(clients, "acme")
    clients.unregister(session)
    assert (len(clients), clients.count("acme"), events) == (0, 0, ["changed"])
    clients.unregister(session)  # twice (closing twice): counted out once
    assert clients.count("acme") == 0
    admitted(clients, "acme")
    assert clients.logins == 2


def test_the_per_tenant_limit_is_shared_among_live_router_processes() -> None:
    clients, _ = make(per_tenant=4)
    assert clients.tenant_share() == 4
    clients.live_members = 3
    assert clients.tenant_share() == 1  # at least one each
    admitted(clients, "acme")
    with pytest.raises(TooManyClients) as refused:
        admitted(clients, "acme")
    assert (
        refused.value.message
        == 'tenant "acme" has reached its connection limit (4 across 3 router process(es), 1 here)'
    )
    admitted(clients, "globex")  # another tenant's share is its own
    assert make()[0].tenant_share() is None


def test_switching_tenant_moves_the_count_and_is_refused_at_the_new_tenant_s_limit() -> None:
    clients, events = make(per_tenant=1)
    acme = admitted(clients, "acme")
    admitted(clients, "globex")
    with pytest.raises(TooManyClients):
        clients.move("acme", "globex")
    assert (clients.count("acme"), clients.count("globex")) == (1, 1)
    clients.move("acme", "acme")  # the same tenant again: never refused
    clients.move("acme", "initech")
    acme.tenant = "initech"
    assert (clients.count("acme"), clients.count("initech")) == (0, 1)
    assert events == ["changed", "changed"]  # each move away from a tenant may end its transactions


def test_busy_is_whether_a_client_of_the_tenant_has_a_server() -> None:
    clients, _ = make()
    acme = admitted(clients, "acme")
    admitted(clients, "globex").server = object()
    assert not clients.busy("acme") and clients.busy("globex")
    acme.server = object()
    assert clients.busy("acme")


async def test_membership_counts_live_processes_and_keeps_the_last_count_on_errors() -> None:
    clients, _ = make()
    await clients.refresh_membership()  # no registry: stays 1
    assert clients.live_members == 1
    members = Members(3)
    clients.membership = members
    await clients.refresh_membership()
    assert clients.live_members == 3
    members.count = 0
    await clients.refresh_membership()
    assert clients.live_members == 1  # never below this process
    members.count, members.error = 5, RouterError("catalog unreachable")
    await clients.refresh_membership()
    assert clients.live_members == 1
