"""The HTTP endpoint of one router process, on aiohttp: `/health`, `/ready`, `/metrics`, `/holds`,
`/openapi.json`, and the API under `/v1/` (router/ops/http_api.py); the document of it all is
router/ops/openapi.json.

Why aiohttp: it is an asyncio server, so it runs on the router's own event loop (uvloop included)
beside the PostgreSQL listener, with no thread and no second loop; its request parsing, keep-alive,
routing and middlewares replace the hand-written server this module used to be, and the supervisor
uses its client to ask the workers over their private unix sockets (router/ops/http_workers.py).

Owns: the application of one process (its routes; the token check and JSON errors are
router/ops/http_common.py's), readiness (`readiness`), and starting and stopping a server
(`start_http`, the supervisor's too).

Must not: import router.app, router.admin or router.rebalance: it reads the router through
`Served`, and the API's tenant and move operations reach it as `http_api.Operations`, both
satisfied by the composition root. Nothing here runs on the PostgreSQL hot path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.ops.health import ServerStatus
from router.ops.http_api import Operations, add_api_routes
from router.ops.http_common import guarded, holds_payload, merge_holds
from router.ops.metrics import MetricsSource, RouterCollector

__all__ = ["HttpServer", "Served", "build_app", "holds_payload", "merge_holds", "readiness", "start_http"]

log = logging.getLogger(__name__)

OPENAPI_PATH: Final = Path(__file__).with_name("openapi.json")


class CatalogState(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def last_full_refresh(self) -> float | None: ...

    def __len__(self) -> int: ...


class ServerStates(Protocol):
    def statuses(self) -> list[ServerStatus]: ...


class Served(MetricsSource, Protocol):
    """What the endpoint reads of a running router."""

    @property
    def catalog(self) -> CatalogState: ...

    @property
    def health(self) -> ServerStates: ...

    async def reload(self) -> bool: ...


def readiness(router: Served) -> list[str]:
    """Why the router is not ready to serve (empty: it is): the catalog not loaded yet, a shard
    primary not checked yet or down (the health monitor's last word on it)."""
    reasons = []
    if router.catalog.last_full_refresh is None:
        reasons.append("the tenant catalog is not loaded yet")
    for status in router.health.statuses():
        key = status.key
        if key.role != "primary":
            continue
        if status.checked_at is None:
            reasons.append(f"shard {key.shard}: primary {key.host}:{key.port} not checked yet")
        elif not status.up:
            reasons.append(f"shard {key.shard}: primary {key.host}:{key.port} is down: {status.last_error}")
    return reasons


def openapi_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
    return document


async def serve_openapi(_request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def build_app(
    router: Served, tokens: Sequence[str] | None, operations: Operations | None = None, *, worker: int | None = None
) -> web.Application:
    """The application of one router process; `operations` adds /v1/, whose answers name `worker`
    where the process is one worker of several. `tokens` None: no token is asked for (a worker's
    private socket, which only its supervisor reaches)."""
    registry = CollectorRegistry()
    registry.register(RouterCollector(router))

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_request: web.Request) -> web.Response:
        healthy = router.catalog.connected
        payload = {
            "status": "ok" if healthy else "degraded",
            "catalog_connected": healthy,
            "tenants": len(router.catalog),
            "clients": router.client_count,
        }
        return web.json_response(payload, status=200 if healthy else 503)

    async def ready(_request: web.Request) -> web.Response:
        reasons = readiness(router)
        return web.json_response({"ready": not reasons, "reasons": reasons}, status=503 if reasons else 200)

    async def holds(_request: web.Request) -> web.Response:
        return web.json_response(holds_payload(router.holds))

    app = web.Application(middlewares=[guarded(tokens)], client_max_size=1 << 20)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/healthz", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/holds", holds)
    app.router.add_get("/openapi.json", serve_openapi)
    if operations is not None:
        add_api_routes(app, router, operations, worker)
    return app


@dataclass
class HttpServer:
    """A started endpoint: its TCP port (0 on a unix socket) and how to stop it."""

    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_http(
    app: web.Application, host: str | None = None, port: int | None = None, *, unix_path: str | None = None
) -> HttpServer:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site: web.BaseSite
    if unix_path is not None:
        site = web.UnixSite(runner, unix_path)
    else:
        site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = 0
    if unix_path is None:
        bound = int(runner.addresses[0][1])
    return HttpServer(runner, bound)
