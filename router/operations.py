"""The HTTP API's tenant and move operations (router.ops.http_api.Operations), bound to a running
router: wiring only. Each is the CLI's own function (router.admin.tenant_admin for tenants,
router.rebalance.apply for moves) called with the router's configuration and its current topology
(a reload's included), its answer turned into JSON.

Owns: the background tasks of the moves the API started (kept so they are not collected, cancelled
when the router stops: the move stays open in the catalog, and `rebalance apply` or a later move
request resumes it).

Must not: decide anything of its own, nor be imported by the layers below (only router.app builds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from router.admin import tenant_admin
from router.catalog.moves import Move, MoveStore
from router.config import RouterConfig
from router.core.topology import Topology
from router.errors import RouterError, UnknownMove
from router.isolation import validate_isolation
from router.rebalance.apply import move_tenant, open_directed_move

log = logging.getLogger(__name__)


def tenant_json(view: tenant_admin.TenantView) -> dict[str, Any]:
    t = view.tenant
    return {
        "id": t.id,
        "isolation": t.isolation,
        "status": t.status,
        "shard": view.shard,
        "reason": view.reason,
        "pinned": t.shard,
        "labels": dict(t.labels),
        "created_at": t.created_at.isoformat(),
    }


def move_json(move: Move) -> dict[str, Any]:
    data = asdict(move)
    for key in ("owner_seen_at", "created_at", "updated_at", "finished_at"):
        data[key] = data[key].isoformat() if data[key] is not None else None
    data["finished"] = move.finished
    return data


class RouterOperations:
    """router.ops.http_api.Operations for one router process."""

    def __init__(self, config: RouterConfig, topology: Callable[[], Topology]) -> None:
        self._config = config
        self._topology = topology
        self._moves: dict[int, asyncio.Task[None]] = {}

    async def list_tenants(self) -> list[dict[str, Any]]:
        return [tenant_json(v) for v in await tenant_admin.list_tenants(self._config, self._topology())]

    async def show_tenant(self, tenant_id: str) -> dict[str, Any]:
        return tenant_json(await tenant_admin.show_tenant(self._config, self._topology(), tenant_id))

    async def add_tenant(
        self, tenant_id: str, isolation: str | None, shard: str | None, labels: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        level = validate_isolation(isolation) if isolation is not None else None
        view = await tenant_admin.add_tenant(self._config, self._topology(), tenant_id, level, shard, labels)
        return tenant_json(view)

    async def suspend_tenant(self, tenant_id: str) -> dict[str, Any]:
        return tenant_json(await tenant_admin.suspend_tenant(self._config, self._topology(), tenant_id))

    async def resume_tenant(self, tenant_id: str) -> dict[str, Any]:
        return tenant_json(await tenant_admin.resume_tenant(self._config, self._topology(), tenant_id))

    async def start_move(self, tenant_id: str, to_shard: str) -> dict[str, Any]:
        topology = self._topology()
        await tenant_admin.show_tenant(self._config, topology, tenant_id)  # UnknownTenant: a 404
        move = await open_directed_move(self._config, topology, tenant_id, to_shard)
        running = self._moves.get(move.move_id)
        if running is None or running.done():
            task = asyncio.get_running_loop().create_task(self._run_move(topology, tenant_id, to_shard))
            self._moves[move.move_id] = task
        return move_json(move)

    async def _run_move(self, topology: Topology, tenant_id: str, to_shard: str) -> None:
        try:
            report = await move_tenant(self._config, topology, tenant_id, to_shard)
        except RouterError as exc:
            log.error("move of tenant %r to %s (HTTP API) failed: %s", tenant_id, to_shard, exc.message)
            return
        for move, why in report.failed:
            log.error("move %d of tenant %r stopped at %s: %s", move.move_id, tenant_id, move.stage, why)

    async def list_moves(self) -> list[dict[str, Any]]:
        store = MoveStore(self._config.catalog.dsn, self._config.catalog.schema)
        return [move_json(m) for m in await store.list()]

    async def show_move(self, move_id: int) -> dict[str, Any]:
        store = MoveStore(self._config.catalog.dsn, self._config.catalog.schema)
        move = await store.get(move_id)
        if move is None:
            raise UnknownMove(f"there is no move {move_id}", hint="GET /v1/moves lists them")
        return move_json(move)

    async def stop(self) -> None:
        """Cancel the moves still running (they stay open in the catalog, to be resumed)."""
        tasks = [t for t in self._moves.values() if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
