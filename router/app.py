"""The composition root: builds topology, ring, catalog cache, pools, the listener, the janitor and
the HTTP endpoint, and implements the `RouterContext` that client sessions consult.

It decides where a tenant's transactions go (catalog -> placement -> pool) and owns the registry
of logged-in clients (for cancels and the client limit). It does not speak any wire protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from router.catalog.cache import CatalogCache
from router.catalog.store import Tenant
from router.config import RouterConfig, UserConfig
from router.core.cancel_keys import new_process_id, owner_of
from router.core.hashing import Ring
from router.core.pool import Pool, PoolKey, PoolSettings, ShardCapacity
from router.core.replicas import LagBounds, ReplicaMember, choose_replica
from router.core.routing import place_tenant
from router.core.target import Entry, Target
from router.core.topology import ServerAddress, Shard, Topology, diff_topologies, load_both
from router.errors import (
    BackendUnavailable,
    ConfigError,
    RouterError,
    TenantHeld,
    TenantSuspended,
    TooManyClients,
    UnknownTenant,
)
from router.isolation import database_name, schema_name, sign_tenant, tenant_role, tenant_role_password
from router.net.client import ClientSession
from router.net.role_guard import RoleGuard
from router.net.server import ServerConnection, send_cancel, send_cancel_unix
from router.ops.health import HealthMonitor, ServerKey
from router.ops.janitor import Janitor
from router.protocol.pg.auth import ScramVerifier
from router.sql.read_statements import ReadClassifier

log = logging.getLogger(__name__)

LOGIN_TIMEOUT = 30.0
# A WAL position no replica has replayed: reads that must see a commit not located yet.
_UNKNOWN_POSITION = (1 << 64) - 1


@dataclass(frozen=True)
class WorkerIdentity:
    """Which worker process this is, of how many, and where the workers' private sockets live."""

    index: int = 0
    count: int = 1
    run_dir: Path | None = None

    def cancel_socket(self, index: int) -> Path | None:
        return self.run_dir / f"worker-{index}.cancel" if self.run_dir is not None else None

    def metrics_socket(self, index: int) -> Path | None:
        return self.run_dir / f"worker-{index}.metrics" if self.run_dir is not None else None

    def share(self, total: int) -> int:
        """This worker's part of an instance-wide total (at least 1)."""
        part, extra = divmod(total, self.count)
        return max(1, part + (1 if self.index < extra else 0))


