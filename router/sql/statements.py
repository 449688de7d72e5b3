"""What a SQL text does to the server session, for a router that shares server connections: the
session-effects view of the one statement analysis (router.sql.analysis).

Owns `classify(sql) -> Effects`: the settings a text changes, the session state it ties to or ends
on its server connection, the statements the router refuses or answers itself, and the databases
DDL needs free of connections (router.sql.effects says which, and why). Pure: text in, frozen value
out.

Must not: do I/O, keep per-session state, or decide policy (refuse, pin, reset, re-apply): the
caller does.

Cost: a text analysed before by any view (or one equal to it but for its digits) is a cache hit;
else a prefilter looks for trigger words in the lower-cased text and returns the shared `EMPTY`
without any analysis when there are none (about 1 µs for a 100-character query), a text of a shape
analysed before is a hit, a second look for the words as whole tokens answers EMPTY without
parsing, and the rest is analysed (one parse, every verdict). Run
`python -m router.sql.statements` for the numbers.
"""

from __future__ import annotations

from collections.abc import Callable

from router.sql.analysis import analyse, cached, judge
from router.sql.effects import (
    ADVISORY_LOCK,
    EMPTY,
    HOLD_CURSOR,
    LISTEN,
    PIN_KINDS,
    PREPARE,
    TEMP_TABLE,
    Effects,
    SettingChange,
    may_have_effects,
    mentions_effects,
)

__all__ = [
    "ADVISORY_LOCK",
    "EMPTY",
    "HOLD_CURSOR",
    "LISTEN",
    "PIN_KINDS",
    "PREPARE",
    "TEMP_TABLE",
    "Effects",
    "SettingChange",
    "classify",
]


def classify(sql: str) -> Effects:
    """The session-level effects of `sql` (one or more statements). Never raises."""
    found = cached(sql, shapes=False)
    if found is not None:
        return found.effects
    lowered = sql.lower()
    if not may_have_effects(lowered):
        return EMPTY
    found = cached(sql)
    if found is not None:
        return found.effects
    if not mentions_effects(lowered):
        return EMPTY
    return analyse(sql).effects


# --- measurement -----------------------------------------------------------------------------------


def _benchmark() -> None:
    import timeit

    def per_call(function: Callable[[str], object], sql: str, number: int) -> float:
        function(sql)
        return min(timeit.repeat(lambda: function(sql), number=number, repeat=5)) / number

    select = "SELECT id, name, email, created_at FROM customers WHERE tenant_id = $1 AND status = 'active' LIMIT 50"
    set_path = "SET search_path TO tenant_acme, public"
    update = "UPDATE accounts SET balance = balance - 100, updated_at = now() WHERE id = 42"
    offset = "SELECT id FROM t ORDER BY id LIMIT 10 OFFSET 20"
    print(f"prefilter, no trigger word ({len(select)} chars)  {per_call(classify, select, 200_000) * 1e9:7.0f} ns")
    print(f"cache hit, SET search_path               {per_call(classify, set_path, 200_000) * 1e9:7.0f} ns")
    print(f"parse, every verdict: SET search_path     {per_call(judge, set_path, 20_000) * 1e6:7.1f} µs")
    print(f"parse, every verdict: UPDATE ({len(update)} chars) {per_call(judge, update, 20_000) * 1e6:7.1f} µs")
    print(f"no analysis, ... OFFSET (token check only) {per_call(classify, offset, 20_000) * 1e6:7.1f} µs")


if __name__ == "__main__":
    _benchmark()
