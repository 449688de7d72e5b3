"""ResponsePlan: which server messages a client sees, and where synthetic responses land.

Scenarios are written as the router would drive a plan: the requests it sent (one token each), then
the server's messages (one type letter each). What the client sees is the forwarded letters, with
synthetic responses shown as `+<letter>` where they come out. A model-based test then checks the plan
against a model of the server, with the client's messages arriving in arbitrary chunks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.protocol.pg import backend as be
from router.protocol.pg import responses as r
from router.protocol.pg.framing import read_header
from router.protocol.pg.responses import ResponsePlan

ENDS = {
    "P": r.ENDS_PARSE,
    "B": r.ENDS_BIND,
    "D": r.ENDS_DESCRIBE,
    "E": r.ENDS_EXECUTE,
    "C": r.ENDS_CLOSE,
    "S": r.ENDS_SYNC,  # Sync
    "Q": r.ENDS_SYNC,  # Query (and FunctionCall) end the same way
}
SYNTHETIC = {"1": be.PARSE_COMPLETE, "3": be.CLOSE_COMPLETE, "n": be.NO_DATA}


def add_requests(plan: ResponsePlan, requests: str) -> None:
    """`P` expect a ParseComplete, `P~` swallowed, `P:name` for a named server statement, `+1` a
    synthetic ParseComplete; likewise B, D, E, C, S, Q (see ENDS) and +3, +n (see SYNTHETIC)."""
    for token in requests.split():
        kind, rest = token[0], token[1:]
        if kind == "+":
            plan.synthesize(SYNTHETIC[rest])
            continue
        statement = rest.partition(":")[2] or None
        if statement is not None:
            plan.prepared[statement] = 1  # recorded when sent, as the router does
        plan.expect(ENDS[kind], swallow=rest.startswith("~"), statement=statement)


def take_ready(plan: ResponsePlan, seen: list[str]) -> None:
    data = bytes(plan.ready)
    plan.ready.clear()
    pos = 0
    while pos < len(data):
        header = read_header(data, pos)
        assert header is not None
        seen.append("+" + chr(header[0]))
        pos += header[1]


def feed(plan: ResponsePlan, server: str) -> str:
    """Feed server messages as the server connection does; return what the client sees."""
    seen: list[str] = []
    take_ready(plan, seen)
    for letter in server.split():
        if plan.on_message(ord(letter)):
            seen.append(letter)
        take_ready(plan, seen)
    return " ".join(seen)


SCENARIOS = [
    # (requests, server messages, what the client sees, failed statements)
    pytest.param("Q", "T D D C Z", "T D D C Z", [], id="simple-query"),
    pytest.param("Q", "I Z", "I Z", [], id="empty-query"),
    pytest.param("Q", "H d d c C Z", "H d d c C Z", [], id="copy-out"),
    pytest.param("Q", "T D C T D C Z", "T D C T D C Z", [], id="multi-statement-query"),
    pytest.param("Q~ Q", "S C Z T D C Z", "S T D C Z", [], id="injected-set-swallowed-but-parameter-status-shown"),
    pytest.param("Q~ Q", "N C C Z C Z", "N C Z", [], id="injected-query-notice-shown"),
    pytest.param("Q~ Q", "E Z T D C Z", "E T D C Z", [], id="injected-query-error-shown-its-ready-swallowed"),
    pytest.param("P B D E S", "1 2 T D D C Z", "1 2 T D D C Z", [], id="extended-query"),
    pytest.param("P D S", "1 t T Z", "1 t T Z", [], id="describe-statement-with-rows"),
    pytest.param("P D S", "1 t n Z", "1 t n Z", [], id="describe-statement-without-rows"),
    pytest.param("B D E S", "2 n C Z", "2 n C Z", [], id="describe-portal"),
    pytest.param("B E S", "2 D D s Z", "2 D D s Z", [], id="portal-suspended"),
    pytest.param("B E S", "2 I Z", "2 I Z", [], id="empty-query-in-execute"),
    pytest.param("B E S", "2 G C Z", "2 G C Z", [], id="copy-in-in-execute"),
    pytest.param("C S", "3 Z", "3 Z", [], id="close-portal"),
    pytest.param("S", "Z", "Z", [], id="lone-sync"),
    pytest.param("P B E S", "1 N 2 A D S C Z", "1 N 2 A D S C Z", [], id="asynchronous-messages-amid-a-batch"),
    pytest.param("", "N S A", "N S A", [], id="asynchronous-messages-with-empty-plan"),
    pytest.param("", "E", "E", [], id="error-with-empty-plan"),
    # Synthetic responses come out exactly in their place.
    pytest.param("+1 B E S", "2 C Z", "+1 2 C Z", [], id="synthetic-with-nothing-outstanding"),
    pytest.param(
        "B E +1 B E S", "2 D C 2 D C Z", "2 D C +1 2 D C Z", [], id="synthetic-parse-complete-after-earlier-execute"
    ),
    pytest.param("B E +1 +3 S", "2 C Z", "2 C +1 +3 Z", [], id="consecutive-synthetics"),
    pytest.param("C +3 S", "3 Z", "3 +3 Z", [], id="synthetic-close-after-real-close"),
    pytest.param("Q~ +1 B E S", "C Z 2 C Z", "+1 2 C Z", [], id="synthetic-after-swallowed-injected-query"),
    pytest.param("P~:trs_a B E S", "1 2 C Z", "2 C Z", [], id="swallowed-re-parse"),
    pytest.param("P~:trs_a +1 B E S", "1 2 C Z", "+1 2 C Z", [], id="synthetic-after-swallowed-re-parse"),
    # An ErrorResponse in the extended protocol: the server skips to the next Sync, so does the plan.
    pytest.param("P B E S", "E Z", "E Z", [], id="parse-error"),
    pytest.param("P:trs_a B E S", "1 E Z", "1 E Z", [], id="bind-error-after-parse-complete"),
    pytest.param("P~:trs_a B E +1 B E S", "E Z", "E Z", ["trs_a"], id="failed-re-parse-drops-batch-and-its-synthetic"),
    pytest.param("B E +1 B E S", "2 E Z", "2 E Z", [], id="execute-error-drops-queued-synthetic"),
    pytest.param("B E P:trs_b +1 C S", "2 E Z", "2 E Z", ["trs_b"], id="skipped-named-parse-is-reported-failed"),
    pytest.param("P:s1 B E S P:s2 B E S", "E Z 1 2 C Z", "E Z 1 2 C Z", ["s1"], id="error-stops-at-first-sync"),
    pytest.param("B E S +3", "E Z", "E Z +3", [], id="synthetic-after-the-sync-survives"),
    pytest.param("B E S", "2 C E Z", "2 C E Z", [], id="error-at-sync-commit"),
    pytest.param("B E S +3", "2 C E Z", "2 C E Z +3", [], id="error-at-sync-keeps-later-synthetic"),
    # An ErrorResponse inside a simple Query ends that query only: nothing is skipped.
    pytest.param("Q Q", "T D C E Z T D C Z", "T D C E Z T D C Z", [], id="error-in-simple-query"),
    pytest.param("Q +1 B E S", "E Z 2 C Z", "E Z +1 2 C Z", [], id="error-in-simple-query-keeps-synthetic"),
]


@pytest.mark.parametrize(("requests", "server", "client_sees", "failed"), SCENARIOS)
def test_scenario(requests: str, server: str, client_sees: str, failed: list[str]) -> None:
    plan = ResponsePlan()
    add_requests(plan, requests)
    assert feed(plan, server) == client_sees
    named = {token.partition(":")[2] for token in requests.split() if ":" in token}
    assert sorted(named - plan.prepared.keys()) == failed
    assert len(plan) == 0


def test_plan_length_counts_outstanding_responses() -> None:
    plan = ResponsePlan()
    add_requests(plan, "P B E S")
    assert len(plan) == 4
    assert feed(plan, "1 2") == "1 2"
    assert len(plan) == 2
    assert feed(plan, "C Z") == "C Z"
    assert not plan


def test_synthetic_waits_until_its_turn_across_reads() -> None:
    plan = ResponsePlan()
    add_requests(plan, "B E +1")
    assert feed(plan, "2 D D") == "2 D D"  # the Execute is still running: ParseComplete must wait
    assert not plan.ready
    assert feed(plan, "D C") == "D C +1"
    assert not plan


def test_messages_outside_the_plan_after_it_ran_out_are_forwarded() -> None:
    plan = ResponsePlan()
    add_requests(plan, "Q")
    assert feed(plan, "C Z N A S") == "C Z N A S"


def test_error_before_the_sync_is_queued_skips_requests_until_it() -> None:
    # A pipelining client (JDBC batch, libpq pipeline) is still sending when the server's error
    # arrives: the server will discard everything up to the Sync, so those requests get no response.
    plan = ResponsePlan()
    add_requests(plan, "P:s1 D")
    assert feed(plan, "E") == "E"
    assert plan.prepared == {}
    add_requests(plan, "B E +1 P:s2 P~:s3 +3")
    assert not plan
    assert plan.prepared == {}  # skipped by the server: not there
    assert feed(plan, "") == ""  # dropped synthetics are not sent either
    add_requests(plan, "S")
    assert feed(plan, "Z") == "Z"
    assert not plan
    # The next batch is answered normally.
    add_requests(plan, "P:s4 B E +3 S")
    assert feed(plan, "1 2 C Z") == "1 2 C +3 Z"
    assert plan.prepared == {"s4": 1}


def test_clear_forgets_everything() -> None:
    plan = ResponsePlan()
    add_requests(plan, "P:s1 B")
    assert feed(plan, "E") == "E"
    plan.ready += be.NO_DATA
    plan.clear()
    assert not plan and not plan.ready
    add_requests(plan, "B +3")  # no longer skipping
    assert feed(plan, "2") == "2 +3"


# --- model-based: the plan against a model of the server, with arbitrary arrival chunks ---------------

# Client requests: P new Parse, K Parse of a statement the server has (answered by the router),
# R Bind whose statement the router re-prepares first (swallowed Parse), B Bind, D Describe,
# E Execute, C Close portal, X Close statement (answered by the router), S Sync, Q Query.
ANSWERS = {"P": "1", "K": "1", "R": "2", "B": "2", "D": "t T", "E": "D C", "C": "3", "X": "3"}
ROUTER_ANSWERED = {"K": be.PARSE_COMPLETE, "X": be.CLOSE_COMPLETE}


@dataclass
class ServerModel:
    """PostgreSQL's rules: after an error in an extended-protocol message, discard up to Sync."""

    skipping: bool = False
    parsed: set[str] = field(default_factory=set)

    def answer(self, kind: str, fails: bool, name: str | None = None) -> list[str]:
        if self.skipping and kind != "S":
            return []
        if kind == "S":
            self.skipping = False
            return ["Z"]
        if kind == "Q":
            return ["E", "Z"] if fails else ["T", "D", "C", "Z"]
        if fails:
            self.skipping = True
            return ["E"]
        if name is not None:
            self.parsed.add(name)
        return ANSWERS[kind].split()


