"""The PostgreSQL session (router.protocol.pg.session) on bytes, with a scripted server: what it sends
to the server and to the client for simple and extended queries, pipelines, prepared statements,
refusals, tenant switches, and the hand-over of a server session from one client to another (the
cases the integration tests show on real servers: test_pooling, test_prepared*, test_session_*).
No sockets: the server's answers are fed to the response plan as the server connection would."""

from __future__ import annotations

from typing import Any

import pytest

from router.core.handover import Handover
from router.core.pool import Pool, PoolKey, PoolSettings
from router.core.target import Entry, Target
from router.errors import NoTenant, RouterError
from router.protocol.pg import backend as be
from router.protocol.pg import frontend as fe
from router.protocol.pg.handover import _ENTER_TENANT_PARSE, _LEAVE_TENANT
from router.protocol.pg.prepared import server_statement_for
from router.protocol.pg.read_back import ReadBack
from router.protocol.pg.refusals import refusal
from router.protocol.pg.server_session import ServerSession
from router.protocol.pg.session import Ending, Need, PgSession
from router.protocol.pg.session_core import Phase
from router.sql.inert_statements import LEAVES_ANYTHING, LEAVES_NOTHING, LEAVES_SEQUENCES
from router.sql.session_sql import (
    HANDOVER_DEALLOCATE,
    HANDOVER_DISCARD_SEQUENCES,
    HANDOVER_RESET,
    PREPARED_NAMES_SQL,
    raise_sql,
    session_sync_sql,
    settings_in_force_sql,
)
from router.sql.statements import classify

TENANT_SETTING = "app.tenant_id"
POOL = Pool(PoolKey("a", "127.0.0.1", 5432, "db", "router"), None, PoolSettings(1, 1.0, 1.0, 0.0, 0.0))


def target(tenant: str, entry: Entry | None = None) -> Target:
    return Target(tenant, "a", POOL, {TENANT_SETTING: tenant}, (), entry)


class Address:
    host = "127.0.0.1"
    port = 5432


class FakeRouter:
    """What the session asks of the router (SessionRouter), recorded."""

    def __init__(self, exact_handover: bool = True, transaction_pooling: bool = True) -> None:
        self.exact_handover = exact_handover
        self.transaction_pooling = transaction_pooling
        self.refused_state: frozenset[str] = frozenset()
        self.tenant_setting = TENANT_SETTING
        self.targets = {t: target(t) for t in ("acme", "globex")}
        self.errors: list[str] = []
        self.moves: list[tuple[str | None, str | None]] = []
        self.closed_idle: list[tuple[str, int, tuple[str, ...]]] = []

    def user(self, name: str) -> Any:
        return None

    def resolve_target(self, tenant: str) -> Target:
        return self.targets[tenant]

    def count_error(self, sqlstate: str) -> None:
        self.errors.append(sqlstate)

    def move_client(self, old: str | None, new: str | None) -> None:
        self.moves.append((old, new))

    def close_idle_connections(self, host: str, port: int, databases: tuple[str, ...]) -> None:
        self.closed_idle.append((host, port, databases))


class Client:
    """A logged-in session, driven as the network adapter drives it."""

    def __init__(self, router: FakeRouter | None = None, tenant: str | None = "acme", **settings: str) -> None:
        self.router = router or FakeRouter()
        self.session = PgSession(self.router)
        self.session.role = "app"
        self.session.tenant = self.session.login_tenant = tenant
        self.session.settings = dict(settings)
        self.session.startup_settings = dict(settings)
        self.session.start()

    def send(self, *messages: bytes) -> Need:
        self.session.receive(b"".join(messages))
        return self.session.run()

    def attach(self, conn: ServerSession) -> Handover:
        return self.session.attach(conn, self.session.target(), Address())

    def run_on(self, conn: ServerSession, *messages: bytes) -> Handover:
        """Send messages that need a server, and give them `conn`."""
        assert self.send(*messages) is Need.SERVER
        handover = self.attach(conn)
        self.send()
        return handover

    def to_server(self) -> bytes:
        out = b"".join(self.session.out)
        self.session.out.clear()
        return out

    def to_client(self) -> bytes:
        out = b"".join(self.session.to_client)
        self.session.to_client.clear()
        return out


