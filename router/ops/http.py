"""The HTTP endpoint: `/health`, `/metrics`, and `/holds` (which tenants this process holds now, and
how often it held each one since it started: {"held_now": [...], "held_ever": {tenant: times}};
`merge_holds` sums several workers' answers, for a supervisor).

A deliberately small asyncio server (GET only, one response per connection): it must never compete
with the PostgreSQL listener for attention, and it holds no logic beyond formatting. It reads the
router through `Served`, which the composition root satisfies: it must not import router.app.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.ops.metrics import HoldRecords, MetricsSource, RouterCollector


class CatalogState(Protocol):
    @property
    def connected(self) -> bool: ...

    def __len__(self) -> int: ...


class Served(MetricsSource, Protocol):
    """What /health and /metrics read of a running router."""

    @property
    def catalog(self) -> CatalogState: ...


Response = tuple[str, str, bytes]  # status line, content type, body
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def get_only(route: Callable[[str], Awaitable[Response]]) -> Handler:
    """A connection handler answering one GET with `route(path)`, then closing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = request.split(b" ", 2)
            path = parts[1].decode(errors="replace") if len(parts) > 1 else "/"
            if parts[0] != b"GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            else:
                status, ctype, body = await route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


NOT_FOUND: Response = ("404 Not Found", "text/plain", b"try /health, /metrics or /holds\n")


def holds_payload(holds: HoldRecords) -> dict[str, object]:
    """What /holds answers for one process."""
    return {"held_now": sorted(holds.held), "held_ever": dict(sorted(holds.held_ever.items()))}


def merge_holds(payloads: Iterable[Mapping[str, Any]]) -> dict[str, object]:
    """Several workers' /holds answers as their instance's: held now by any worker, and the times
    each tenant was held summed over the workers (every worker enters every hold)."""
    held_now: set[str] = set()
    held_ever: Counter[str] = Counter()
    for payload in payloads:
        held_now.update(payload["held_now"])
        held_ever.update(payload["held_ever"])
    return {"held_now": sorted(held_now), "held_ever": dict(sorted(held_ever.items()))}


def json_response(healthy: bool, payload: dict[str, object]) -> Response:
    status = "200 OK" if healthy else "503 Service Unavailable"
    return status, "application/json", json.dumps(payload).encode() + b"\n"


async def start_http(
    router: Served, host: str | None = None, port: int | None = None, *, unix_path: str | None = None
) -> asyncio.Server:
    registry = CollectorRegistry()
    registry.register(RouterCollector(router))

    async def route(path: str) -> Response:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
        if path in ("/health", "/healthz"):
            healthy = router.catalog.connected
            return json_response(
                healthy,
                {
                    "status": "ok" if healthy else "degraded",
                    "catalog_connected": healthy,
                    "tenants": len(router.catalog),
                    "clients": router.client_count,
                },
            )
        if path == "/holds":
            return json_response(True, holds_payload(router.holds))
        return NOT_FOUND

    if unix_path is not None:
        return await asyncio.start_unix_server(get_only(route), unix_path)
    return await asyncio.start_server(get_only(route), host, port)