def _route(plan: ResponsePlan, index: int, kind: str, fails: bool) -> list[tuple[str, bool, str | None]]:
    """What the router does for one client request: plan entries, and the messages it sends."""
    if kind in ROUTER_ANSWERED:
        plan.synthesize(ROUTER_ANSWERED[kind])
        return []
    if kind == "P":
        plan.prepared[f"s{index}"] = index
        plan.expect(r.ENDS_PARSE, statement=f"s{index}")
        return [("P", fails, f"s{index}")]
    if kind == "R":
        plan.prepared[f"s{index}"] = index
        plan.expect(r.ENDS_PARSE, swallow=True, statement=f"s{index}")
        plan.expect(r.ENDS_BIND)
        return [("P", False, f"s{index}"), ("B", fails, None)]
    plan.expect(ENDS["Q" if kind == "Q" else kind])
    return [(kind, fails, None)]


_fails = st.integers(0, 3).map(lambda n: n == 0)
_extended = st.tuples(st.sampled_from("PKRBDECX"), _fails).map(lambda req: (req[0], req[1] and req[0] not in "KX"))
_batch = st.one_of(
    st.tuples(st.just("Q"), _fails).map(lambda query: [query]),
    st.lists(_extended, max_size=6).map(lambda requests: [*requests, ("S", False)]),
)


