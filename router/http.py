"""The HTTP endpoint: `/health` and `/metrics`.

A deliberately small asyncio server (GET only, one response per connection): it must never compete
with the PostgreSQL listener for attention, and it holds no logic beyond formatting.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.metrics import RouterCollector

if TYPE_CHECKING:
    from router.app import Router


async def start_http(
    router: Router, host: str | None = None, port: int | None = None, *, unix_path: str | None = None
) -> asyncio.Server:
    registry = CollectorRegistry()
    registry.register(RouterCollector(router))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = request.split(b" ", 2)
            path = parts[1].decode(errors="replace") if len(parts) > 1 else "/"
            if parts[0] != b"GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
            elif path in ("/health", "/healthz"):
                healthy = router.catalog.connected
                payload = {
                    "status": "ok" if healthy else "degraded",
                    "catalog_connected": healthy,
                    "tenants": len(router.catalog),
                    "clients": router.client_count,
                }
                status = "200 OK" if healthy else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps(payload).encode() + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /health or /metrics\n"
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

    if unix_path is not None:
        return await asyncio.start_unix_server(handle, unix_path)
    return await asyncio.start_server(handle, host, port)