def respond(conn: ServerSession, *messages: bytes) -> bytes:
    """The server's answers, through the response plan as the server connection forwards them:
    returns what the client sees."""
    seen = bytearray()
    plan = conn.plan
    data = b"".join(messages)
    pos = 0
    while pos < len(data):
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        msg, pos = data[pos:end], end
        if msg[0] == ord("Z"):
            conn.tx_status = msg[5]
        if plan.on_message(msg[0]):
            seen += msg
        seen += plan.ready
        plan.ready.clear()
    return bytes(seen)


def settled(conn: ServerSession) -> bool:
    """What the server connection checks before telling the session the transaction ended."""
    return not conn.plan and conn.synced and conn.tx_status == be.TX_IDLE


OK_SELECT = be.command_complete("SELECT 1") + be.READY_IDLE
SET_DONE = be.command_complete("SELECT 1") + be.READY_IDLE  # the answer to the router's set_config


def desired(tenant: str = "acme", **settings: str) -> dict[str, str]:
    return {**settings, TENANT_SETTING: tenant}


def fresh_sync(tenant: str = "acme", **settings: str) -> bytes:
    sql = session_sync_sql({}, desired(tenant, **settings))
    assert sql is not None
    return fe.query(sql)


# --- simple and extended protocol ------------------------------------------------------------------


def test_a_query_takes_a_server_whose_session_is_made_the_clients_first() -> None:
    client = Client(work_mem="4MB")
    query = fe.query("SELECT 1")
    assert client.send(query) is Need.SERVER
    assert client.session.phase is Phase.WAITING
    assert client.session.read_next is False
    conn = ServerSession()
    assert client.attach(conn) is Handover.KEPT  # a new connection: nobody to hand over from
    assert client.send() is Need.NOTHING
    assert client.to_server() == fresh_sync(work_mem="4MB") + query
    assert conn.owner == client.session.serial
    assert conn.applied == desired(work_mem="4MB")
    # The settings' answer is swallowed; the query's goes to the client.
    assert respond(conn, SET_DONE, OK_SELECT) == OK_SELECT
    assert settled(conn)
    assert client.session.transaction_ended(track_writes=False) is Ending.RELEASE
    assert client.session.server is None


def test_a_server_taken_at_once_serves_the_message_that_asked_for_it() -> None:
    """With the adapter's take_server (an idle connection attached at once), the message that asked
    is handled once, after the server session is made the client's; a wait stops the run."""
    client = Client(work_mem="4MB")
    conn = ServerSession()
    asked = []

    def take_now() -> bool:
        asked.append("now")
        client.attach(conn)
        return True

    client.session.take_server = take_now
    query = fe.query("SELECT 1")
    assert client.send(query) is Need.NOTHING
    assert asked == ["now"]
    assert client.to_server() == fresh_sync(work_mem="4MB") + query
    assert respond(conn, SET_DONE, OK_SELECT) == OK_SELECT
    assert client.session.transaction_ended(track_writes=False) is Ending.RELEASE

    client.session.take_server = lambda: False  # in the pool's line
    assert client.send(query) is Need.SERVER
    assert client.session.phase is Phase.WAITING
    assert client.to_server() == b""


def test_a_pipeline_is_forwarded_in_one_write_and_answered_in_order() -> None:
    client = Client()
    conn = ServerSession()
    first, second = fe.query("SELECT 1"), fe.query("SELECT 2")
    assert client.send(first, second) is Need.SERVER
    client.attach(conn)
    client.send()
    assert client.to_server() == fresh_sync() + first + second
    answers = respond(conn, SET_DONE, OK_SELECT, be.command_complete("SELECT 2") + be.READY_IDLE)
    assert answers == OK_SELECT + be.command_complete("SELECT 2") + be.READY_IDLE


