"""The console's commands, carried out: one method per command, dispatched from a table.

Owns what each command reads (through router/console/source.py) and does, and the shape of its
answer (columns and their types). SHOW commands read this router process (with several workers,
the worker the console connection landed on: its `worker` column says which); RELOAD reloads the
whole instance (a worker of several signals its supervisor, which reloads every worker, as
SIGHUP does); PAUSE, RESUME and SUSPEND go through the catalog, so every instance obeys them.

Must not: import the network layer or the composition root, or touch shard servers.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from router.admin.tenant_admin import suspend_tenant, tenant_view
from router.catalog.access import OUTAGES
from router.catalog.cluster import HoldCoordinator, hold_sql
from router.console.source import ClientView, ConsoleSource, ServerView
from router.core.hashing import Ring
from router.errors import ConsoleCommandFailed, RouterError
from router.protocol.pg.console import BOOL, FLOAT8, INT8, TEXT, Command, Kind, Table, Value, table_of

if TYPE_CHECKING:
    from router.core.pool import Pool

log = logging.getLogger(__name__)

# The reason a console PAUSE gives its hold (RESUME releases only holds with this reason: never a
# move's cutover), and how long the hold lasts if nobody RESUMEs the tenant.
PAUSE_REASON: Final = "console PAUSE"
PAUSE_TTL: Final = 7 * 24 * 3600.0
# The least time a PAUSE waits for every instance to acknowledge (running transactions to end).
_PAUSE_MIN_TIMEOUT: Final = 10.0


# --- the commands ---------------------------------------------------------------------------------


class Console:
    """Carries out console commands on `router`. `signal_supervisor` reloads a whole instance of
    several workers (SIGHUP to the supervisor); a test may replace it."""

    def __init__(self, router: ConsoleSource, signal_supervisor: Callable[[], None] | None = None) -> None:
        self._router = router
        self._signal_supervisor = signal_supervisor or _hup_parent
        self._table: dict[Kind, Callable[[Command], Awaitable[Table]]] = {
            Kind.SHOW_POOLS: self.show_pools,
            Kind.SHOW_CLIENTS: self.show_clients,
            Kind.SHOW_SERVERS: self.show_servers,
            Kind.SHOW_TENANTS: self.show_tenants,
            Kind.SHOW_STATS: self.show_stats,
            Kind.SHOW_HOLDS: self.show_holds,
            Kind.RELOAD: self.reload,
            Kind.PAUSE: self.pause,
            Kind.RESUME: self.resume,
            Kind.SUSPEND: self.suspend,
        }

    async def run(self, command: Command) -> Table:
        """The answer to `command`; RouterError (with its SQLSTATE) when it cannot be done."""
        return await self._table[command.kind](command)

    # --- SHOW -------------------------------------------------------------------------------------

    def _role(self, pool: Pool) -> str:
        shard = self._router.topology.shards.get(pool.key.shard)
        if shard is None:
            return "retired"  # draining after a reload removed its server
        primary = shard.primary
        return "primary" if (primary.host, primary.port) == (pool.key.host, pool.key.port) else "replica"

    def _pools(self) -> list[Pool]:
        def order(pool: Pool) -> tuple[str, str, str, int, str]:
            return (pool.key.shard, self._role(pool), pool.key.host, pool.key.port, pool.key.database)

        return sorted(self._router.iter_pools(), key=order)

    async def show_pools(self, _command: Command) -> Table:
        worker = self._router.worker.index
        rows: list[tuple[Value, ...]] = [
            (
                pool.key.shard,
                self._role(pool),
                f"{pool.key.host}:{pool.key.port}",
                pool.key.database,
                pool.key.user,
                pool.active_count,
                pool.idle_count,
                pool.waiting,
                pool.capacity.size,
                worker,
            )
            for pool in self._pools()
        ]
        columns = [
            ("shard", TEXT),
            ("role", TEXT),
            ("server", TEXT),
            ("database", TEXT),
            ("user", TEXT),
            ("active", INT8),
            ("idle", INT8),
            ("waiting", INT8),
            ("size", INT8),
            ("worker", INT8),
        ]
        return table_of("SHOW", columns, rows)

    async def show_clients(self, _command: Command) -> Table:
        worker = self._router.worker.index
        rows: list[tuple[Value, ...]] = []
        for client in sorted(self._router.clients.sessions(), key=lambda c: c.key[0]):
            server = client.server
            rows.append(
                (
                    client.key[0],
                    client.session.user,
                    client.tenant,
                    _client_state(client),
                    client.peer,
                    server.label if server is not None else None,
                    worker,
                )
            )
        columns = [
            ("pid", INT8),
            ("user", TEXT),
            ("tenant", TEXT),
            ("state", TEXT),
            ("address", TEXT),
            ("server", TEXT),
            ("worker", INT8),
        ]
        return table_of("SHOW", columns, rows)

    async def show_servers(self, _command: Command) -> Table:
        worker = self._router.worker.index
        rows: list[tuple[Value, ...]] = []
        for pool in self._pools():
            role = self._role(pool)
            for conn in pool.connections():
                server: ServerView = conn
                client = server.client
                key = getattr(client, "key", None)  # the attached client's (router.net.client)
                client_pid = key[0] if isinstance(key, tuple) else None
                rows.append(
                    (
                        pool.key.shard,
                        role,
                        f"{pool.key.host}:{pool.key.port}",
                        pool.key.database,
                        pool.key.user,
                        server.state.value,
                        server.process_id,
                        client_pid,
                        worker,
                    )
                )
        columns = [
            ("shard", TEXT),
            ("role", TEXT),
            ("server", TEXT),
            ("database", TEXT),
            ("user", TEXT),
            ("state", TEXT),
            ("backend_pid", INT8),
            ("client_pid", INT8),
            ("worker", INT8),
        ]
        return table_of("SHOW", columns, rows)

    async def show_tenants(self, _command: Command) -> Table:
        router = self._router
        topology = router.topology
        ring = Ring.from_topology(topology)
        held = router.holds.held
        rows: list[tuple[Value, ...]] = []
        for tenant_id, tenant in sorted(router.catalog.snapshot().items()):
            view = tenant_view(tenant, topology, ring)
            rows.append(
                (
                    tenant_id,
                    tenant.isolation,
                    tenant.status,
                    view.shard,
                    view.reason,
                    tenant_id in held,
                    router.clients.count(tenant_id),
                )
            )
        columns = [
            ("tenant", TEXT),
            ("isolation", TEXT),
            ("status", TEXT),
            ("shard", TEXT),
            ("placement", TEXT),
            ("held", BOOL),
            ("clients", INT8),
        ]
        return table_of("SHOW", columns, rows)

    async def show_stats(self, _command: Command) -> Table:
        """Per shard and server role, summed over its pools (a shard's databases and roles)."""
        sums: dict[tuple[str, str], list[int]] = {}
        for pool in self._pools():
            row = sums.setdefault((pool.key.shard, self._role(pool)), [0] * 8)
            for i, value in enumerate(
                (
                    pool.transactions,
                    pool.active_count,
                    pool.idle_count,
                    pool.waiting,
                    pool.wait_timeouts,
                    pool.connect_failures,
                    pool.handovers,
                    pool.wipes,
                )
            ):
                row[i] += value
        worker = self._router.worker.index
        rows: list[tuple[Value, ...]] = [(shard, role, *values, worker) for (shard, role), values in sums.items()]
        columns = [
            ("shard", TEXT),
            ("role", TEXT),
            ("transactions", INT8),
            ("active", INT8),
            ("idle", INT8),
            ("waiting", INT8),
            ("wait_timeouts", INT8),
            ("connect_failures", INT8),
            ("handovers", INT8),
            ("wipes", INT8),
            ("worker", INT8),
        ]
        return table_of("SHOW", columns, rows)

    async def show_holds(self, _command: Command) -> Table:
        """The catalog's holds (every instance obeys them) and whether this process holds each."""
        router = self._router
        held = router.holds.held
        rows: list[tuple[Value, ...]] = []
        seen: set[str] = set()
        for record in await self._catalog_holds():
            tenant = record["tenant_id"]
            seen.add(tenant)
            here = held.get(tenant)
            remaining = record["remaining"]
            rows.append(
                (
                    tenant,
                    record["hold_id"],
                    record["reason"],
                    bool(record["expired"]),
                    round(float(remaining), 3) if remaining is not None else None,
                    here is not None,
                    len(here) if here is not None else 0,
                    router.holds.held_ever.get(tenant, 0),
                )
            )
        for tenant in sorted(held.keys() - seen):  # released in the catalog, not yet here
            ever = router.holds.held_ever.get(tenant, 0)
            rows.append((tenant, None, None, None, None, True, len(held[tenant]), ever))
        columns = [
            ("tenant", TEXT),
            ("hold_id", TEXT),
            ("reason", TEXT),
            ("expired", BOOL),
            ("expires_in_seconds", FLOAT8),
            ("held_here", BOOL),
            ("waiting_here", INT8),
            ("times_held_here", INT8),
        ]
        return table_of("SHOW", columns, sorted(rows, key=lambda r: str(r[0])))

    # --- actions ------------------------------------------------------------------------------------

    async def reload(self, _command: Command) -> Table:
        router = self._router
        if router.worker.count > 1:
            self._signal_supervisor()
            result = (
                f"reload signalled to the supervisor (pid {os.getppid()}),"
                f" which reloads all {router.worker.count} workers"
            )
        elif await router.reload():
            result = f"reloaded {router.config.shards_file}"
        else:
            raise ConsoleCommandFailed(
                f"reload of {router.config.shards_file} rejected: the running topology is unchanged",
                hint="the router's log says why; `tenant-router check` shows the same problems",
            )
        return table_of("RELOAD", [("result", TEXT)], [(result,)])

    def _coordinator(self) -> HoldCoordinator:
        catalog = self._router.config.catalog
        return HoldCoordinator(catalog.dsn, catalog.schema)

    async def _catalog_holds(self) -> list[Mapping[str, Any]]:
        coordinator = self._coordinator()
        try:
            async with coordinator.connection() as conn:
                return list(await conn.fetch(hold_sql(self._router.config.catalog.schema).current_holds))
        except OUTAGES as exc:
            raise ConsoleCommandFailed(f"cannot read the catalog's holds: {exc}") from exc

    def _known(self, tenant: str) -> None:
        if tenant not in self._router.catalog.snapshot():
            raise ConsoleCommandFailed(f'tenant "{tenant}" is not in the catalog', hint="SHOW TENANTS lists them")

    async def pause(self, command: Command) -> Table:
        tenant = _tenant(command)
        self._known(tenant)
        timeout = max(_PAUSE_MIN_TIMEOUT, 2 * self._router.config.pool.wait_timeout)
        try:
            hold = await self._coordinator().request_hold(tenant, PAUSE_REASON, timeout=timeout, ttl=PAUSE_TTL)
        except RouterError as exc:
            raise ConsoleCommandFailed(f'tenant "{tenant}" was not paused: {exc.message}', hint=exc.hint) from exc
        except OUTAGES as exc:
            raise ConsoleCommandFailed(f'tenant "{tenant}" was not paused: the catalog is unreachable ({exc})') from exc
        wait = self._router.config.pool.wait_timeout
        result = (
            f"paused on {len(hold.acknowledged_by)} router process(es): new transactions wait (each up to"
            f" pool.wait_timeout, {wait:g}s) until RESUME; expires {hold.expires_at.isoformat(timespec='seconds')}"
        )
        columns = [("tenant", TEXT), ("hold_id", TEXT), ("result", TEXT)]
        return table_of("PAUSE", columns, [(tenant, hold.hold_id, result)])

    async def resume(self, command: Command) -> Table:
        tenant = _tenant(command)
        records = [r for r in await self._catalog_holds() if r["tenant_id"] == tenant]
        if not records:
            raise ConsoleCommandFailed(f'tenant "{tenant}" is not paused: the catalog has no hold on it')
        record = records[0]
        if record["reason"] != PAUSE_REASON:
            raise ConsoleCommandFailed(
                f'tenant "{tenant}" is held by "{record["reason"]}", not by a console PAUSE: not released',
                hint="a move's cutover releases its own hold; `tenant-router rebalance status` shows moves",
            )
        try:
            alive = await self._coordinator().release_hold(record["hold_id"])
        except OUTAGES as exc:
            raise ConsoleCommandFailed(f'tenant "{tenant}" was not resumed: catalog unreachable ({exc})') from exc
        result = "resumed: its waiting transactions run now" if alive else "resumed: its hold had expired already"
        return table_of("RESUME", [("tenant", TEXT), ("result", TEXT)], [(tenant, result)])

    async def suspend(self, command: Command) -> Table:
        tenant = _tenant(command)
        router = self._router
        try:
            view = await suspend_tenant(router.config, router.topology, tenant)
        except OUTAGES as exc:
            raise ConsoleCommandFailed(f'tenant "{tenant}" was not suspended: catalog unreachable ({exc})') from exc
        result = "suspended: its new connections are refused (`tenant-router tenants resume` undoes it)"
        return table_of(
            "SUSPEND", [("tenant", TEXT), ("shard", TEXT), ("result", TEXT)], [(tenant, view.shard, result)]
        )


def _tenant(command: Command) -> str:
    assert command.tenant is not None  # parse_command gives these commands their tenant
    return command.tenant


def _client_state(client: ClientView) -> str:
    if client.server is not None:
        return "active"
    if client.lease.waiting:
        return "waiting"
    phase = client.session.phase.value
    return "console" if phase == "login" else "idle" if phase == "routing" else phase


def _hup_parent() -> None:
    os.kill(os.getppid(), signal.SIGHUP)
