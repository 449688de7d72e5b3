"""The reload of a running router's topology: load shards.yaml again, refuse what would strand
tenants, pin the tenants it would move to their old shard, then swap.

Owns: that sequence and its order (a moved tenant's pin is in the catalog, and in force in this
process, before the new topology routes anyone), one reload at a time, and the background task of
a reload requested where nobody can wait for it (SIGHUP, the file watcher).

Must not: import the composition root (it sees the router as `Reloadable`), change the running
topology itself (`apply_topology` does), or move tenant data (router.ops.reload explains why a
reload never does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from router.config import RouterConfig
from router.core.topology import Topology, diff_topologies, load_both
from router.errors import ConfigError, RouterError
from router.ops.reload import moved_tenants, pin_moved_tenants, reload_problems, summarize

log = logging.getLogger(__name__)

__all__ = ["Reloadable", "Reloader"]


class PlacedTenant(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def shard(self) -> str | None: ...  # its catalog pin


class TenantCatalog(Protocol):
    def snapshot(self) -> Mapping[str, PlacedTenant]: ...

    def pin_locally(self, pins: Mapping[str, str]) -> None: ...


class Reloadable(Protocol):
    @property
    def config(self) -> RouterConfig: ...

    @property
    def topology(self) -> Topology: ...

    @property
    def catalog(self) -> TenantCatalog: ...

    def apply_topology(self, topology: Topology) -> None: ...


class Reloader:
    def __init__(self, router: Reloadable) -> None:
        self._router = router
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[bool] | None = None

    def request(self) -> None:
        """Reload in the background (signal handlers and the file watcher cannot wait for it); the
        task is kept so it is not collected half-way."""
        self._task = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """Re-read shards.yaml and apply it (SIGHUP, `tenant-router reload`, the file watcher).

        An invalid file is rejected with the messages of `tenant-router check`, and so is one that
        removes a shard still holding tenants; the running topology then stays as it was. Tenants
        that would hash to another shard are first pinned to their old shard in the catalog (their
        data has not moved), so a reload never sends a tenant to a shard that lacks its data."""
        router = self._router
        async with self._lock:
            try:
                _config, topology = load_both(router.config.path)
            except ConfigError as exc:
                log.error("reload rejected, the running topology is unchanged:\n%s", exc)
                return False
            old = router.topology
            tenants = [(t.id, t.shard) for t in router.catalog.snapshot().values()]
            problems = reload_problems(old, topology, tenants)
            if problems:
                log.error("reload rejected, the running topology is unchanged:\n%s", "\n".join(problems))
                return False
            moves = moved_tenants(tenants, old, topology)
            if moves:
                try:
                    await pin_moved_tenants(router.config, moves)
                except RouterError as exc:
                    log.error("reload rejected: could not pin the tenants it would move: %s", exc.message)
                    return False
                router.catalog.pin_locally({move.tenant: move.old_shard for move in moves})
            router.apply_topology(topology)
            log.info("%s", summarize(diff_topologies(old, topology), moves, old=old, new=topology))
            return True