class Router:
    """Everything a running router instance holds. Implements router.net.context.RouterContext."""

    def __init__(self, config: RouterConfig, topology: Topology, worker: WorkerIdentity | None = None) -> None:
        self.config = config
        self.worker = worker or WorkerIdentity()
        self.peer_id = config.cluster.peer_id
        self.max_clients = self.worker.share(config.pool.max_client_connections)
        self.topology = topology
        self.ring = Ring.from_topology(topology)
        self.auth_method: str = config.auth.method
        self.tenant_resolution: tuple[str, ...] = tuple(config.tenant.resolution)
        self.tenant_separator = config.tenant.separator
        self.tenant_setting: str = config.tenant.setting
        self.transaction_pooling = config.pool.mode == "transaction"
        self.login_timeout = LOGIN_TIMEOUT
        self.refused_state: frozenset[str] = frozenset(config.pool.refuse)
        self.exact_handover = config.pool.handover == "exact"
        self.catalog = CatalogCache(
            config.catalog.dsn,
            config.catalog.schema,
            config.catalog.refresh_interval,
            on_change=self._tenant_changed,
            connect_timeout=config.pool.connect_timeout,
        )
        self.pools: dict[PoolKey, Pool] = {}
        # Repairs the roles the router logs in as when a tenant's session changed them.
        self.role_guard = RoleGuard(config.admin, config.pool.connect_timeout)
        self._pool_settings = PoolSettings(
            size=self.worker.share(config.pool.size),
            wait_timeout=config.pool.wait_timeout,
            connect_timeout=config.pool.connect_timeout,
            idle_timeout=config.pool.idle_timeout,
            lifetime=config.pool.lifetime,
        )
        self.targets: dict[str, Target] = {}
        self._capacities: dict[tuple[str, int], ShardCapacity] = {}
        # Read/write splitting over replicas (router.core.replicas), with lag and health from the monitor.
        self.read_mode: str = config.reads.mode
        self.read_classifier = ReadClassifier(config.reads.volatile_functions)
        self.read_your_writes: str = config.reads.read_your_writes
        self.read_bounds = LagBounds(config.reads.max_lag_bytes, config.reads.max_lag_seconds)
        self._tenant_positions: dict[str, int] = {}
        # Tenants with a write just committed whose WAL position is still being read: their reads
        # go to the primary meanwhile (read-your-writes per tenant).
        self._tenant_pending: Counter[str] = Counter()
        self.health = HealthMonitor(topology, config.server, config.health, on_down=self._server_down)
        self._clients: dict[int, ClientSession] = {}
        self._verifiers: dict[str, ScramVerifier] = {}
        self.errors: Counter[str] = Counter()
        self._background: set[asyncio.Task[None]] = set()  # cancels waiting for a set-up to finish
        self.connections_total = 0
        # Per-tenant connection limits: the live router processes the global limit is shared by.
        self.live_members = 1
        self.registry: Any = None
        self._tenant_clients: Counter[str] = Counter()
        # Tenants held by a coordinator (rebalance cutover, migration): their new transactions wait.
        self.held: dict[str, list[HoldTicket]] = {}
        self._reload_lock = asyncio.Lock()
        self._reload_task: asyncio.Task[bool] | None = None

    # --- RouterContext ----------------------------------------------------------------------------

    def user(self, name: str) -> UserConfig | None:
        return self.config.auth.user(name)

    def scram_verifier(self, user: UserConfig) -> ScramVerifier:
        verifier = self._verifiers.get(user.name)
        if verifier is None:
            assert user.password is not None
            verifier = self._verifiers[user.name] = ScramVerifier(user.password)
        return verifier

    def resolve_target(self, tenant: str) -> Target:
        target = self.targets.get(tenant)
        if target is not None:
            return target
        record = self.catalog.get(tenant)
        if record is None:
            raise UnknownTenant(
                f'unknown tenant "{tenant}"',
                hint=f"register it with: tenant-router tenants add {tenant}",
            )
        if record.status != "active":
            raise TenantSuspended(f'tenant "{tenant}" is suspended', hint="an operator can resume it")
        placement = place_tenant(tenant, record.shard, self.topology, self.ring)
        shard = self.topology.shards.get(placement.shard)
        if shard is None:
            raise BackendUnavailable(
                f'tenant "{tenant}" is pinned to shard "{placement.shard}", which shards.yaml does not define'
            )
        target = self._target_for(record, shard)
        self.targets[tenant] = target
        return target

    def _target_for(self, record: Tenant, shard: Shard) -> Target:
        own_database = database_name(record.id) if record.isolation == "database" else None
        setting, secret = self.config.tenant.setting, self.config.tenant.context_secret
        context = {setting: record.id}  # what applications read with current_setting()
        user, password = self.config.server.user, self.config.server.password
        entry = None
        if secret is not None:
            # Unforgeable context: a shared tenant's server sessions enter it with its signature
            # (router/admin/rls.py); schema/database tenants act as their own role, which can reach
            # nothing of others.
            if record.isolation == "shared":
                entry = Entry(record.id, sign_tenant(secret, record.id))
                # enter_tenant sets it too: left out of the settings, a switch between tenants
                # with the same settings sends no settings statement at all.
                del context[setting]
            else:
                user, password = tenant_role(record.id), tenant_role_password(secret, record.id)
        if record.isolation == "schema":
            context["search_path"] = schema_name(record.id)
        replicas = tuple(
            ReplicaMember(
                ServerKey(shard.name, replica.host, replica.port, "replica"),
                replica.weight,
                self._pool(shard.name, replica, own_database or replica.dbname, user, password),
            )
            for replica in shard.replicas
        )
        primary = self._pool(shard.name, shard.primary, own_database or shard.primary.dbname, user, password)
        return Target(record.id, shard.name, primary, context, replicas, entry)

    def default_target(self) -> Target:
        shard = next(iter(self.topology.shards.values()))
        pool = self._pool(
            shard.name, shard.primary, shard.primary.dbname, self.config.server.user, self.config.server.password
        )
        # With a context secret, a session without tenant leaves whatever one its server had entered.
        entry = Entry("") if self.config.tenant.context_secret is not None else None
        return Target("", shard.name, pool, {}, entry=entry)

    def _pool(self, shard: str, server: ServerAddress, database: str, user: str, password: str | None) -> Pool:
        key = PoolKey(shard, server.host, server.port, database, user)
        pool = self.pools.get(key)
        if pool is None:
            # `pool.size` bounds each server, shared by all the databases and roles on it.
            capacity = self._capacities.get((server.host, server.port))
            if capacity is None:
                capacity = self._capacities[(server.host, server.port)] = ShardCapacity(self._pool_settings.size)
            # With a context secret, the router's own role serves every shared tenant: its session
            # defaults are checked on every new connection, as a tenant may have set them.
            hardened = self.config.tenant.context_secret is not None and user == self.config.server.user
            guard = self.role_guard.guard(password, check_defaults=hardened)
            pool = self.pools[key] = Pool(key, password, self._pool_settings, capacity, guard=guard)
        return pool

    # --- replicas ----------------------------------------------------------------------------------

    def read_pool(self, target: Target, min_lsn: int | None) -> Pool | None:
        member = choose_replica(target.replicas, self.health, self.read_bounds, min_lsn)
        return member.pool if member is not None else None

    def replica_failed(self, pool: Pool, exc: RouterError) -> None:
        key = ServerKey(pool.key.shard, pool.key.host, pool.key.port, "replica")
        self.health.report_failure(key, exc.message)

    def note_commit(self, tenant: str, lsn: int) -> None:
        if self.read_your_writes == "tenant" and lsn > self._tenant_positions.get(tenant, -1):
            self._tenant_positions[tenant] = lsn

    def commit_pending(self, tenant: str) -> None:
        if self.read_your_writes == "tenant":
            self._tenant_pending[tenant] += 1

    def commit_settled(self, tenant: str) -> None:
        if self._tenant_pending[tenant] <= 1:
            del self._tenant_pending[tenant]
        else:
            self._tenant_pending[tenant] -= 1

    def tenant_commit_position(self, tenant: str) -> int | None:
        if tenant in self._tenant_pending:
            return _UNKNOWN_POSITION
        return self._tenant_positions.get(tenant)

    def _server_down(self, key: ServerKey, reason: str) -> None:
        """A server failed its health check: its idle connections are dead weight, drop them."""
        for pool in self.iter_pools():
            if pool.key.host == key.host and pool.key.port == key.port:
                pool.close_idle(f"server down: {reason}")

    # --- live reload --------------------------------------------------------------------------------

    def apply_topology(self, topology: Topology) -> None:
        """Switch to a new topology without dropping clients: new servers get pools on first use,
        removed servers' pools drain (transactions in flight finish, then their connections close),
        and weights and replicas take effect for the next transaction."""
        self.topology = topology
        self.ring = Ring.from_topology(topology)
        self.targets.clear()
        live = {
            (name, server.host, server.port)
            for name, shard in topology.shards.items()
            for server in (shard.primary, *shard.replicas)
        }
        for key, pool in list(self.pools.items()):
            if (key.shard, key.host, key.port) not in live:
                del self.pools[key]
                pool.close()
                log.info("draining %s: no longer in the topology", key.label)
        self.health.set_topology(topology)

    def request_reload(self) -> None:
        """Reload in the background (signal handlers and the file watcher cannot wait for it); the
        task is kept so it is not collected half-way."""
        self._reload_task = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """Re-read shards.yaml and apply it (SIGHUP, `tenant-router reload`, the file watcher).

        An invalid file is rejected with the messages of `tenant-router check`, and so is one that
        removes a shard still holding tenants; the running topology then stays as it was. Tenants
        that would hash to another shard are first pinned to their old shard in the catalog (their
        data has not moved), so a reload never sends a tenant to a shard that lacks its data."""
        from router.ops.reload import moved_tenants, pin_moved_tenants, reload_problems, summarize

        async with self._reload_lock:
            try:
                _config, topology = load_both(self.config.path)
            except ConfigError as exc:
                log.error("reload rejected, the running topology is unchanged:\n%s", exc)
                return False
            tenants = [(t.id, t.shard) for t in self.catalog.snapshot().values()]
            problems = reload_problems(self.topology, topology, tenants)
            if problems:
                log.error("reload rejected, the running topology is unchanged:\n%s", "\n".join(problems))
                return False
            moves = moved_tenants(tenants, self.topology, topology)
            if moves:
                try:
                    await pin_moved_tenants(self.config, moves)
                except RouterError as exc:
                    log.error("reload rejected: could not pin the tenants it would move: %s", exc.message)
                    return False
                self.catalog.pin_locally({move.tenant: move.old_shard for move in moves})
            old = self.topology
            self.apply_topology(topology)
            log.info("%s", summarize(diff_topologies(old, topology), moves, old=old, new=topology))
            return True

    def _tenant_changed(self, tenant: str) -> None:
        self.targets.pop(tenant, None)
        self._tenant_positions.pop(tenant, None)

    def register_client(self, session: ClientSession) -> tuple[int, bytes]:
        if len(self._clients) >= self.max_clients:
            raise TooManyClients(
                f"too many client connections (max_client_connections = {self.config.pool.max_client_connections}"
                f" across {self.worker.count} worker(s))"
            )
        self.move_client(None, session.tenant)
        while True:
            process_id = new_process_id(self.peer_id, self.worker.index)
            if process_id not in self._clients:
                break
        self._clients[process_id] = session
        self.connections_total += 1
        return process_id, secrets.token_bytes(4)

    def unregister_client(self, session: ClientSession) -> None:
        if self._clients.get(session.key[0]) is session:
            del self._clients[session.key[0]]
            self._count_out(session.tenant)

    def tenant_share(self) -> int | None:
        """This process's share of the per-tenant connection limit, or None without a limit."""
        limit = self.config.tenant.max_connections
        return None if limit is None else max(1, limit // max(1, self.live_members))

    def move_client(self, old: str | None, new: str | None) -> None:
        """Count a client under `new` instead of `old`; TooManyClients if `new` is at its share."""
        share = self.tenant_share()
        if new is not None and new != old and share is not None and self._tenant_clients[new] >= share:
            raise TooManyClients(
                f'tenant "{new}" has reached its connection limit ({self.config.tenant.max_connections}'
                f" across {self.live_members} router process(es), {share} here)"
            )
        self._count_out(old)
        if new is not None:
            self._tenant_clients[new] += 1

    def _count_out(self, tenant: str | None) -> None:
        if tenant is not None:
            self._tenant_clients[tenant] -= 1
            if self._tenant_clients[tenant] <= 0:
                del self._tenant_clients[tenant]

    async def refresh_membership(self) -> None:
        """How many router processes are live (from the catalog's registry)."""
        if self.registry is None:
            return
        try:
            self.live_members = max(1, len(await self.registry.live_instances()))
        except RouterError as exc:
            log.warning("could not count live router instances: %s", exc.message)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    async def cancel(self, process_id: int, secret_key: bytes) -> None:
        owner = owner_of(process_id)
        timeout = self.config.pool.connect_timeout
        if owner.peer_id != self.peer_id:
            peer = next((p for p in self.config.cluster.peers if p.id == owner.peer_id), None)
            if peer is None:
                log.info("cancel request for unknown peer %d ignored", owner.peer_id)
                return
            await send_cancel(peer.host, peer.port, process_id, secret_key, timeout)
            return
        if owner.worker != self.worker.index:
            path = self.worker.cancel_socket(owner.worker)
            if path is None or owner.worker >= self.worker.count:
                log.info("cancel request for unknown worker %d ignored", owner.worker)
                return
            await send_cancel_unix(str(path), process_id, secret_key, timeout)
            return
        session = self._clients.get(process_id)
        if session is None or not secrets.compare_digest(session.key[1], secret_key):
            log.info("cancel request for an unknown client key ignored")
            return
        server, pool = session.server, session.pool
        if server is None or pool is None:
            return  # nothing running: nothing to cancel
        if server.plan.setting_up():
            # Never the router's own set-up statements (leaving and entering the tenant, the
            # settings): a client that could cancel its entry would run on without its tenant, or,
            # had its leave been cancelled too, as the tenant the session had before. Once their
            # responses are in, the server has finished them: the cancel goes then, to the client's
            # own statement. Rare (a cancel within the microseconds of a set-up): a short poll, in
            # the background, so the cancel connection is answered at once as PostgreSQL answers it.
            task = asyncio.get_running_loop().create_task(self._cancel_after_set_up(session, server, pool))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        await self._send_cancel(server, pool)

    async def _cancel_after_set_up(self, session: ClientSession, server: ServerConnection, pool: Pool) -> None:
        deadline = asyncio.get_running_loop().time() + self.config.pool.connect_timeout
        while server.plan.setting_up():
            if asyncio.get_running_loop().time() > deadline or session.server is not server:
                log.info("cancel request dropped: the server session was still being set up")
                return
            await asyncio.sleep(0.001)  # elapsed time: set-up statements take microseconds
        await self._send_cancel(server, pool)

    async def _send_cancel(self, server: ServerConnection, pool: Pool) -> None:
        await send_cancel(
            pool.key.host, pool.key.port, server.process_id, server.secret_key, self.config.pool.connect_timeout
        )

    def end_session(self, server: ServerConnection, pool: Pool, reset: bool) -> None:
        if self.transaction_pooling and not reset:
            pool.release(server)  # wiped ahead of another client's first transaction if need be
            return
        server.detach()
        asyncio.get_running_loop().create_task(_reset_and_release(server, pool))

    def close_idle_connections(self, host: str, port: int, databases: tuple[str, ...]) -> None:
        for pool in self.iter_pools():
            key = pool.key
            if key.host == host and key.port == port and key.database in databases:
                closed = pool.close_idle()
                log.info("closed %d idle connections to %s before a database-level command", closed, key.label)

    # --- holds (see router.catalog.cluster) ----------------------------------------------------------------

    async def hold_tenant(self, tenant: str) -> None:
        """Stop starting transactions for `tenant` and wait until those running have finished: then
        this worker can acknowledge the hold."""
        self.held.setdefault(tenant, [])
        deadline = asyncio.get_running_loop().time() + self.config.pool.wait_timeout
        while any(s.tenant == tenant and s.server is not None for s in list(self._clients.values())):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"transactions of tenant {tenant} did not finish in time")
            await asyncio.sleep(0.01)
        log.info("tenant %s held: new transactions wait", tenant)

    async def release_tenant(self, tenant: str) -> None:
        tickets = self.held.pop(tenant, [])
        log.info("tenant %s released: %d waiting session(s) resume", tenant, len(tickets))
        for ticket in tickets:
            ticket.resume()

    def wait_for_release(
        self, tenant: str, resume: Callable[[], None], fail: Callable[[RouterError], None]
    ) -> HoldTicket | None:
        """If `tenant` is held, queue `resume` for its release (failing after the wait timeout)."""
        tickets = self.held.get(tenant)
        if tickets is None:
            return None
        ticket = HoldTicket(resume, fail)
        ticket.timer = asyncio.get_running_loop().call_later(
            self.config.pool.wait_timeout,
            ticket.expire,
            TenantHeld(f'tenant "{tenant}" is being moved and did not become available in time', hint="retry"),
        )
        tickets.append(ticket)
        return ticket

    def count_error(self, sqlstate: str) -> None:
        self.errors[sqlstate] += 1

    def iter_pools(self) -> Iterator[Pool]:
        return iter(list(self.pools.values()))