@given(st.lists(_batch, min_size=1, max_size=5), st.sets(st.integers(1, 40)))
def test_plan_matches_the_server_whatever_the_arrival_chunks(
    batches: list[list[tuple[str, bool]]], cuts: set[int]
) -> None:
    requests = [request for batch in batches for request in batch]
    # What the client would see talking to PostgreSQL directly.
    direct = ServerModel()
    expected = [letter for kind, fails in requests for letter in direct.answer(kind, fails)]

    plan = ResponsePlan()
    server = ServerModel()
    names: set[str] = set()
    seen: list[str] = []
    bounds = [0, *sorted(cut for cut in cuts if cut < len(requests)), len(requests)]
    for start, end in itertools.pairwise(bounds):
        sent: list[tuple[str, bool, str | None]] = []
        for index in range(start, end):
            sent += _route(plan, index, *requests[index])
            take_ready(plan, seen)  # the router writes due synthetics while reading the client
        names.update(name for _, _, name in sent if name is not None)
        for kind, fails, name in sent:
            for letter in server.answer(kind, fails, name):
                if plan.on_message(ord(letter)):
                    seen.append(letter)
                take_ready(plan, seen)

    assert [letter.lstrip("+") for letter in seen] == expected
    assert not plan
    assert set(plan.prepared) == server.parsed == names & server.parsed


