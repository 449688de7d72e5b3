"""Property: random interleavings of SET / RESET / RESET ALL / prepared statements / LISTEN from
several clients over ONE server connection behave exactly like a per-client model of a private
session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.testing.deploy import load, write_configs
from router.testing.routerthread import RouterThread

from .conftest import Deployment, url


@pytest.fixture(scope="module")
def one_server(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    directory: Path = tmp_path_factory.mktemp("model")
    config, topology = load(write_configs(directory, deployment.env, pool={"size": 1, "wait_timeout": 5.0}))
    thread = RouterThread(config, topology).start()
    yield thread
    thread.stop()


CLIENTS = 3
SETTINGS = {
    # name -> (values to set, how to read it, default as read)
    "statement_timeout": (["1s", "2min", "45s"], "SHOW statement_timeout", "0"),
    "myapp.x": (["a", "b c", "it's"], "SELECT current_setting('myapp.x', true)", None),
    "search_path": (["pg_catalog, public", '"$user", public', "public"], "SHOW search_path", '"$user", public'),
}

setting_names = st.sampled_from(sorted(SETTINGS))
operations = st.one_of(
    st.tuples(st.just("set"), st.integers(0, CLIENTS - 1), setting_names, st.integers(0, 2)),
    st.tuples(st.just("reset"), st.integers(0, CLIENTS - 1), setting_names, st.just(0)),
    st.tuples(st.just("reset_all"), st.integers(0, CLIENTS - 1), st.just(""), st.just(0)),
    st.tuples(st.just("show"), st.integers(0, CLIENTS - 1), setting_names, st.just(0)),
    st.tuples(st.just("prepared"), st.integers(0, CLIENTS - 1), st.just(""), st.integers(0, 3)),
    st.tuples(st.just("listen"), st.integers(0, CLIENTS - 1), st.just(""), st.just(0)),
)


def _read(conn: psycopg.Connection, name: str) -> object:
    row = conn.execute(SETTINGS[name][1]).fetchone()
    assert row is not None
    value = row[0]
    return None if value == "" else value


def _set_sql(name: str, value: str) -> str:
    if name == "myapp.x":
        return "SELECT set_config('myapp.x', '" + value.replace("'", "''") + "', false)"
    return f"SET {name} = {value}" if name == "search_path" else f"SET {name} = '{value}'"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(operations, min_size=5, max_size=25))
def test_sessions_match_a_private_model(one_server: RouterThread, ops: list[tuple[str, int, str, int]]) -> None:
    router = one_server
    conns = [
        psycopg.connect(url(router, "acme"), autocommit=True, prepare_threshold=0, application_name=f"c{i}")
        for i in range(CLIENTS)
    ]
    model: list[dict[str, object]] = [{name: spec[2] for name, spec in SETTINGS.items()} for _ in range(CLIENTS)]
    try:
        for op, who, name, n in ops:
            conn = conns[who]
            if op == "set":
                value = SETTINGS[name][0][n]
                conn.execute(_set_sql(name, value))
                model[who][name] = value
            elif op == "reset":
                conn.execute(f"RESET {name}")
                model[who][name] = SETTINGS[name][2]
            elif op == "reset_all":
                conn.execute("RESET ALL")
                model[who] = {k: spec[2] for k, spec in SETTINGS.items()}
            elif op == "show":
                assert _read(conn, name) == model[who][name], (op, who, name)
            elif op == "prepared":
                row = conn.execute(f"SELECT %s::int + {n} AS c{who}", (who,)).fetchone()
                assert row == (who + n,)
            elif op == "listen":
                conn.execute("LISTEN model_channel")
                conn.execute("NOTIFY model_channel, 'ping'")
                got = list(conn.notifies(timeout=2, stop_after=1))
                assert [(m.channel, m.payload) for m in got] == [("model_channel", "ping")]
                conn.execute("UNLISTEN *")
            # Every client's whole session matches its model after every step.
            for other, other_conn in enumerate(conns):
                for setting in SETTINGS:
                    assert _read(other_conn, setting) == model[other][setting], (op, who, other, setting)
                assert other_conn.info.parameter_status("application_name") == f"c{other}"
    finally:
        for conn in conns:
            conn.close()
