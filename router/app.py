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
from collections.abc import Iterator
from dataclasses import dataclass, field

from router.catalog import CatalogCache, Tenant
from router.config import RouterConfig, UserConfig
from router.errors import BackendUnavailable, TenantSuspended, TooManyClients, UnknownTenant
from router.hashing import Ring
from router.isolation import database_name, schema_name
from router.janitor import Janitor
from router.net.client import ClientSession
from router.net.context import Target
from router.net.server import ServerConnection, send_cancel
from router.pool import Pool, PoolKey, PoolSettings
from router.protocol.pg.auth import ScramVerifier
from router.routing import place_tenant
from router.topology import Shard, Topology

log = logging.getLogger(__name__)

LOGIN_TIMEOUT = 30.0


class Router:
    """Everything a running router instance holds. Implements router.net.context.RouterContext."""

    def __init__(self, config: RouterConfig, topology: Topology) -> None:
        self.config = config
        self.topology = topology
        self.ring = Ring.from_topology(topology)
        self.auth_method: str = config.auth.method
        self.tenant_resolution: tuple[str, ...] = tuple(config.tenant.resolution)
        self.tenant_separator = config.tenant.separator
        self.transaction_pooling = config.pool.mode == "transaction"
        self.login_timeout = LOGIN_TIMEOUT
        self.catalog = CatalogCache(
            config.catalog.dsn,
            config.catalog.schema,
            config.catalog.refresh_interval,
            on_change=self._tenant_changed,
            connect_timeout=config.pool.connect_timeout,
        )
        self.pools: dict[PoolKey, Pool] = {}
        self._pool_settings = PoolSettings(
            size=config.pool.size,
            wait_timeout=config.pool.wait_timeout,
            connect_timeout=config.pool.connect_timeout,
            idle_timeout=config.pool.idle_timeout,
            lifetime=config.pool.lifetime,
        )
        self._targets: dict[str, Target] = {}
        self._clients: dict[int, ClientSession] = {}
        self._verifiers: dict[str, ScramVerifier] = {}
        self.errors: Counter[str] = Counter()
        self.connections_total = 0

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
        target = self._targets.get(tenant)
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
        self._targets[tenant] = target
        return target

    def _target_for(self, record: Tenant, shard: Shard) -> Target:
        database = database_name(record.id) if record.isolation == "database" else shard.primary.dbname
        context = {self.config.tenant.setting: record.id}
        if record.isolation == "schema":
            context["search_path"] = schema_name(record.id)
        return Target(record.id, shard.name, self._pool(shard, database), context)

    def default_target(self) -> Target:
        shard = next(iter(self.topology.shards.values()))
        return Target("", shard.name, self._pool(shard, shard.primary.dbname), {})

    def _pool(self, shard: Shard, database: str) -> Pool:
        key = PoolKey(shard.name, shard.primary.host, shard.primary.port, database, self.config.server.user)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(key, self.config.server.password, self._pool_settings)
        return pool

    def _tenant_changed(self, tenant: str) -> None:
        self._targets.pop(tenant, None)

    def register_client(self, session: ClientSession) -> tuple[int, bytes]:
        if len(self._clients) >= self.config.pool.max_client_connections:
            raise TooManyClients(
                f"too many client connections (max_client_connections = {self.config.pool.max_client_connections})"
            )
        while True:
            process_id = secrets.randbelow(2**31 - 2) + 1
            if process_id not in self._clients:
                break
        self._clients[process_id] = session
        self.connections_total += 1
        return process_id, secrets.token_bytes(4)

    def unregister_client(self, session: ClientSession) -> None:
        if self._clients.get(session.key[0]) is session:
            del self._clients[session.key[0]]

    @property
    def client_count(self) -> int:
        return len(self._clients)

    async def cancel(self, process_id: int, secret_key: bytes) -> None:
        session = self._clients.get(process_id)
        if session is None or not secrets.compare_digest(session.key[1], secret_key):
            log.info("cancel request for an unknown client key ignored")
            return
        server, pool = session.server, session.pool
        if server is None or pool is None:
            return  # nothing running: nothing to cancel
        await send_cancel(
            pool.key.host,
            pool.key.port,
            server.process_id,
            server.secret_key,
            self.config.pool.connect_timeout,
        )

    def end_session(self, server: ServerConnection, pool: Pool) -> None:
        if self.transaction_pooling:
            pool.release(server)
            return
        server.detach()
        asyncio.get_running_loop().create_task(_reset_and_release(server, pool))

    def count_error(self, sqlstate: str) -> None:
        self.errors[sqlstate] += 1

    def iter_pools(self) -> Iterator[Pool]:
        return iter(list(self.pools.values()))


async def _reset_and_release(server: ServerConnection, pool: Pool) -> None:
    """Session pooling: wipe the session (DISCARD ALL) before another client gets it."""
    try:
        _reported, error = await server.run_internal("DISCARD ALL")
    except Exception:
        pool.discard(server, "reset failed")
        return
    if error is not None:
        pool.discard(server, "reset failed")
        return
    server.prepared.clear()
    server.unnamed = None
    server.applied = {}
    pool.release(server)


@dataclass
class RunningRouter:
    """A started router: its bound addresses and how to stop it."""

    router: Router
    port: int
    http_port: int
    _servers: list[asyncio.Server] = field(default_factory=list)
    _janitor: Janitor | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for session in list(self.router._clients.values()):
            session.close()
        if self._janitor is not None:
            await self._janitor.stop()
        for pool in self.router.iter_pools():
            pool.close_all_now()
        await self.router.catalog.stop()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def start(config: RouterConfig, topology: Topology) -> RunningRouter:
    """Start serving: catalog first (a router without its catalog cannot route), then listeners."""
    from router.http import start_http

    router = Router(config, topology)
    await router.catalog.start()
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: ClientSession(router),
        config.listen.host,
        config.listen.port,
        backlog=4096,
        reuse_address=True,
    )
    port = listener.sockets[0].getsockname()[1]
    servers = [listener]
    http_port = 0
    if config.http.enabled:
        http_server = await start_http(router, config.http.host, config.http.port)
        servers.append(http_server)
        http_port = http_server.sockets[0].getsockname()[1]
    janitor = Janitor(router)
    janitor.start()
    log.info(
        "tenant-router listening on %s:%s (%s pooling, %d shards, %d tenants in the catalog)",
        config.listen.host,
        port,
        config.pool.mode,
        len(topology.shards),
        len(router.catalog),
    )
    return RunningRouter(router, port, http_port, servers, janitor)


async def serve(config: RouterConfig, topology: Topology) -> None:
    """Run until SIGINT/SIGTERM."""
    running = await start(config, topology)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await running.stop()