def test_named_statements_are_parsed_under_their_server_name_and_bound_by_it() -> None:
    client = Client()
    conn = ServerSession()
    parse = fe.build_parse("s1", "SELECT $1::int", b"\x00\x00")
    bind = fe.bind("", "s1", ("7",))
    assert client.send(parse, bind, fe.execute(""), fe.SYNC) is Need.SERVER
    client.attach(conn)
    client.send()
    named = server_statement_for(fe.parse_parse(parse), "")
    portal, _name, rest_at = fe.split_bind(bind)
    renamed_bind = fe.rename_bind(bind, portal, named.name, rest_at)
    assert client.to_server() == fresh_sync() + named.parse_message + renamed_bind + fe.execute("") + fe.SYNC
    assert named.name in conn.prepared
    answers = respond(
        conn, SET_DONE, be.PARSE_COMPLETE, be.BIND_COMPLETE, be.command_complete("SELECT 1"), be.READY_IDLE
    )
    assert answers == be.PARSE_COMPLETE + be.BIND_COMPLETE + be.command_complete("SELECT 1") + be.READY_IDLE
    assert named.name in conn.plan.parsed
    assert client.session.transaction_ended(track_writes=False) is Ending.RELEASE
    # On a connection that lacks it, the Bind parses it first, and its ParseComplete is swallowed.
    other = ServerSession()
    assert client.send(bind, fe.execute(""), fe.SYNC) is Need.SERVER
    client.attach(other)
    client.send()
    assert client.to_server() == fresh_sync() + named.parse_message + renamed_bind + fe.execute("") + fe.SYNC
    answers = respond(
        other, SET_DONE, be.PARSE_COMPLETE, be.BIND_COMPLETE, be.command_complete("SELECT 1"), be.READY_IDLE
    )
    assert answers == be.BIND_COMPLETE + be.command_complete("SELECT 1") + be.READY_IDLE


def test_closing_a_named_statement_is_answered_by_the_router() -> None:
    client = Client()
    client.session.statements.define("s1", fe.parse_parse(fe.build_parse("s1", "SELECT 1", b"\x00\x00")), 1)
    assert client.send(fe.close(b"S", "s1"), fe.SYNC) is Need.NOTHING
    assert client.to_client() == be.CLOSE_COMPLETE + be.READY_IDLE
    assert client.to_server() == b""
    assert "s1" not in client.session.statements


def test_a_statement_parsed_on_the_database_before_is_answered_without_a_server() -> None:
    client = Client()
    parse = fe.build_parse("s1", "SELECT 1", b"\x00\x00")
    POOL.valid_statements.add(server_statement_for(fe.parse_parse(parse), "").name)
    try:
        assert client.send(parse) is Need.NOTHING
        assert client.to_client() == be.PARSE_COMPLETE
        assert "s1" in client.session.statements
    finally:
        POOL.valid_statements.clear()


def test_a_statement_name_defined_twice_fails_in_the_pipeline_like_postgresql() -> None:
    client = Client()
    conn = ServerSession()
    parse = fe.build_parse("s1", "SELECT 1", b"\x00\x00")
    client.send(parse)
    client.attach(conn)
    client.send(fe.SYNC)
    client.to_server()
    assert client.send(parse, fe.bind("", "s1", ()), fe.SYNC) is Need.NOTHING
    raising = fe.build_parse("", raise_sql("42P05", 'prepared statement "s1" already exists'), b"\x00\x00")
    # The server raises the error; the Bind after it is discarded; the Sync is the server's to answer.
    assert client.to_server() == raising + fe.bind("", "", ()) + fe.execute("") + fe.SYNC


# --- refusals and discarding -------------------------------------------------------------------------


