"""The HTTP API end to end, against a running router with an HTTP port and a bearer token (from
${ENV}, as an operator writes it): every endpoint, each live answer validated against the schema
router/ops/openapi.json gives for its path, method and status (an answer of an undocumented status
fails too); auth failures (no token, a wrong one, another scheme); bad input (malformed JSON, a
body that is not an object, an unknown tenant, an invalid isolation or id, an unknown shard or
field); a tenant added, suspended (its clients refused), resumed and moved with its data through
the API; and the same endpoints served by a supervisor of two workers."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import psycopg
import pytest

from router.admin.tenant_admin import list_tenants, remove_tenant
from router.ops.http import OPENAPI_PATH
from router.testing.deploy import APP_PASSWORD, APP_USER, load
from router.testing.pgcluster import free_port
from router.testing.routerthread import RouterThread
from router.testing.waiting import wait_until

from .conftest import Deployment, RouterFactory, url
from .test_scaleout import Launch, launch  # noqa: F401  (the fixture: `tenant-router serve` with workers)

TOKEN = "s3cret-api-token"
DOCUMENT: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())


def _template(path: str) -> str | None:
    """The document's path template that `path` (without its query) matches."""
    for template in DOCUMENT["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            return str(template)
    return None


def check_against_document(method: str, path: str, status: int, content_type: str, body: Any) -> None:
    """`body` is what the document says `method path` answers with `status`: its schema validates it.
    A path the document lacks may only be refused (401 without a token, else 404), with an Error."""
    template = _template(path)
    if template is None:
        assert status in (401, 404), f"{method} {path} is not in the OpenAPI document, yet answered {status}"
        schema = {"components": DOCUMENT["components"], "$ref": "#/components/schemas/Error"}
        jsonschema.Draft202012Validator(schema).validate(body)
        return
    operation = DOCUMENT["paths"][template].get(method.lower())
    assert operation is not None, f"{method} {path} is not in the OpenAPI document"
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {path} answered {status}, which the document does not list"
    media = content_type.split(";")[0].strip()
    assert media in response["content"], f"{method} {path} {status}: {media} is not documented"
    schema = {"components": DOCUMENT["components"], **response["content"][media]["schema"]}
    jsonschema.Draft202012Validator(schema).validate(body)


class Api:
    """An HTTP client of one router; every answer is checked against the document."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN, raw: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            content_type = response.getheader("Content-Type", "")
            text = response.read().decode()
        finally:
            conn.close()
        payload: Any = json.loads(text) if content_type.startswith("application/json") else text
        check_against_document(method, path, response.status, content_type, payload)
        return response.status, payload

    def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return self.request("POST", path, body, **kwargs)


@pytest.fixture(autouse=True)
def _remove_added_tenants(deployment: Deployment) -> Iterator[None]:
    """The tenants a test added (all named api-...) leave the shared deployment with their rows."""
    yield
    config, topology = load(deployment.directory / "router.yaml")
    for view in asyncio.run(list_tenants(config, topology)):
        if view.tenant.id.startswith("api-"):
            asyncio.run(remove_tenant(config, topology, view.tenant.id, drop_data=True))
    for shard in deployment.env.shards.values():
        shard.execute("DELETE FROM items WHERE tenant_id LIKE 'api-%'", "app")


@pytest.fixture
def api_router(make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch) -> RouterThread:
    monkeypatch.setenv("TR_TEST_API_TOKEN", TOKEN)
    return make_router(http_port=free_port(), extra={"http": {"tokens": ["${TR_TEST_API_TOKEN}", "another-token"]}})


@pytest.fixture
def api(api_router: RouterThread) -> Api:
    api = Api(api_router.http_port)
    wait_until(lambda: api.get("/ready", token=None)[0] == 200, "the router to be ready", within=15)
    return api


def sqlstate_of(payload: dict[str, Any]) -> str:
    return str(payload["error"]["sqlstate"])


# --- without a token ---------------------------------------------------------------------------------


def test_health_ready_and_metrics_need_no_token(api: Api) -> None:
    status, health = api.get("/health", token=None)
    assert (status, health["status"], health["catalog_connected"]) == (200, "ok", True)
    assert health["tenants"] >= 6
    status, ready = api.get("/ready", token=None)
    assert (status, ready) == (200, {"ready": True, "reasons": []})
    status, metrics = api.get("/metrics", token=None)
    assert status == 200 and "tenant_router_clients " in metrics


@pytest.mark.parametrize(
    "path", ["/holds", "/openapi.json", "/v1/tenants", "/v1/tenants/acme", "/v1/pools", "/v1/moves", "/v1/nowhere"]
)
@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_everything_else_needs_a_valid_token(api: Api, path: str, token: str | None) -> None:
    status, payload = api.get(path, token=token)
    assert status == 401, payload
    assert sqlstate_of(payload) == "28000"
    assert "token" in payload["error"]["message"]


def test_posts_without_a_valid_token_change_nothing(api: Api, deployment: Deployment) -> None:
    for token in (None, "wrong-token"):
        status, payload = api.post("/v1/tenants/acme/suspend", token=token)
        assert status == 401, payload
        status, payload = api.post("/v1/tenants", {"id": "never-added"}, token=token)
        assert status == 401, payload
    assert api.get("/v1/tenants/acme")[1]["status"] == "active"
    assert api.get("/v1/tenants/never-added")[0] == 404


def test_another_scheme_is_refused(api: Api) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    conn.request("GET", "/v1/tenants", headers={"Authorization": f"Basic {TOKEN}"})
    response = conn.getresponse()
    assert response.status == 401
    assert sqlstate_of(json.loads(response.read())) == "28000"
    conn.close()


def test_every_token_of_the_config_is_accepted(api: Api) -> None:
    assert api.get("/v1/pools", token="another-token")[0] == 200


# --- with a token ----------------------------------------------------------------------------------


def test_the_document_is_served(api: Api) -> None:
    status, document = api.get("/openapi.json")
    assert status == 200 and document == DOCUMENT


def test_tenants_list_and_show_with_their_shard_and_why(api: Api, deployment: Deployment) -> None:
    status, listing = api.get("/v1/tenants")
    assert status == 200
    tenants = {t["id"]: t for t in listing["tenants"]}
    assert {"acme", "globex", "initech", "umbrella", "bigcorp", "hooli"} <= set(tenants)
    for tenant_id, shard in deployment.placement.items():
        assert tenants[tenant_id]["shard"] == shard, tenants[tenant_id]
    assert (tenants["bigcorp"]["reason"], tenants["bigcorp"]["pinned"]) == ("catalog pin", "shard_b")
    assert tenants["hooli"]["status"] == "suspended"
    status, umbrella = api.get("/v1/tenants/umbrella")
    assert status == 200
    assert (umbrella["isolation"], umbrella["shard"]) == ("database", deployment.placement["umbrella"])
    assert umbrella == tenants["umbrella"]


def test_unknown_tenant_is_404_with_its_sqlstate(api: Api) -> None:
    for method, path in (
        ("GET", "/v1/tenants/nobody"),
        ("POST", "/v1/tenants/nobody/suspend"),
        ("POST", "/v1/tenants/nobody/resume"),
    ):
        status, payload = api.request(method, path)
        assert status == 404, (method, path, payload)
        assert sqlstate_of(payload) == "3D000" and "nobody" in payload["error"]["message"]
    status, payload = api.post("/v1/tenants/nobody/move", {"to": "shard_b"})
    assert (status, sqlstate_of(payload)) == (404, "3D000"), payload


def test_add_suspend_resume_a_tenant(api: Api, api_router: RouterThread) -> None:
    status, added = api.post("/v1/tenants", {"id": "api-added", "isolation": "shared", "labels": {"plan": "pro"}})
    assert status == 201, added
    assert (added["id"], added["isolation"], added["status"], added["labels"]) == (
        "api-added",
        "shared",
        "active",
        {"plan": "pro"},
    )
    assert api.get("/v1/tenants/api-added")[1] == added
    status, again = api.post("/v1/tenants", {"id": "api-added"})
    assert (status, sqlstate_of(again)) == (409, "42710"), again

    status, pinned = api.post("/v1/tenants", {"id": "api-pinned", "shard": "shard_b"})
    assert status == 201 and (pinned["shard"], pinned["reason"]) == ("shard_b", "catalog pin"), pinned

    with psycopg.connect(url(api_router, "api-added"), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('through the router')")
    status, suspended = api.post("/v1/tenants/api-added/suspend")
    assert (status, suspended["status"]) == (200, "suspended")

    def refused() -> bool:
        try:
            psycopg.connect(url(api_router, "api-added"), connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            return "suspended" in str(exc)
        return False

    wait_until(refused, "the suspended tenant's logins to be refused", within=10)
    status, resumed = api.post("/v1/tenants/api-added/resume")
    assert (status, resumed["status"]) == (200, "active")
    wait_until(lambda: not refused(), "the resumed tenant to be served again", within=10)
    with psycopg.connect(url(api_router, "api-added"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row is not None and row[0] == 1


@pytest.mark.parametrize(
    ("body", "status", "sqlstate", "words"),
    [
        ({"id": "bad-iso", "isolation": "galactic"}, 422, "22023", "invalid isolation 'galactic'"),
        ({"id": "Not A Valid Id!"}, 422, "22023", "invalid tenant id"),
        ({"isolation": "shared"}, 422, "22023", "'id' is required"),
        ({"id": 42}, 422, "22023", "must be a string"),
        ({"id": "bad-labels", "labels": ["x"]}, 422, "22023", "must be a JSON object"),
        ({"id": "bad-shard", "shard": "shard_z"}, 422, "42704", "shard_z"),
        ({"id": "bad-field", "colour": "red"}, 422, "22023", "unknown field(s): colour"),
        (["bad", "body"], 400, "22P02", "must be a JSON object"),
    ],
)
def test_adding_with_bad_input(api: Api, body: Any, status: int, sqlstate: str, words: str) -> None:
    got, payload = api.post("/v1/tenants", body)
    assert (got, sqlstate_of(payload)) == (status, sqlstate), payload
    assert words in payload["error"]["message"], payload


def test_malformed_json(api: Api) -> None:
    for path in ("/v1/tenants", "/v1/tenants/acme/move"):
        status, payload = api.post(path, raw=b'{"id": "half')
        assert (status, sqlstate_of(payload)) == (400, "22P02"), payload
        assert "not JSON" in payload["error"]["message"]
        status, payload = api.post(path, raw=b"")
        assert (status, sqlstate_of(payload)) == (400, "22P02"), payload


def test_a_move_through_the_api(api: Api, api_router: RouterThread, deployment: Deployment) -> None:
    status, added = api.post("/v1/tenants", {"id": "api-mover", "shard": "shard_a"})
    assert status == 201, added
    with psycopg.connect(url(api_router, "api-mover"), autocommit=True) as conn:
        for n in range(20):
            conn.execute("INSERT INTO items (name) VALUES (%s)", (f"row {n}",))

    status, payload = api.post("/v1/tenants/api-mover/move", {"to": "shard_a"})
    assert (status, sqlstate_of(payload)) == (409, "55000") and "already" in payload["error"]["message"], payload
    status, payload = api.post("/v1/tenants/api-mover/move", {"to": "shard_z"})
    assert (status, sqlstate_of(payload)) == (422, "42704"), payload
    status, payload = api.post("/v1/tenants/api-mover/move", {})
    assert (status, sqlstate_of(payload)) == (422, "22023"), payload

    status, move = api.post("/v1/tenants/api-mover/move", {"to": "shard_b"})
    assert status == 202, move
    assert (move["tenant_id"], move["source"], move["target"]) == ("api-mover", "shard_a", "shard_b")
    move_id = move["move_id"]
    status, again = api.post("/v1/tenants/api-mover/move", {"to": "shard_a"})
    assert (status, sqlstate_of(again)) == (409, "55006"), again  # moving elsewhere already

    def finished() -> dict[str, Any] | None:
        row = api.get(f"/v1/moves/{move_id}")[1]
        return row if row["finished"] else None

    row = wait_until(finished, "the move to finish", within=120)
    assert row["stage"] == "cleaned", row
    assert row["rows_copied"] >= 20, row
    listed = {m["move_id"]: m for m in api.get("/v1/moves")[1]["moves"]}
    assert listed[move_id]["stage"] == "cleaned"
    tenant = api.get("/v1/tenants/api-mover")[1]
    assert (tenant["shard"], tenant["reason"]) == ("shard_b", "catalog pin"), tenant
    with psycopg.connect(url(api_router, "api-mover"), autocommit=True) as conn:
        row_count = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row_count is not None and row_count[0] == 20
    shard_b = deployment.env.shards["shard_b"]
    assert shard_b.execute("SELECT count(*) FROM items WHERE tenant_id = 'api-mover'", "app").strip() == "20"


def test_unknown_move(api: Api) -> None:
    status, payload = api.get("/v1/moves/987654")
    assert (status, sqlstate_of(payload)) == (404, "42704"), payload
    status, payload = api.get("/v1/moves/first")
    assert (status, sqlstate_of(payload)) == (422, "22023"), payload


def test_pools_reload_and_holds(api: Api, api_router: RouterThread) -> None:
    with psycopg.connect(url(api_router, "acme"), autocommit=True) as conn:
        conn.execute("SELECT 1")
    status, pools = api.get("/v1/pools")
    assert status == 200
    shards = {p["shard"] for p in pools["pools"]}
    assert shards, pools
    assert all(p["size"] == 10 and "worker" not in p for p in pools["pools"])
    status, reloaded = api.post("/v1/reload")
    assert (status, reloaded) == (200, {"reloaded": True})
    assert api.get("/v1/holds")[1] == {"held_now": [], "held_ever": {}}
    assert api.get("/holds")[1] == {"held_now": [], "held_ever": {}}


def test_a_rejected_reload_is_422_and_changes_nothing(api: Api, api_router: RouterThread) -> None:
    shards_file = api_router.router.config.shards_file
    before = api_router.router.topology
    good = shards_file.read_text()
    shards_file.write_text("shards: [this is not a topology\n")
    try:
        status, payload = api.post("/v1/reload")
    finally:
        shards_file.write_text(good)
    assert (status, sqlstate_of(payload)) == (422, "F0000"), payload
    # Equal, not the same object: the file watcher may reload the restored file meanwhile.
    assert api_router.router.topology == before


def test_wrong_method_and_unknown_path(api: Api) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    conn.request("DELETE", "/v1/tenants", headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    assert response.status == 405
    assert "error" in json.loads(response.read())
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    conn.request("GET", "/v1/nowhere", headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    assert response.status == 404
    assert "error" in json.loads(response.read())
    conn.close()


def test_not_ready_while_a_primary_is_down(make_router: RouterFactory, deployment: Deployment) -> None:
    """A shard whose primary nobody listens on: /ready says 503 and names it; /health stays ok."""
    dead = free_port()
    router = make_router(http_port=free_port(), extra_shards={"shard_dead": ("127.0.0.1", dead)})
    api = Api(router.http_port)

    def reasons() -> list[str] | None:
        status, payload = api.get("/ready", token=None)
        return payload["reasons"] if status == 503 and any("is down" in r for r in payload["reasons"]) else None

    found = wait_until(reasons, "/ready to name the down primary", within=15)
    assert any(f"shard shard_dead: primary 127.0.0.1:{dead} is down" in r for r in found), found
    assert api.get("/health", token=None)[0] == 200


def test_without_tokens_the_api_is_closed(make_router: RouterFactory) -> None:
    """A router.yaml without http.tokens: /v1/ is closed; /holds stays open, as it was before."""
    router = make_router(http_port=free_port())
    api = Api(router.http_port)
    assert api.get("/health", token=None)[0] == 200
    assert api.get("/holds", token=None) == (200, {"held_now": [], "held_ever": {}})
    for path in ("/v1/tenants", "/v1/holds", "/openapi.json"):
        status, payload = api.get(path, token="anything")
        assert (status, sqlstate_of(payload)) == (401, "28000"), path


# --- a supervisor of two workers -------------------------------------------------------------------


@pytest.fixture
def workers_api(launch: Launch, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Api]]:  # noqa: F811
    monkeypatch.setenv("TR_TEST_API_TOKEN", TOKEN)
    router = launch(workers=2, http={"host": "127.0.0.1", "tokens": ["${TR_TEST_API_TOKEN}"]})
    yield router, Api(router.http_port)


def test_the_supervisor_serves_health_ready_metrics_and_holds(workers_api: tuple[Any, Api]) -> None:
    _router, api = workers_api
    status, health = api.get("/health", token=None)
    assert (status, health["workers"], health["workers_answering"]) == (200, 2, 2), health
    wait_until(lambda: api.get("/ready", token=None)[0] == 200, "both workers to be ready", within=15)
    status, metrics = api.get("/metrics", token=None)
    assert status == 200 and "tenant_router_clients " in metrics
    assert api.get("/holds", token=None)[0] == 401
    assert api.get("/holds")[1] == {"held_now": [], "held_ever": {}}
    assert api.get("/v1/holds")[1] == {"held_now": [], "held_ever": {}}


def test_the_supervisor_passes_the_api_on(workers_api: tuple[Any, Api], deployment: Deployment) -> None:
    router, api = workers_api
    assert api.get("/v1/tenants", token="wrong")[0] == 401
    status, acme = api.get("/v1/tenants/acme")
    assert (status, acme["shard"]) == (200, deployment.placement["acme"])
    status, payload = api.get("/v1/tenants/nobody")
    assert (status, sqlstate_of(payload)) == (404, "3D000")
    status, payload = api.post("/v1/tenants", raw=b"{not json")
    assert (status, sqlstate_of(payload)) == (400, "22P02")
    for _ in range(4):  # a few connections, so that some worker has a pool
        with psycopg.connect(f"postgresql://{APP_USER}.acme:{APP_PASSWORD}@127.0.0.1:{router.port}/app") as conn:
            conn.execute("SELECT 1")
    status, pools = api.get("/v1/pools")
    assert status == 200 and pools["pools"] and all(p["worker"] in (0, 1) for p in pools["pools"]), pools
    status, reloaded = api.post("/v1/reload")
    assert (status, reloaded) == (200, {"reloaded": True})