class HoldTicket:
    """A session waiting for its tenant's hold to be released."""

    __slots__ = ("_fail", "_resume", "done", "timer")

    def __init__(self, resume: Callable[[], None], fail: Callable[[RouterError], None]) -> None:
        self._resume = resume
        self._fail = fail
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def resume(self) -> None:
        if not self.done:
            self.cancel()
            self._resume()

    def expire(self, exc: RouterError) -> None:
        if not self.done:
            self.cancel()
            self._fail(exc)

    def cancel(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()


async def _reset_and_release(server: ServerConnection, pool: Pool) -> None:
    """Session pooling, or a client that pinned its session: wipe the session (DISCARD ALL)
    before another client gets it."""
    try:
        _reported, error = await server.run_internal("DISCARD ALL")
    except Exception:
        pool.discard(server, "reset failed")
        return
    if error is not None:
        pool.discard(server, "reset failed")
        return
    server.session.wiped()
    pool.release(server)


@dataclass
class RunningRouter:
    """A started router: its bound addresses and how to stop it."""

    router: Router
    port: int
    http_port: int
    _servers: list[asyncio.Server] = field(default_factory=list)
    _janitor: Janitor | None = None
    _cluster: list[Any] = field(default_factory=list)
    _watcher: Any = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for session in list(self.router._clients.values()):
            session.close()
        for member in self._cluster:  # deregister: from now on this instance need not acknowledge
            with contextlib.suppress(Exception):
                await member.stop()
        if self._janitor is not None:
            await self._janitor.stop()
        if self._watcher is not None:
            await self._watcher.stop()
        await self.router.health.stop()
        for pool in self.router.iter_pools():
            pool.close_all_now()
        await self.router.catalog.stop()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def start(config: RouterConfig, topology: Topology, worker: WorkerIdentity | None = None) -> RunningRouter:
    """Start serving: catalog first (a router without its catalog cannot route), then listeners.
    A worker of several shares the listen port (SO_REUSEPORT) and also listens on its private
    sockets: cancels forwarded by its siblings, and metrics for the supervisor."""
    from router.ops.http import start_http

    router = Router(config, topology, worker)
    identity = router.worker
    await router.catalog.start()
    loop = asyncio.get_running_loop()

    def new_session() -> asyncio.Protocol:
        # ClientSession implements the protocol without subclassing it (it is compiled: router/native.py).
        return cast(asyncio.Protocol, ClientSession(router))

    listener = await loop.create_server(
        new_session,
        config.listen.host,
        config.listen.port,
        backlog=4096,
        reuse_address=True,
        reuse_port=identity.count > 1 or None,
    )
    port = listener.sockets[0].getsockname()[1]
    servers = [listener]
    cancel_path = identity.cancel_socket(identity.index)
    if cancel_path is not None:
        servers.append(await loop.create_unix_server(new_session, str(cancel_path)))
    http_port = 0
    metrics_path = identity.metrics_socket(identity.index)
    if metrics_path is not None:
        servers.append(await start_http(router, unix_path=str(metrics_path)))
    elif config.http.enabled:
        http_server = await start_http(router, config.http.host, config.http.port)
        servers.append(http_server)
        http_port = http_server.sockets[0].getsockname()[1]
    janitor = Janitor(router)
    janitor.start()
    await router.health.start()
    watcher = None
    if config.reload.watch:
        from router.ops.reload import FileWatcher

        watcher = FileWatcher([config.shards_file], config.reload.watch_interval, router.request_reload)
        await watcher.start()
    cluster = await _join_cluster(router, port)
    warn_if_unsigned(router)
    log.info(
        "tenant-router %slistening on %s:%s (%s pooling, %d shards, %d tenants in the catalog)",
        f"worker {identity.index}/{identity.count} " if identity.count > 1 else "",
        config.listen.host,
        port,
        config.pool.mode,
        len(topology.shards),
        len(router.catalog),
    )
    return RunningRouter(router, port, http_port, servers, janitor, cluster, watcher)


async def _join_cluster(router: Router, port: int) -> list[Any]:
    """Register this worker among the router instances and take part in holds. Each worker is its
    own participant, so a hold is acknowledged only once every process has drained the tenant.
    Without it (catalog not migrated, unreachable) the router still serves, and holds simply cannot
    be acknowledged, which makes cutovers abort: the safe side."""
    from router.catalog.cluster import HoldParticipant, InstanceRegistry, default_instance_id

    config, identity = router.config, router.worker
    instance_id = default_instance_id(None, port)
    if identity.count > 1:
        instance_id += f"/w{identity.index}"
    registry = InstanceRegistry(config.catalog.dsn, config.catalog.schema, instance_id, workers=identity.count)
    participant = HoldParticipant(
        config.catalog.dsn, config.catalog.schema, instance_id, router.hold_tenant, router.release_tenant
    )
    try:
        await registry.start()
        await participant.start()
    except RouterError as exc:
        log.error("not registered among router instances (%s); holds cannot be acknowledged", exc.message)
        return []
    router.registry = registry
    await router.refresh_membership()
    return [participant, registry]


async def serve(config: RouterConfig, topology: Topology, worker: WorkerIdentity | None = None) -> None:
    """Run until SIGINT/SIGTERM."""
    running = await start(config, topology, worker)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with answering_reloads(running, worker):
        await stop.wait()
    log.info("shutting down")
    await running.stop()


@contextlib.contextmanager
def answering_reloads(running: RunningRouter, worker: WorkerIdentity | None = None) -> Iterator[None]:
    """While inside: SIGHUP reloads shards.yaml, and a lone process (not one worker of several,
    whose supervisor hears for them) records its pid where `tenant-router reload` looks for it.
    For `serve` and for `tenant-router demo`, which runs the router in its own process."""
    from router.ops.reload import pid_file_path, remove_pid_file, write_pid_file

    loop = asyncio.get_running_loop()
    handling = True
    try:
        loop.add_signal_handler(signal.SIGHUP, running.router.request_reload)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here (not the main thread)
        handling = False
    else:
        # A worker starts with SIGHUP blocked (router.supervisor): one sent meanwhile reloads now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    config = running.router.config
    pid_file = pid_file_path(config) if handling and (worker is None or worker.count == 1) else None
    if pid_file is not None:
        write_pid_file(pid_file)
    try:
        yield
    finally:
        if pid_file is not None:
            remove_pid_file(pid_file)
        if handling:
            loop.remove_signal_handler(signal.SIGHUP)


def warn_if_unsigned(router: Router) -> None:
    """Say loudly at start (before "listening") when shared tenants are served with an unsigned
    tenant context: any of their clients can set the tenant setting to another tenant's id and
    read its rows."""
    config = router.config
    if config.tenant.context_secret is not None:
        return
    shared = sorted(t.id for t in router.catalog.snapshot().values() if t.isolation == "shared")
    if not shared and config.tenant.default_isolation != "shared":
        return
    which = f"{len(shared)} shared tenant(s) in the catalog" if shared else "shared tenants (the default isolation)"
    log.warning(
        "UNSAFE for untrusted SQL: tenant.context_secret is not set, so %s get an unsigned %s that any"
        " client can overwrite (set_config) to read other tenants' rows; set tenant.context_secret and"
        " run `tenant-router rls enable TABLE` (see the README, Isolation models)",
        which,
        config.tenant.setting,
    )