def test_a_refused_request_is_answered_and_its_messages_discarded_up_to_the_sync() -> None:
    client = Client(tenant=None)
    assert client.send(fe.build_parse("", "SELECT 1", b"\x00\x00"), fe.bind("", "", ()), fe.execute("")) is Need.SERVER
    with pytest.raises(NoTenant) as refused:
        client.session.target()
    client.session.refuse(refused.value)
    assert client.session.run() is Need.NOTHING
    assert client.to_client() == be.error_response(
        refused.value.sqlstate, refused.value.message, hint=refused.value.hint
    )
    # Still discarding: the Sync ends it, answered by the router (no server is attached).
    assert client.send(fe.describe(b"P", ""), fe.SYNC) is Need.NOTHING
    assert client.to_client() == be.READY_IDLE
    assert client.router.errors == [refused.value.sqlstate]
    assert client.to_server() == b""


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [("SET ROLE admin", "42501"), ("CREATE ROLE intruder", "42501"), ("ALTER USER app SUPERUSER", "42501")],
)
def test_statements_on_who_the_session_acts_as_are_raised_by_the_server_instead(sql: str, sqlstate: str) -> None:
    client = Client()
    conn = ServerSession()
    client.run_on(conn, fe.query(sql))
    instead = refusal(classify(sql), False, frozenset())
    assert instead is not None and sqlstate in instead
    assert client.to_server() == fresh_sync() + fe.query(instead)


def test_large_objects_are_refused_to_shared_tenants_only() -> None:
    for shared in (True, False):
        router = FakeRouter()
        router.targets["acme"] = target("acme", Entry("acme", "sig") if shared else None)
        client = Client(router)
        conn = ServerSession()
        client.run_on(conn, fe.query("SELECT lo_create(0)"))
        assert (b"0A000" in client.to_server()) is shared


def test_a_fast_path_function_call_is_refused_to_a_shared_tenant() -> None:
    router = FakeRouter()
    router.targets["acme"] = target("acme", Entry("acme", "sig"))
    client = Client(router)
    conn = ServerSession()
    call = b"F\x00\x00\x00\x0e\x00\x00\x03\xe8\x00\x00\x00\x00\x00\x00"
    client.run_on(conn, call)
    assert b"0A000" in client.to_server()
    assert conn.residue == LEAVES_ANYTHING


def test_an_unknown_message_type_fails_the_session() -> None:
    client = Client()
    assert client.send(b"?\x00\x00\x00\x04") is Need.FAIL
    assert client.session.failure is not None
    assert "unexpected message type" in client.session.failure.message


def test_terminate_closes() -> None:
    assert Client().send(fe.TERMINATE) is Need.CLOSE


# --- tenant switching ----------------------------------------------------------------------------------


def test_a_trusted_user_switches_tenant_and_the_next_transaction_runs_as_the_new_one() -> None:
    client = Client()
    client.session.tenant_switch_allowed = True
    assert client.send(fe.query("SET router.tenant = 'globex'")) is Need.NOTHING
    assert client.to_client() == be.command_complete("SET") + be.READY_IDLE
    assert client.session.tenant == "globex"
    assert client.router.moves == [("acme", "globex")]
    client.send(fe.query("SHOW router.tenant"))
    assert client.to_client() == be.show_result("router.tenant", "globex")
    client.send(fe.query("SELECT 1"))
    client.attach(ServerSession())
    client.send()
    assert client.to_server().startswith(fresh_sync("globex"))
    client.session.transaction_ended(track_writes=False)
    client.send(fe.query("RESET router.tenant"))
    assert client.session.tenant == "acme"


def test_a_user_not_trusted_to_switch_tenant_is_refused() -> None:
    client = Client()
    client.send(fe.query("SET router.tenant = 'globex'"))
    out = client.to_client()
    assert b"not allowed to switch tenant" in out
    assert out.endswith(be.READY_IDLE)
    assert client.session.tenant == "acme"


def test_switching_tenant_inside_a_transaction_is_raised_by_the_server() -> None:
    client = Client()
    client.session.tenant_switch_allowed = True
    conn = ServerSession()
    client.run_on(conn, fe.query("BEGIN"))
    respond(conn, SET_DONE, be.command_complete("BEGIN") + be.ready_for_query(be.TX_IN_TRANSACTION))
    client.to_server()
    client.send(fe.query("SET router.tenant = 'globex'"))
    assert b"25001" in client.to_server()
    assert client.session.tenant == "acme"


