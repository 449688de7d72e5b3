"""What every HTTP application of the router shares (router/ops/http.py for one process,
router/ops/http_workers.py for a supervisor, router/ops/http_api.py for /v1/): the bearer-token
check, JSON errors (a RouterError's SQLSTATE and message, with the HTTP status of its class),
reading a JSON body, and the /holds answer.

Must not: know any route, or read the router itself.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from router.errors import (
    ApiUnauthorized,
    CatalogUnavailable,
    InvalidRequest,
    MalformedRequest,
    MoveConflict,
    MoveError,
    ReloadRejected,
    RouterError,
    TenantAlreadyHeld,
    TenantExists,
    UnknownMove,
    UnknownShard,
    UnknownTenant,
)
from router.ops.metrics import HoldRecords

# Served without a token; everything else needs one of `http.tokens`.
PUBLIC_PATHS: Final = frozenset({"/health", "/healthz", "/ready", "/metrics"})
# Open as before the API existed while `http.tokens` is empty (which leaves /v1/ closed): a
# router.yaml without tokens keeps its /holds; once tokens are set, it needs one like the API.
OPEN_WITHOUT_TOKENS: Final = PUBLIC_PATHS | {"/holds"}

# The HTTP status of a RouterError: the first class in this table it is an instance of.
ERROR_STATUS: Final[tuple[tuple[type[RouterError], int], ...]] = (
    (ApiUnauthorized, 401),
    (MalformedRequest, 400),
    (InvalidRequest, 422),
    (ReloadRejected, 422),
    (UnknownShard, 422),
    (UnknownTenant, 404),
    (UnknownMove, 404),
    (TenantExists, 409),
    (TenantAlreadyHeld, 409),
    (MoveConflict, 409),
    (MoveError, 409),
    (CatalogUnavailable, 503),
)


def status_of(exc: RouterError) -> int:
    return next((status for cls, status in ERROR_STATUS if isinstance(exc, cls)), 500)


def error_body(sqlstate: str, message: str, hint: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"sqlstate": sqlstate, "message": message}
    if hint is not None:
        error["hint"] = hint
    return {"error": error}


def error_response(exc: RouterError) -> web.Response:
    return web.json_response(error_body(exc.sqlstate, exc.message, exc.hint), status=status_of(exc))


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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(tokens: Sequence[str] | None) -> Middleware:
    """The middleware: the bearer-token check (`tokens` None: none, for a worker's private socket,
    which only its supervisor reaches), then RouterErrors and aiohttp's own (404, 405) as JSON."""
    public = PUBLIC_PATHS if tokens else OPEN_WITHOUT_TOKENS

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if tokens is not None and request.path not in public:
                check_token(request, tokens)
            return await handler(request)
        except RouterError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response(
                error_body("08P01", f"{request.method} {request.path}: {exc.reason}"), status=exc.status
            )

    return middleware


def check_token(request: web.Request, tokens: Sequence[str]) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiUnauthorized(
            f"{request.path} needs a bearer token (Authorization: Bearer ...)",
            hint="without one only /health, /ready and /metrics are served",
        )
    # Compare with every token, whatever matches first: the time taken says nothing.
    matched = [secrets.compare_digest(token.encode(), known.encode()) for known in tokens]
    if not any(matched):
        raise ApiUnauthorized(f"{request.path}: the bearer token is not one of http.tokens")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object, or MalformedRequest."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"the body of {request.method} {request.path} is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MalformedRequest(f"the body of {request.method} {request.path} must be a JSON object")
    return body
