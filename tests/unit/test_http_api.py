"""The HTTP API's pure parts: the OpenAPI document (valid JSON Schema, every route of both
applications documented and nothing more, and strict enough that a wrong field fails), the HTTP
status of each error class, and the bearer-token check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import make_mocked_request

from router.errors import (
    ApiUnauthorized,
    CatalogUnavailable,
    InvalidRequest,
    MalformedRequest,
    MoveConflict,
    MoveError,
    ProvisioningFailed,
    ReloadRejected,
    TenantExists,
    UnknownMove,
    UnknownShard,
    UnknownTenant,
)
from router.ops.http import OPENAPI_PATH, build_app
from router.ops.http_common import check_token, status_of
from router.ops.http_workers import Workers, build_supervisor_app

DOCUMENT: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())


class _Nothing:
    """Stands for the router and the operations: building the applications reads neither."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"building the application read {name}")


def _routes(app: Any) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        found.add((route.method, route.resource.canonical))
    return found


def _documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item if method != "parameters"
    }


def test_every_schema_is_valid_json_schema() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    for schema in DOCUMENT["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)  # raises naming the fault


def test_every_route_of_a_process_is_documented_and_nothing_else() -> None:
    app = build_app(_Nothing(), ["token"], _Nothing())  # type: ignore[arg-type]
    routes = _routes(app) - {("GET", "/healthz")}  # an alias of /health, kept for old probes
    assert routes == _documented()


def test_the_supervisor_serves_no_route_the_document_lacks() -> None:
    app = build_supervisor_app(Workers([Path("/nowhere")]), ["token"], lambda: 0)
    documented = _documented()
    for method, path in _routes(app) - {("GET", "/healthz")}:
        if path == "/v1/{rest}":
            continue  # passed to worker 0, whose routes are the process's
        assert (method, path) in documented, (method, path)


def _validate(schema_name: str, value: Any) -> None:
    schema = {"components": DOCUMENT["components"], "$ref": f"#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema).validate(value)


TENANT = {
    "id": "acme",
    "isolation": "shared",
    "status": "active",
    "shard": "shard_a",
    "reason": "hashed",
    "pinned": None,
    "labels": {},
    "created_at": "2026-12-06T16:00:00+00:00",
}


@pytest.mark.parametrize(
    "wrong",
    [
        {**TENANT, "shard": 5},
        {k: v for k, v in TENANT.items() if k != "reason"},
        {**TENANT, "colour": "red"},
        {**TENANT, "isolation": "galactic"},
        {**TENANT, "status": "sleeping"},
    ],
)
def test_a_wrong_field_fails_the_schema(wrong: dict[str, Any]) -> None:
    _validate("Tenant", TENANT)
    with pytest.raises(jsonschema.ValidationError):
        _validate("Tenant", wrong)


def test_an_error_body_must_carry_a_sqlstate() -> None:
    _validate("Error", {"error": {"sqlstate": "3D000", "message": "tenant 'x' is not in the catalog"}})
    with pytest.raises(jsonschema.ValidationError):
        _validate("Error", {"error": {"message": "no sqlstate"}})
    with pytest.raises(jsonschema.ValidationError):
        _validate("Error", {"error": {"sqlstate": "oops", "message": "not a sqlstate"}})


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ApiUnauthorized("x"), 401),
        (MalformedRequest("x"), 400),
        (InvalidRequest("x"), 422),
        (ReloadRejected("x"), 422),
        (UnknownShard("x"), 422),
        (UnknownTenant("x"), 404),
        (UnknownMove("x"), 404),
        (TenantExists("x"), 409),
        (MoveConflict("x"), 409),
        (MoveError("x"), 409),
        (CatalogUnavailable("x"), 503),
        (ProvisioningFailed("x"), 500),
    ],
)
def test_the_status_of_each_error(error: Exception, status: int) -> None:
    assert status_of(error) == status  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", "Basic right", "Bearer right-but-longer", "Bearer RIGHT"],
)
def test_a_request_without_a_known_token_is_refused(header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    request = make_mocked_request("GET", "/v1/tenants", headers=headers)
    with pytest.raises(ApiUnauthorized):
        check_token(request, ["other", "right"])


@pytest.mark.parametrize("header", ["Bearer right", "bearer right", "Bearer other"])
def test_a_known_token_passes(header: str) -> None:
    check_token(make_mocked_request("GET", "/v1/tenants", headers={"Authorization": header}), ["other", "right"])