# --- the hand-over ----------------------------------------------------------------------------------------


def used_by(client: Client, sql: str = "SELECT 1") -> ServerSession:
    """A server session another client used for one transaction, then let go."""
    conn = ServerSession()
    client.run_on(conn, fe.query(sql))
    client.to_server()
    respond(conn, SET_DONE, be.command_complete("X") + be.READY_IDLE)
    assert client.session.transaction_ended(track_writes=False) is Ending.RELEASE
    return conn


@pytest.mark.parametrize(
    ("sql", "left", "handover", "ahead"),
    [
        # An inert session passes as it is: nothing ahead of the next client's message.
        ("SELECT 1", LEAVES_NOTHING, Handover.AS_IS, b""),
        # One that wrote rows has its sequences reset (currval() would tell the last key).
        ("INSERT INTO t VALUES (1)", LEAVES_SEQUENCES, Handover.SEQUENCES_RESET, fe.query(HANDOVER_DISCARD_SEQUENCES)),
        # One that ran anything not judged is wiped, and the settings applied again.
        (
            "SELECT my_function()",
            LEAVES_ANYTHING,
            Handover.WIPED,
            fe.query(f"{HANDOVER_RESET}; {session_sync_sql({}, desired())}"),
        ),
    ],
)
def test_the_next_client_gets_the_session_cleared_of_what_the_last_one_may_have_left(
    sql: str, left: int, handover: Handover, ahead: bytes
) -> None:
    conn = used_by(Client(), sql)
    assert conn.residue == left
    client = Client()
    query = fe.query("SELECT 2")
    assert client.run_on(conn, query) is handover
    assert client.to_server() == ahead + query
    assert conn.residue == LEAVES_NOTHING


def test_an_untrusted_search_path_makes_every_session_wiped() -> None:
    conn = used_by(Client(search_path="tenant_schema"), "SELECT 1")
    assert conn.residue == LEAVES_ANYTHING


def test_the_router_statements_are_deallocated_when_the_session_passes_to_another_tenant() -> None:
    owner = Client()
    conn = ServerSession()
    owner.run_on(conn, fe.build_parse("s1", "SELECT 1", b"\x00\x00"), fe.SYNC)
    respond(conn, SET_DONE, be.PARSE_COMPLETE, be.READY_IDLE)
    owner.session.transaction_ended(track_writes=False)
    assert conn.prepared
    same_tenant = Client()
    assert same_tenant.run_on(conn, fe.query("SELECT 1")) is Handover.AS_IS
    assert same_tenant.to_server() == fe.query("SELECT 1")  # kept: clients of one tenant share them
    respond(conn, OK_SELECT)
    same_tenant.session.transaction_ended(track_writes=False)
    other = Client(tenant="globex")
    other.run_on(conn, fe.query("SELECT 1"))
    sync = session_sync_sql(desired(), desired("globex"))
    assert other.to_server() == fe.query(f"{HANDOVER_DEALLOCATE}; {sync}") + fe.query("SELECT 1")
    assert not conn.prepared


def test_changed_settings_are_read_back_and_follow_the_client_to_its_next_server() -> None:
    client = Client()
    conn = ServerSession()
    client.run_on(conn, fe.query("SET work_mem = '8MB'"))
    client.to_server()
    respond(conn, SET_DONE, be.command_complete("SET") + be.READY_IDLE)
    assert client.session.transaction_ended(track_writes=False) is Ending.READ_BACK
    assert client.session.read_backs == [ReadBack.SETTINGS]
    assert client.session.read_back_sql(ReadBack.SETTINGS) == settings_in_force_sql({"work_mem"})
    client.session.read_back(ReadBack.SETTINGS, [["work_mem", "8MB"], [TENANT_SETTING, "acme"]])
    assert client.session.read_back_done() is Ending.RELEASE
    assert client.session.settings == {"work_mem": "8MB"}
    assert conn.applied == {"work_mem": "8MB", TENANT_SETTING: "acme"}
    nxt = ServerSession()
    client.run_on(nxt, fe.query("SELECT 1"))
    assert client.to_server() == fresh_sync(work_mem="8MB") + fe.query("SELECT 1")


