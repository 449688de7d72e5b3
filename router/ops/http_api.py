"""The HTTP API under `/v1/` (every route needs a bearer token: router/ops/http.py checks it):
tenants (list, show with the resolved shard and why, add, suspend, resume, move), moves, pools,
reload and holds. router/ops/openapi.json documents each answer.

Owns: reading and validating each request (JSON bodies, tenant ids, isolation levels: 400 for a
body that is not a JSON object, 422 for a field the router refuses) and the JSON of the pools.

Must not: carry out tenant or move work itself: that is the CLI's own code (router.admin.tenant_admin,
router.rebalance.apply), reached through `Operations`, which the composition root binds to this
router's configuration and topology (router/operations.py). It imports neither package.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from aiohttp import web

from router.errors import InvalidRequest, ReloadRejected
from router.isolation import validate_isolation, validate_tenant_id
from router.ops.http_common import holds_payload, read_json
from router.ops.metrics import HoldRecords

JsonObject = dict[str, Any]


class Operations(Protocol):
    """The tenant and move commands, bound to one router (answers are JSON objects)."""

    async def list_tenants(self) -> list[JsonObject]: ...

    async def show_tenant(self, tenant_id: str) -> JsonObject: ...

    async def add_tenant(
        self, tenant_id: str, isolation: str | None, shard: str | None, labels: Mapping[str, Any] | None
    ) -> JsonObject: ...

    async def suspend_tenant(self, tenant_id: str) -> JsonObject: ...

    async def resume_tenant(self, tenant_id: str) -> JsonObject: ...

    async def start_move(self, tenant_id: str, to_shard: str) -> JsonObject:
        """Record the move (or find the open one) and run it in the background; the move's row."""
        ...

    async def list_moves(self) -> list[JsonObject]: ...

    async def show_move(self, move_id: int) -> JsonObject: ...


class ApiServed(Protocol):
    """What /v1/ reads of the router itself."""

    @property
    def holds(self) -> HoldRecords: ...

    def iter_pools(self) -> Iterator[Any]: ...

    async def reload(self) -> bool: ...


def _tenant_id(request: web.Request) -> str:
    tenant_id = request.match_info["tenant_id"]
    try:
        validate_tenant_id(tenant_id)
    except ValueError as exc:
        raise InvalidRequest(f"{tenant_id!r} is not a valid tenant id: {exc}") from exc
    return tenant_id


def _field(body: Mapping[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"the field {name!r} is required")
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidRequest(f"the field {name!r} must be a {_KINDS[kind]}, got {type(value).__name__}")
    return value


_KINDS = {str: "string", dict: "JSON object", int: "integer"}


def _unknown_fields(body: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(body) - known)
    if extra:
        raise InvalidRequest(f"unknown field(s): {', '.join(extra)}", hint=f"known: {', '.join(sorted(known))}")


def pool_json(pool: Any, worker: int | None) -> JsonObject:
    key = pool.key
    data: JsonObject = {
        "shard": key.shard,
        "host": key.host,
        "port": key.port,
        "database": key.database,
        "user": key.user,
        "size": pool.capacity.size,
        "total": pool.total,
        "active": pool.active_count,
        "idle": pool.idle_count,
        "waiting": pool.waiting,
        "transactions": pool.transactions,
        "closed": pool.closed,
    }
    if worker is not None:
        data["worker"] = worker
    return data


def add_api_routes(app: web.Application, router: ApiServed, ops: Operations, worker: int | None) -> None:
    async def list_tenants(_request: web.Request) -> web.Response:
        return web.json_response({"tenants": await ops.list_tenants()})

    async def show_tenant(request: web.Request) -> web.Response:
        return web.json_response(await ops.show_tenant(_tenant_id(request)))

    async def add_tenant(request: web.Request) -> web.Response:
        body = await read_json(request)
        _unknown_fields(body, {"id", "isolation", "shard", "labels"})
        tenant_id = _field(body, "id", str, required=True)
        try:
            validate_tenant_id(tenant_id)
        except ValueError as exc:
            raise InvalidRequest(f"{tenant_id!r} is not a valid tenant id: {exc}") from exc
        isolation = _field(body, "isolation", str)
        if isolation is not None:
            try:
                validate_isolation(isolation)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from exc
        shard = _field(body, "shard", str)
        labels = _field(body, "labels", dict)
        view = await ops.add_tenant(tenant_id, isolation, shard, labels)
        return web.json_response(view, status=201)

    async def suspend(request: web.Request) -> web.Response:
        return web.json_response(await ops.suspend_tenant(_tenant_id(request)))

    async def resume(request: web.Request) -> web.Response:
        return web.json_response(await ops.resume_tenant(_tenant_id(request)))

    async def move(request: web.Request) -> web.Response:
        tenant_id = _tenant_id(request)
        body = await read_json(request)
        _unknown_fields(body, {"to"})
        to_shard = _field(body, "to", str, required=True)
        row = await ops.start_move(tenant_id, to_shard)
        return web.json_response(row, status=202, headers={"Location": f"/v1/moves/{row['move_id']}"})

    async def list_moves(_request: web.Request) -> web.Response:
        return web.json_response({"moves": await ops.list_moves()})

    async def show_move(request: web.Request) -> web.Response:
        raw = request.match_info["move_id"]
        if not raw.isdigit():
            raise InvalidRequest(f"{raw!r} is not a move id (a positive integer)")
        return web.json_response(await ops.show_move(int(raw)))

    async def pools(_request: web.Request) -> web.Response:
        return web.json_response({"pools": [pool_json(p, worker) for p in router.iter_pools()]})

    async def reload(_request: web.Request) -> web.Response:
        if not await router.reload():
            raise ReloadRejected(
                "reload rejected, the running topology is unchanged",
                hint="the router's log names each problem (`tenant-router check` too)",
            )
        return web.json_response({"reloaded": True})

    async def holds(_request: web.Request) -> web.Response:
        return web.json_response(holds_payload(router.holds))

    app.router.add_get("/v1/tenants", list_tenants)
    app.router.add_post("/v1/tenants", add_tenant)
    app.router.add_get("/v1/tenants/{tenant_id}", show_tenant)
    app.router.add_post("/v1/tenants/{tenant_id}/suspend", suspend)
    app.router.add_post("/v1/tenants/{tenant_id}/resume", resume)
    app.router.add_post("/v1/tenants/{tenant_id}/move", move)
    app.router.add_get("/v1/moves", list_moves)
    app.router.add_get("/v1/moves/{move_id}", show_move)
    app.router.add_get("/v1/pools", pools)
    app.router.add_post("/v1/reload", reload)
    app.router.add_get("/v1/holds", holds)