# --- the record of server statements: what a Parse that failed or was skipped leaves -----------------


def _replace(plan: ResponsePlan, name: str, epoch: int) -> None:
    """Close and Parse in place, as the router replaces a copy a server connection holds."""
    before = plan.prepared.get(name)
    plan.expect(r.ENDS_CLOSE, swallow=True)
    plan.prepared[name] = epoch
    plan.expect(r.ENDS_PARSE, statement=name, before=before)


def test_replaced_statement_takes_the_new_epoch() -> None:
    plan = ResponsePlan({"s": 3})
    _replace(plan, "s", 5)
    plan.expect(r.ENDS_SYNC)
    assert feed(plan, "3 1 Z") == "1 Z"
    assert plan.prepared == {"s": 5}


def test_failed_replacement_leaves_no_statement() -> None:
    # The Close ran, then the Parse failed (the table is gone, say): the server has nothing.
    plan = ResponsePlan({"s": 3})
    _replace(plan, "s", 5)
    plan.expect(r.ENDS_BIND)
    plan.expect(r.ENDS_SYNC)
    assert feed(plan, "3 E Z") == "E Z"
    assert plan.prepared == {}


def test_skipped_replacements_leave_the_copy_that_was_there() -> None:
    # An earlier error: the server skips the Close and both Parses; its copy of epoch 3 stays.
    plan = ResponsePlan({"s": 3, "t": 2})
    plan.expect(r.ENDS_BIND)
    _replace(plan, "s", 5)
    _replace(plan, "s", 6)
    _replace(plan, "t", 7)
    plan.expect(r.ENDS_SYNC)
    assert feed(plan, "E Z") == "E Z"
    assert plan.prepared == {"s": 3, "t": 2}


def test_replacement_queued_while_skipping_is_undone_at_once() -> None:
    plan = ResponsePlan({"s": 3})
    plan.expect(r.ENDS_BIND)
    assert feed(plan, "E") == "E"
    _replace(plan, "s", 4)  # the server is discarding up to a Sync not sent yet
    assert plan.prepared == {"s": 3}


def test_failed_parse_then_skipped_ones_of_the_same_name() -> None:
    plan = ResponsePlan({"s": 3})
    _replace(plan, "s", 5)  # fails: its Close ran, so nothing is left...
    _replace(plan, "s", 6)  # ...and this one is skipped
    plan.expect(r.ENDS_SYNC)
    assert feed(plan, "3 E Z") == "E Z"
    assert plan.prepared == {}


def test_a_failed_setup_statement_marks_the_plan_and_a_failed_request_does_not() -> None:
    """The router's own set-up statements (leave, settings, enter the tenant) are swallowed: when
    one fails, the session is not what the router believes, and the plan says so (the connection is
    then not clean, router/net/server.py). A client's failure, or a swallowed re-Parse's, is not that."""
    plan = ResponsePlan()
    plan.expect(r.ENDS_SYNC, swallow=True, setup=True)
    plan.expect(r.ENDS_SYNC, swallow=True, setup=True)
    assert plan.setting_up()  # a client's cancel waits (router/app.py)
    assert plan.on_message(ord("C")) is False  # the leave: CommandComplete swallowed
    assert plan.on_message(ord("Z")) is False
    assert not plan.setup_failed and plan.setting_up()
    assert plan.on_message(ord("E")) is True  # the enter fails: the client is told
    assert plan.on_message(ord("Z")) is False
    assert plan.setup_failed and not plan and not plan.setting_up()

    other = ResponsePlan()
    other.expect(r.ENDS_PARSE, swallow=True)
    other.expect(r.ENDS_SYNC)
    assert other.on_message(ord("E")) is True
    assert other.on_message(ord("Z")) is True
    assert not other.setup_failed