def test_discard_all_reads_back_settings_and_statements_and_enters_again() -> None:
    router = FakeRouter()
    router.targets["acme"] = target("acme", Entry("acme", "sig"))
    client = Client(router)
    client.session.statements.define("s1", fe.parse_parse(fe.build_parse("s1", "SELECT 1", b"\x00\x00")), 1)
    conn = ServerSession()
    conn.prepared["trs_x"] = 5
    client.run_on(conn, fe.query("DISCARD ALL"))
    assert conn.entered == "acme"
    assert "s1" not in client.session.statements
    assert conn.prepared == {} and conn.prepared_unsure
    client.to_server()
    assert client.session.transaction_ended(track_writes=False) is Ending.READ_BACK
    assert client.session.read_backs == [ReadBack.SETTINGS, ReadBack.PREPARED]
    assert client.session.read_back_sql(ReadBack.PREPARED) == PREPARED_NAMES_SQL
    client.session.read_back(ReadBack.SETTINGS, [])
    client.session.read_back(ReadBack.PREPARED, [["trs_x"]])
    assert conn.prepared == {"trs_x": 0} and not conn.prepared_unsure
    assert conn.entered is None  # RESET ALL left the tenant: the next use enters it again


def test_entering_a_shared_tenant_leaves_the_one_the_session_had_first() -> None:
    router = FakeRouter()
    router.targets["acme"] = target("acme", Entry("acme", "sig"))
    client = Client(router)
    conn = ServerSession()
    conn.entered = "globex"
    client.run_on(conn, fe.query("SELECT 1"))
    enter = _ENTER_TENANT_PARSE + fe.bind("", "", ("acme", "sig")) + fe.execute("") + fe.SYNC
    assert client.to_server() == _LEAVE_TENANT + fresh_sync() + enter + fe.query("SELECT 1")
    assert conn.entered == "acme"
    assert conn.plan.setting_up()


def test_a_failed_setup_marks_the_connection_to_be_dropped() -> None:
    client = Client()
    conn = ServerSession()
    client.run_on(conn, fe.query("SELECT 1"))
    answers = respond(conn, be.error_response("22023", "bad setting") + be.READY_IDLE, OK_SELECT)
    assert conn.plan.setup_failed
    assert answers.startswith(be.error_response("22023", "bad setting"))


def test_a_pinned_session_keeps_its_server_and_a_committed_write_is_read_back() -> None:
    client = Client()
    conn = ServerSession()
    client.run_on(conn, fe.query("LISTEN news"))
    respond(conn, SET_DONE, be.command_complete("LISTEN") + be.READY_IDLE)
    assert client.session.transaction_ended(track_writes=False) is Ending.KEEP
    assert client.session.server is conn
    client.to_server()
    client.send(fe.query("INSERT INTO t VALUES (1)"))
    assert client.to_server() == fe.query("INSERT INTO t VALUES (1)")
    respond(conn, be.command_complete("INSERT 0 1") + be.READY_IDLE)
    assert client.session.transaction_ended(track_writes=True) is Ending.READ_BACK
    assert client.session.read_backs == [ReadBack.COMMIT_POSITION]
    assert client.session.read_back(ReadBack.COMMIT_POSITION, [["0/3000000", "0", "8192"]]) > 0
    with pytest.raises(RouterError):
        client.session.read_back(ReadBack.COMMIT_POSITION, [])
    assert client.session.read_back_done() is Ending.KEEP


def test_the_server_parameters_the_client_has_not_seen_are_reported_once() -> None:
    session = Client().session
    assert session.report_parameters({"TimeZone": "UTC"}) == be.parameter_status("TimeZone", "UTC")
    assert session.report_parameters({"TimeZone": "UTC"}) == b""
