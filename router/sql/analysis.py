"""One statement analysis: one parse per statement shape, one bounded cache, every verdict at once.

Owns `analyse(sql) -> Analysis` and `analyse_text(text) -> Analysis` (the text as the client sent
it), the frozen result with every verdict the router takes from a SQL text: what it may leave in
the server session for the exact hand-over (router.sql.session_residue), whether it only reads
(router.sql.plain_reads), whether it opens a READ ONLY transaction, its session effects and
refusals (router.sql.effects), and the prepared statements it names in EXECUTE or DEALLOCATE. The
old entry points (classify, residue, residue_text, ReadClassifier, begins_read_only,
statement_names_used) are thin views over this one result. `analysis_stats()` counts parses, cache
hits and misses.

Must not: do I/O, keep per-session state, or decide policy: the callers do. No import of asyncio,
the core, the network adapter or a protocol (text in, values out). It is on the forwarding path
(each Query in the exact hand-over) and compiled with mypyc (router/native.py).

The cache: texts differing only in their literals share one parse (`statement_shape`: literals
replaced), so pgbench's `WHERE aid = 4711` is parsed once for all aids. A text without literals
seen before is one dict lookup; one with literals, as text or as the client sent it (`analyse_text`),
one `bytes.translate` and one lookup once a text equal to it but for its digits has been analysed,
else a shape and one more lookup. Effects that read a literal's value (SET's value, set_config's
arguments: `Analysis.per_text`) are kept under the exact text instead. On a miss, a text that
surely has no effects, leaves anything and names no prepared statement (CREATE TABLE, VACUUM...)
is answered without parsing; the rest goes to PostgreSQL's parser (pglast; tens of µs). Texts
longer than 8 KiB are analysed every time, and the cache is emptied when it reaches its bound, so it
stays small whatever clients send. The dicts are only read, filled and cleared, never iterated:
safe to share between tasks and threads. Run `python -m router.sql.analysis` for the numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from router.sql.effects import EMPTY, Effects, effects_of, may_have_effects, mentions_effects
from router.sql.plain_reads import NOT_READ, Reads, begins_read_only_of, reads_of
from router.sql.session_residue import LEAVES_ANYTHING, may_leave_little, residue_of
from router.sql.shapes import digits_only_in_literals, first_word, statement_shape
from router.sql.tree import Node, parse_statements

__all__ = [
    "Analysis",
    "analyse",
    "analyse_text",
    "analysis_stats",
    "cached",
    "clear_analysis",
    "judge",
    "may_name_statements",
    "set_cache_limit",
]


@dataclass(frozen=True)
class Analysis:
    """Every verdict on one SQL text (one or more statements).

    `residue`: LEAVES_NOTHING, LEAVES_SEQUENCES or LEAVES_ANYTHING (router.sql.session_residue).
    `reads`: the read verdict by the built-in rules, with what a caller's volatile functions are
    matched against (router.sql.read_statements.ReadClassifier). `begins_read_only`: the text is
    one BEGIN / START TRANSACTION ... READ ONLY. `effects`: the session effects, the shared EMPTY
    when there are none. `statement_names`: the names in its EXECUTE and DEALLOCATE statements
    (also under EXPLAIN and CREATE TABLE AS). `per_text`: the verdicts hold for this exact text,
    not for every text of its shape."""

    residue: int
    reads: Reads
    begins_read_only: bool
    effects: Effects
    statement_names: frozenset[str]
    per_text: bool


class _Cache:
    """Analyses by exact text or shape, and by text as sent with its digits made 0; the counters."""

    def __init__(self) -> None:
        self.by_text: dict[str, Analysis] = {}
        self.by_digits: dict[bytes, Analysis] = {}
        self.limit = 10_000  # entries of each dict
        self.parses = 0
        self.hits = 0
        self.misses = 0


_CACHE: Final = _Cache()
# Longer texts are analysed every time, so the cache stays small (at most 10 000 x 8 KiB).
_CACHED_TEXT_LIMIT: Final = 8192
_ZERO_DIGITS: Final = bytes.maketrans(b"123456789", b"000000000")
# Both words are keywords: no other spelling reaches an ExecuteStmt or a DeallocateStmt.
_NAMING_WORDS: Final = re.compile(r"(?<![a-z_])(?:execute|deallocate)(?![a-z_0-9])")
_NO_NAMES: Final[frozenset[str]] = frozenset()
# What a text that surely has no effects, leaves anything and names no statement is (no parse).
_OPAQUE: Final = Analysis(LEAVES_ANYTHING, NOT_READ, False, EMPTY, _NO_NAMES, False)


def analyse(sql: str) -> Analysis:
    """Every verdict on `sql`, from the cache when a text of its shape was analysed. Never raises."""
    cache = _CACHE
    found = cache.by_text.get(sql)
    if found is not None:
        cache.hits += 1
        return found
    key = _digits_key(sql)
    if key is not None:
        found = cache.by_digits.get(key)
        if found is not None:
            cache.hits += 1
            return found
    return _look_further(sql, key)


def analyse_text(text: bytes) -> Analysis:
    """`analyse` of a text as the client sent it (UTF-8), found without decoding it once a text equal
    to it but for its digits has been analysed: for pgbench's `WHERE aid = 4711` that is one
    `bytes.translate` and one dict lookup, where finding the shape takes a regular expression several
    times as long."""
    cache = _CACHE
    key = text.translate(_ZERO_DIGITS)
    found = cache.by_digits.get(key)
    if found is not None:
        cache.hits += 1
        return found
    sql = text.decode("utf-8", errors="replace")
    found = cache.by_text.get(sql)
    if found is not None:
        cache.hits += 1
        return found
    return _look_further(sql, key)


def _look_further(sql: str, key: bytes | None) -> Analysis:
    """After the exact text and the digits: the shape, else the analysis itself, filed."""
    cache = _CACHE
    if len(sql) > _CACHED_TEXT_LIMIT:
        cache.misses += 1
        return _analyse(sql)
    shape = statement_shape(sql)
    found = _by_shape(sql, shape, key)
    if found is not None:
        return found
    cache.misses += 1
    result = _analyse(sql)
    if len(cache.by_text) >= cache.limit:
        cache.by_text.clear()
    # Texts with literals are found by their shape, not kept; per-text verdicts by their text.
    cache.by_text[sql if result.per_text else shape] = result
    _file_digits(sql, key, result)
    return result


def _by_shape(sql: str, shape: str, key: bytes | None) -> Analysis | None:
    """The analysis of a text of the same shape as `sql` whose verdicts hold for every such text (a
    hit, filed under `sql`'s digits too), else None."""
    cache = _CACHE
    found = cache.by_text.get(shape) if shape is not sql else None
    if found is None or found.per_text:
        return None
    cache.hits += 1
    _file_digits(sql, key, found)
    return found


def _file_digits(sql: str, key: bytes | None, result: Analysis) -> None:
    """File `result` under the digits-zeroed text `key` only when every digit of `sql` is in a
    literal (`digits_only_in_literals`): texts that then share the key share the shape too, and so
    the analysis."""
    cache = _CACHE
    if key is not None and not result.per_text and len(key) <= _CACHED_TEXT_LIMIT and digits_only_in_literals(sql):
        if len(cache.by_digits) >= cache.limit:
            cache.by_digits.clear()
        cache.by_digits[key] = result


def cached(sql: str, shapes: bool = True) -> Analysis | None:
    """The analysis of `sql` if the cache has it, else None (nothing analysed, no miss counted):
    for a caller whose own prefilter answers cheaper than a parse. With `shapes` False, found only
    by its text or its digits: a probe cheaper than a prefilter's regular expression."""
    cache = _CACHE
    found = cache.by_text.get(sql)
    key = None
    if found is None:
        key = _digits_key(sql)
        found = cache.by_digits.get(key) if key is not None else None
    if found is not None:
        cache.hits += 1
        return found
    if not shapes or len(sql) > _CACHED_TEXT_LIMIT:
        return None
    return _by_shape(sql, statement_shape(sql), key)


def _digits_key(sql: str) -> bytes | None:
    """The key of `sql` among texts as sent: its UTF-8 with every digit made 0."""
    try:
        return sql.encode().translate(_ZERO_DIGITS)
    except UnicodeEncodeError:  # a lone surrogate: no text a client sends as UTF-8 decodes to it
        return None


def analysis_stats() -> dict[str, int]:
    """Parses, cache hits and misses since the start (or the last `clear_analysis`), and the
    entries the cache holds."""
    cache = _CACHE
    return {
        "parses": cache.parses,
        "hits": cache.hits,
        "misses": cache.misses,
        "entries": len(cache.by_text) + len(cache.by_digits),
    }


def may_name_statements(lowered: str) -> bool:
    """False when a lower-cased text surely has no EXECUTE or DEALLOCATE (no statement names)."""
    return _NAMING_WORDS.search(lowered) is not None


def clear_analysis() -> None:
    """Empty the cache and zero the counters (tests, benchmarks)."""
    cache = _CACHE
    cache.by_text.clear()
    cache.by_digits.clear()
    cache.parses = cache.hits = cache.misses = 0


def set_cache_limit(entries: int) -> None:
    """The bound of each of the cache's dicts (tests)."""
    _CACHE.limit = entries


def judge(sql: str) -> Analysis:
    """Every verdict straight from the parse tree: no prefilter, no cache (tests compare the two)."""
    statements = _parse(sql)
    return _from_tree(statements, sql, effects_of(statements, sql))


def _analyse(sql: str) -> Analysis:
    """The analysis without the cache, with the prefilters that spare a parse."""
    lowered = sql.lower()
    affects = may_have_effects(lowered) and mentions_effects(lowered)
    if not affects and not may_leave_little(first_word(sql)) and not may_name_statements(lowered):
        return _OPAQUE
    statements = _parse(sql)
    return _from_tree(statements, sql, effects_of(statements, sql) if affects else EMPTY)


def _parse(sql: str) -> list[Node] | None:
    _CACHE.parses += 1
    return parse_statements(sql)


def _from_tree(statements: list[Node] | None, sql: str, effects: Effects) -> Analysis:
    reads = reads_of(statements)
    return Analysis(
        residue=residue_of(statements),
        reads=reads,
        begins_read_only=begins_read_only_of(statements),
        effects=effects,
        statement_names=_names_used(statements),
        per_text=effects.per_text or reads.per_text,
    )


def _names_used(statements: list[Node] | None) -> frozenset[str]:
    """The names in EXECUTE and DEALLOCATE statements (also under EXPLAIN and CREATE TABLE AS)."""
    names: set[str] = set()
    for raw in statements or ():
        node = raw.get("stmt", {})
        for wrapper in ("ExplainStmt", "CreateTableAsStmt"):
            if wrapper in node:
                node = node[wrapper].get("query", {})
        for kind in ("ExecuteStmt", "DeallocateStmt"):
            name = node.get(kind, {}).get("name")
            if name is not None:
                names.add(str(name))
    return frozenset(names) if names else _NO_NAMES


# --- measurement -----------------------------------------------------------------------------------


def _benchmark() -> None:
    import timeit
    from collections.abc import Callable

    def per_call(function: Callable[[str], object], texts: list[str]) -> float:
        def run() -> None:
            for text in texts:
                function(text)

        return min(timeit.repeat(run, number=1, repeat=5)) / len(texts)

    def per_text_call(texts: list[bytes]) -> float:
        def run() -> None:
            for text in texts:
                analyse_text(text)

        return min(timeit.repeat(run, number=1, repeat=5)) / len(texts)

    fixed = "SELECT id, name FROM customers WHERE tenant_id = $1 AND status = $2 LIMIT 50"
    pgbench = [f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};" for aid in range(200_000)]
    as_sent = [text.encode() for text in pgbench]
    insert = "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, now())"
    analyse(fixed)
    analyse_text(as_sent[0])
    rows = [
        (f"hit: exact text, no literals ({len(fixed)} chars)", per_call(analyse, [fixed] * 200_000) * 1e9, "ns"),
        (
            f"hit as sent: pgbench -S bytes, a new aid each ({len(pgbench[0])} chars)",
            per_text_call(as_sent) * 1e9,
            "ns",
        ),
        (f"shape path: pgbench -S, a new aid each ({len(pgbench[0])} chars)", per_call(analyse, pgbench) * 1e9, "ns"),
        (f"miss, no cache: INSERT ({len(insert)} chars)", per_call(_analyse, [insert] * 20_000) * 1e6, "µs"),
        ("miss, no cache: pgbench -S text", per_call(_analyse, pgbench[:20_000]) * 1e6, "µs"),
    ]
    for label, value, unit in rows:
        print(f"{label:<66} {value:7.1f} {unit}")


if __name__ == "__main__":
    _benchmark()
