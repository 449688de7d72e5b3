"""The composition root: builds the topology's parts, the catalog cache, the pools, the listener, the
janitor and the HTTP endpoint, and connects them.

The decisions live in the parts: tenant -> target (router.core.targets), the pools
(router.core.registry, each opening PostgreSQL connections through router.net.role_guard), replica
choice and read-your-writes (router.core.replicas, router.core.read_your_writes), holds
(router.core.holds) and the client limits (router.core.limits). `Router` holds them and implements
the `RouterContext` that client sessions consult by delegating to them; what is left here is
PostgreSQL's share of a session's end (the wipe before a pooled session is reused, cancels); a
reload is router.ops.live_reload's. Only the commands, the demo and the test harness import this module.
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
from typing import TYPE_CHECKING, Final, Protocol, cast

from router.catalog.cache import CatalogCache
from router.config import RouterConfig, UserConfig
from router.console import Console
from router.core.cancel_keys import owner_of
from router.core.holds import Holds, HoldTicket
from router.core.limits import ClientLimits, Clients
from router.core.pool import Pool, PoolSettings
from router.core.read_your_writes import CommitPositions
from router.core.registry import PoolRegistry
from router.core.replicas import LagBounds, ReadRouting
from router.core.target import Target
from router.core.targets import TargetRules, Targets
from router.core.topology import ServerKey, Topology
from router.errors import RouterError
from router.net.client import ClientSession
from router.net.role_guard import RoleGuard
from router.net.server import ServerConnection, send_cancel, send_cancel_unix
from router.ops.health import HealthMonitor
from router.ops.janitor import Janitor
from router.ops.live_reload import Reloader
from router.ops.move_readings import MoveFigures, MoveReadings
from router.protocol.pg.auth import ScramVerifier
from router.protocol.pg.console import Command, Table
from router.sql.read_statements import ReadClassifier

if TYPE_CHECKING:
    from router.catalog.cluster import InstanceRegistry
    from router.operations import RouterOperations
    from router.ops.http import HttpServer
    from router.ops.reload import FileWatcher

log = logging.getLogger(__name__)

LOGIN_TIMEOUT = 30.0


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
    """Everything a running router instance holds, connected. Implements
    router.net.context.RouterContext by delegating to the parts in router.core."""

    def __init__(self, config: RouterConfig, topology: Topology, worker: WorkerIdentity | None = None) -> None:
        self.config = config
        self.worker = worker or WorkerIdentity()
        self.peer_id = config.cluster.peer_id
        # What sessions read of the configuration (RouterContext).
        self.auth_method: str = config.auth.method
        self.tenant_resolution: tuple[str, ...] = tuple(config.tenant.resolution)
        self.tenant_separator = config.tenant.separator
        self.tenant_setting: str = config.tenant.setting
        self.transaction_pooling = config.pool.mode == "transaction"
        self.login_timeout = LOGIN_TIMEOUT
        self.refused_state: frozenset[str] = frozenset(config.pool.refuse)
        self.exact_handover = config.pool.handover == "exact"
        self.read_mode: str = config.reads.mode
        self.read_classifier = ReadClassifier(config.reads.volatile_functions)
        self.read_your_writes: str = config.reads.read_your_writes
        self.catalog = CatalogCache(
            config.catalog.dsn,
            config.catalog.schema,
            config.catalog.refresh_interval,
            on_change=self._tenant_changed,
            connect_timeout=config.pool.connect_timeout,
        )
        # Repairs the roles the router logs in as when a tenant's session changed them.
        self.role_guard = RoleGuard(config.admin, config.pool.connect_timeout)
        settings = PoolSettings(
            size=self.worker.share(config.pool.size),
            wait_timeout=config.pool.wait_timeout,
            connect_timeout=config.pool.connect_timeout,
            idle_timeout=config.pool.idle_timeout,
            lifetime=config.pool.lifetime,
        )
        secret = config.tenant.context_secret
        self.pools: PoolRegistry[ServerConnection] = PoolRegistry(
            settings, self.role_guard.connector, config.server.user if secret is not None else None
        )
        rules = TargetRules(config.tenant.setting, "search_path", secret, config.server.user, config.server.password)
        self.routing = Targets(rules, self.catalog, self.pools.pool, topology)
        self.targets: dict[str, Target] = self.routing.targets
        self.health = HealthMonitor(topology, config.server, config.health, on_down=self._server_down)
        self.reads = ReadRouting(self.health, LagBounds(config.reads.max_lag_bytes, config.reads.max_lag_seconds))
        self.commits = CommitPositions(config.reads.read_your_writes)
        limits = ClientLimits(
            self.worker.share(config.pool.max_client_connections),
            config.pool.max_client_connections,
            self.worker.count,
            config.tenant.max_connections,
        )
        self.clients: Clients[ClientSession] = Clients(limits, self.peer_id, self.worker.index, self._clients_changed)
        # Tenants held by a coordinator (rebalance cutover, migration): their new transactions wait.
        self.holds = Holds(config.pool.wait_timeout, self.clients.busy, self.pools.watch_returns)
        self.held: dict[str, list[HoldTicket]] = self.holds.held
        self._verifiers: dict[str, ScramVerifier] = {}
        self.errors: Counter[str] = Counter()
        self._background: set[asyncio.Task[None]] = set()  # cancels waiting for a set-up to finish
        self.reloader = Reloader(self)
        # The catalog's tenant moves, for /metrics: read by one process per instance (worker 0).
        self.move_readings = MoveReadings(config.catalog.dsn, config.catalog.schema)
        # The admin console's commands (the virtual database `tenant_router`).
        self.console = Console(self)

    # --- what tests, metrics and the janitor read ------------------------------------------------

    @property
    def topology(self) -> Topology:
        return self.routing.topology

    @property
    def read_bounds(self) -> LagBounds:
        return self.reads.bounds

    @property
    def live_members(self) -> int:
        return self.clients.live_members

    @property
    def client_count(self) -> int:
        return len(self.clients)

    @property
    def connections_total(self) -> int:
        return self.clients.logins

    def iter_pools(self) -> Iterator[Pool[ServerConnection]]:
        return iter(self.pools)

    @property
    def move_figures(self) -> MoveFigures | None:
        return self.move_readings.figures

    async def refresh_membership(self) -> None:
        await self.clients.refresh_membership()

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
        return self.routing.resolve(tenant)

    def default_target(self) -> Target:
        return self.routing.default()

    def read_pool(self, target: Target, min_lsn: int | None) -> Pool | None:
        return self.reads.read_pool(target.replicas, min_lsn)

    def replica_failed(self, pool: Pool, exc: RouterError) -> None:
        self.reads.replica_failed(pool, exc.message)

    def note_commit(self, tenant: str, lsn: int) -> None:
        self.commits.note_commit(tenant, lsn)

    def commit_pending(self, tenant: str) -> None:
        self.commits.commit_pending(tenant)

    def commit_settled(self, tenant: str) -> None:
        self.commits.commit_settled(tenant)

    def tenant_commit_position(self, tenant: str) -> int | None:
        return self.commits.position(tenant)

    def register_client(self, session: ClientSession) -> tuple[int, bytes]:
        return self.clients.register(session)

    def unregister_client(self, session: ClientSession) -> None:
        self.clients.unregister(session)

    def move_client(self, old: str | None, new: str | None) -> None:
        self.clients.move(old, new)

    def wait_for_release(
        self, tenant: str, resume: Callable[[], None], fail: Callable[[RouterError], None]
    ) -> HoldTicket | None:
        return self.holds.wait_for_release(tenant, resume, fail)

    def close_idle_connections(self, host: str, port: int, databases: tuple[str, ...]) -> None:
        self.pools.close_idle(host, port, databases)

    def count_error(self, sqlstate: str) -> None:
        self.errors[sqlstate] += 1

    async def console_command(self, command: Command) -> Table:
        return await self.console.run(command)

    # --- events ------------------------------------------------------------------------------------

    def _tenant_changed(self, tenant: str) -> None:
        self.routing.forget(tenant)
        self.commits.forget(tenant)

    def _server_down(self, key: ServerKey, reason: str) -> None:
        self.pools.server_down(key.host, key.port, reason)

    def _clients_changed(self) -> None:
        self.holds.changed()

    # --- live reload --------------------------------------------------------------------------------

    def apply_topology(self, topology: Topology) -> None:
        """Switch to a new topology without dropping clients: new servers get pools on first use,
        removed servers' pools drain (transactions in flight finish, then their connections close),
        and weights and replicas take effect for the next transaction."""
        self.routing.set_topology(topology)
        self.pools.retire_absent(topology)
        self.health.set_topology(topology)

    def request_reload(self) -> None:
        self.reloader.request()

    async def reload(self) -> bool:
        return await self.reloader.reload()

    # --- sessions ending ---------------------------------------------------------------------------

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
        session = self.clients.get(process_id)
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


class _Service(Protocol):
    async def stop(self) -> None: ...


@dataclass
class RunningRouter:
    """A started router: its bound addresses and how to stop it."""

    router: Router
    port: int
    http_port: int
    _servers: list[asyncio.Server] = field(default_factory=list)
    _janitor: Janitor | None = None
    _cluster: list[_Service] = field(default_factory=list)
    _watcher: FileWatcher | None = None
    _http: HttpServer | None = None
    _operations: RouterOperations | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        if self._http is not None:
            await self._http.close()
        if self._operations is not None:
            await self._operations.stop()
        for session in self.router.clients.sessions():
            session.close()
        for member in self._cluster:  # deregister: from now on this instance need not acknowledge
            with contextlib.suppress(Exception):
                await member.stop()
        if self._janitor is not None:
            await self._janitor.stop()
        if self.router.move_readings.running:
            await self.router.move_readings.stop()
        if self._watcher is not None:
            await self._watcher.stop()
        await self.router.health.stop()
        self.router.pools.close_all_now()
        await self.router.catalog.stop()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def start(config: RouterConfig, topology: Topology, worker: WorkerIdentity | None = None) -> RunningRouter:
    """Start serving: catalog first (a router without its catalog cannot route), then listeners.
    A worker of several shares the listen port (SO_REUSEPORT) and also listens on its private
    sockets: cancels forwarded by its siblings, and metrics for the supervisor."""
    from router.operations import RouterOperations
    from router.ops.http import build_app, start_http

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
    # The HTTP endpoint: the API's operations are the CLI's, bound to this router's topology. A
    # worker of several serves it on its private socket only, for its supervisor (which checks
    # the tokens); a lone process on http.host:http.port.
    operations = RouterOperations(config, lambda: router.topology)
    http = None
    metrics_path = identity.metrics_socket(identity.index)
    if metrics_path is not None:
        app = build_app(router, None, operations, worker=identity.index)
        http = await start_http(app, unix_path=str(metrics_path))
    elif config.http.enabled:
        http = await start_http(build_app(router, config.http.tokens, operations), config.http.host, config.http.port)
    http_port = http.port if http is not None else 0
    janitor = Janitor(router)
    janitor.start()
    if identity.index == 0:
        await router.move_readings.start()
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
    return RunningRouter(router, port, http_port, servers, janitor, cluster, watcher, http, operations)


async def _join_cluster(router: Router, port: int) -> list[_Service]:
    """Register this worker among the router instances and take part in holds. Each worker is its
    own participant, so a hold is acknowledged only once every process has drained the tenant.
    If that fails (catalog unreachable, not migrated) the router still serves, but holds do not
    know of it and so cannot wait for it: it keeps trying in the background (`_LateJoin`)."""
    from router.catalog.cluster import HoldParticipant, InstanceRegistry, default_instance_id

    config, identity = router.config, router.worker
    instance_id = default_instance_id(None, port)
    if identity.count > 1:
        instance_id += f"/w{identity.index}"
    registry = InstanceRegistry(config.catalog.dsn, config.catalog.schema, instance_id, workers=identity.count)

    async def release(tenant: str) -> None:
        # A move switches the tenant's placement, then releases its hold: resume its sessions only
        # once this process has read the switch (the catalog's NOTIFY of it may still be on its way).
        await router.holds.release(tenant, first=lambda: router.catalog.refresh([tenant]))

    participant = HoldParticipant(config.catalog.dsn, config.catalog.schema, instance_id, router.holds.hold, release)
    try:
        await _join(router, participant, registry)
    except RouterError as exc:
        log.error(
            "not registered among router instances (%s): until it is, a tenant move's cutover does not wait"
            " for this process; retrying every %gs",
            exc.message,
            _JOIN_RETRY,
        )
        return [_LateJoin(router, participant, registry)]
    return [registry, participant]  # stopped in this order: deregistered before it stops acknowledging


_JOIN_RETRY: Final = 5.0


async def _join(router: Router, participant: _Startable, registry: InstanceRegistry) -> None:
    # The participant first: once registered, this instance is asked to acknowledge holds, so it
    # must already be listening for them (a registered instance that cannot acknowledge would
    # make every hold wait out its timeout).
    await participant.start()
    try:
        await registry.start()
    except BaseException:
        await participant.stop()
        raise
    router.clients.membership = registry
    await router.refresh_membership()


class _Startable(_Service, Protocol):
    async def start(self) -> None: ...


class _LateJoin:
    """Joins the cluster in the background until it succeeds; stops what it joined."""

    def __init__(self, router: Router, participant: _Startable, registry: InstanceRegistry) -> None:
        self._members: list[_Service] = []
        self._task = asyncio.get_running_loop().create_task(self._retry(router, participant, registry))

    async def _retry(self, router: Router, participant: _Startable, registry: InstanceRegistry) -> None:
        while True:
            await asyncio.sleep(_JOIN_RETRY)
            try:
                await _join(router, participant, registry)
            except RouterError as exc:
                log.debug("still not registered among router instances: %s", exc.message)
                continue
            self._members = [registry, participant]
            log.info("registered among router instances at last: holds wait for this process from now on")
            return

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for member in self._members:
            await member.stop()


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
