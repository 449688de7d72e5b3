"""The supervisor's HTTP endpoint: one answer for the instance, from its workers' (each serves
router/ops/http.py's application on a private unix socket, without tokens: only the supervisor
reaches it, and checks the tokens here).

- `/metrics`: every worker's exposition summed (router.ops.metrics.merge_expositions: exact, not sampled);
- `/health`: ok when every worker answers; `/ready`: ready when every worker is;
- `/holds`, `/v1/holds`: merged (http.merge_holds); `/v1/pools`: every worker's pools;
- `POST /v1/reload`: every worker reloads; ok when all did;
- any other `/v1/` request and `/openapi.json`: passed to worker 0 as sent (catalog work: any one
  worker does it for the instance).

Must not: open a database connection or decide anything about tenants: it only asks and merges.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from router.ops.http_common import error_body, guarded, merge_holds
from router.ops.metrics import merge_expositions

_TIMEOUT: Final = aiohttp.ClientTimeout(total=5)
# What a worker's answer keeps of its headers when passed on.
_PASSED_HEADERS: Final = ("Content-Type", "Location")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Workers:
    """The workers' private sockets, asked over HTTP."""

    def __init__(self, sockets: Sequence[Path]) -> None:
        self.sockets = list(sockets)

    async def ask(
        self, index: int, method: str, path: str, body: bytes = b"", timeout: aiohttp.ClientTimeout = _TIMEOUT
    ) -> Answer | None:
        """Worker `index`'s answer to `method path`; None if it does not answer."""
        connector = aiohttp.UnixConnector(path=str(self.sockets[index]))
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(method, f"http://worker{path}", data=body or None) as response,
            ):
                data = await response.read()
                headers = {k: response.headers[k] for k in _PASSED_HEADERS if k in response.headers}
                return Answer(response.status, data, headers)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    async def ask_all(self, method: str, path: str) -> list[Answer | None]:
        return list(await asyncio.gather(*(self.ask(i, method, path) for i in range(len(self.sockets)))))


def _no_worker(what: str) -> web.Response:
    return web.json_response(error_body("08006", f"no worker answered {what}"), status=503)


def build_supervisor_app(workers: Workers, tokens: Sequence[str], restarts: Callable[[], int]) -> web.Application:
    count = len(workers.sockets)

    async def metrics(_request: web.Request) -> web.Response:
        answers = await workers.ask_all("GET", "/metrics")
        texts = [a.body.decode() for a in answers if a is not None and a.status == 200]
        return web.Response(
            body=merge_expositions(texts).encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def health(_request: web.Request) -> web.Response:
        answered = sum(1 for a in await workers.ask_all("GET", "/health") if a is not None)
        healthy = answered == count
        payload = {
            "status": "ok" if healthy else "degraded",
            "workers": count,
            "workers_answering": answered,
            "worker_restarts": restarts(),
        }
        return web.json_response(payload, status=200 if healthy else 503)

    async def ready(_request: web.Request) -> web.Response:
        reasons: list[str] = []
        for index, answer in enumerate(await workers.ask_all("GET", "/ready")):
            if answer is None:
                reasons.append(f"worker {index} does not answer")
            else:
                reasons += [f"worker {index}: {r}" for r in answer.json()["reasons"]]
        return web.json_response({"ready": not reasons, "reasons": reasons}, status=503 if reasons else 200)

    async def holds(_request: web.Request) -> web.Response:
        answers = await workers.ask_all("GET", "/holds")
        return web.json_response(merge_holds(a.json() for a in answers if a is not None and a.status == 200))

    async def pools(_request: web.Request) -> web.Response:
        answers = await workers.ask_all("GET", "/v1/pools")
        return web.json_response(
            {"pools": [p for a in answers if a is not None and a.status == 200 for p in a.json()["pools"]]}
        )

    async def reload(_request: web.Request) -> web.Response:
        answers = await workers.ask_all("POST", "/v1/reload")
        for index, answer in enumerate(answers):
            if answer is None:
                return _no_worker(f"POST /v1/reload (worker {index})")
            if answer.status != 200:
                return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        return web.json_response({"reloaded": True})

    async def to_first_worker(request: web.Request) -> web.Response:
        body = await request.read()
        answer = await workers.ask(0, request.method, request.path_qs, body)
        if answer is None:
            return _no_worker(f"{request.method} {request.path}")
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    app = web.Application(middlewares=[guarded(tokens)], client_max_size=1 << 20)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/healthz", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/holds", holds)
    app.router.add_get("/v1/holds", holds)
    app.router.add_get("/v1/pools", pools)
    app.router.add_post("/v1/reload", reload)
    app.router.add_get("/openapi.json", to_first_worker)
    app.router.add_route("*", "/v1/{rest:.*}", to_first_worker)
    return app
