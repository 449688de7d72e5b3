"""Whether a SQL text may run on a read replica, for read/write splitting: the read view of the one
statement analysis (router.sql.analysis).

Owns: `ReadClassifier.is_plain_read(sql)`, true only when every statement in the text is a plain
read by the built-in rules (router.sql.plain_reads: a SELECT, VALUES, TABLE or set operation with no
INTO, no locking clause, no data-modifying CTE and no call to a function that writes or needs the
primary; SHOW; EXPLAIN of such a read without ANALYZE) and calls none of the classifier's own
volatile functions, and `begins_read_only(sql)`, true when the text is one BEGIN or START
TRANSACTION that opens a READ ONLY transaction. Pure: text in, bool out.

Must not: do I/O, keep per-session state, or decide policy (where to send the text, whether a
transaction is already open, whether the replica lags too far): the caller does. When unsure it
answers "not a plain read", which sends the text to the primary; that is always safe. What it cannot
see: the bodies of user functions, views, rules and operators (a function that writes is caught only
if it is named in `volatile_functions`), a session's default_transaction_read_only, and what
EXECUTE of a prepared statement runs.

Cost: a text analysed before by any view (or one equal to it but for its digits) is a cache hit; else
a text whose first word cannot start a read (INSERT, UPDATE, BEGIN, ...) is answered by a regular
expression alone, and the rest is the analysis (texts differing only in their literals share one
parse). The functions a read calls are looked at only when volatile functions are configured, and
then first as one set operation. Run
`python -m router.sql.read_statements` for the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

from router.sql.analysis import Analysis, analyse, cached, judge
from router.sql.plain_reads import Reads, may_read

__all__ = ["ReadClassifier", "begins_read_only"]


class ReadClassifier:
    """Decides whether a SQL text is a plain read, with the caller's list of volatile functions.

    `volatile_functions` names user functions that write or must see the primary's state, each
    `name` or `schema.name`, compared case-insensitively (no quoting: write `MyFunc` or `myfunc`,
    not `"MyFunc"`). A bare name matches a call in any schema; `schema.name` matches an unqualified
    call and one qualified with that schema, not one qualified with another. A configured name also
    matches the attribute notation `rel.name` / `(row).name`, which may call a function taking a row,
    so a column of the same name sends its reads to the primary.

    Safe to share between tasks and threads: it holds only its configuration (the analysis caches)."""

    __slots__ = ("_any_schema", "_names", "_qualified", "_qualified_names")

    def __init__(self, volatile_functions: Iterable[str] = ()) -> None:
        any_schema: set[str] = set()
        qualified: set[tuple[str, str]] = set()
        for raw in volatile_functions:
            parts = raw.strip().lower().split(".")
            if not 1 <= len(parts) <= 2 or not all(parts):
                raise ValueError(f"volatile function {raw!r}: expected 'name' or 'schema.name'")
            if len(parts) == 1:
                any_schema.add(parts[0])
            else:
                qualified.add((parts[0], parts[1]))
        self._any_schema: frozenset[str] = frozenset(any_schema)
        self._qualified: frozenset[tuple[str, str]] = frozenset(qualified)
        self._qualified_names: frozenset[str] = frozenset(name for _, name in qualified)
        self._names: frozenset[str] = self._any_schema | self._qualified_names  # every match needs one

    def is_plain_read(self, sql: str) -> bool:
        """True if every statement in `sql` may run on a read replica; False when any may not, when
        the text has no statement, or when PostgreSQL's parser rejects it. Never raises."""
        found = cached(sql, shapes=False)
        if found is None:
            if not may_read(sql):
                return False  # the first statement is no read, or the text is not valid SQL
            found = analyse(sql)
        verdict = found.reads
        if not verdict.reads:
            return False
        return not self._names or self._calls_none(verdict)

    def reads(self, analysis: Analysis) -> bool:
        """The verdict on an analysed text: a plain read by the built-in rules that calls none of
        this classifier's volatile functions, directly or through attribute notation."""
        verdict = analysis.reads
        if not verdict.reads:
            return False
        return not self._names or self._calls_none(verdict)

    def _calls_none(self, verdict: Reads) -> bool:
        """No call of one of the volatile functions, directly or through attribute notation."""
        if verdict.names.isdisjoint(self._names):
            return True
        return not any(self._volatile_call(schema, name) for schema, name in verdict.calls) and not any(
            name in self._any_schema or name in self._qualified_names for name in verdict.attributes
        )

    def _volatile_call(self, schema: str, name: str) -> bool:
        """A call of `name`, unqualified when `schema` is "", is one of the volatile functions."""
        if name in self._any_schema:
            return True
        if not schema:
            return name in self._qualified_names  # may resolve to schema.name through search_path
        return (schema, name) in self._qualified

    def _classify(self, sql: str) -> bool:
        """The answer from the parse tree, with no prefilter or cache (tests compare the two)."""
        return self.reads(judge(sql))


def begins_read_only(sql: str) -> bool:
    """True if `sql` is exactly one BEGIN / START TRANSACTION whose modes make it READ ONLY (the
    last READ ONLY / READ WRITE wins, as in PostgreSQL). False for a plain BEGIN, which follows the
    session's default_transaction_read_only that only the server knows, and for anything else,
    including a BEGIN READ ONLY followed by more statements in the same text. Never raises."""
    if "only" not in sql.lower():  # a keyword cannot be spelt with escapes
        return False
    return analyse(sql).begins_read_only


# --- measurement -----------------------------------------------------------------------------------


def _benchmark() -> None:
    import timeit

    classifier = ReadClassifier(["audit.touch"])

    def per_call(sql: str, number: int, cached: bool) -> float:
        function = classifier.is_plain_read if cached else classifier._classify
        function(sql)
        return min(timeit.repeat(lambda: function(sql), number=number, repeat=5)) / number

    select = "SELECT id, name, email, created_at FROM customers WHERE tenant_id = $1 AND status = 'active' LIMIT 50"
    update = "UPDATE accounts SET balance = balance - 100, updated_at = now() WHERE id = 42"
    print(f"cache hit, SELECT ({len(select)} chars)          {per_call(select, 200_000, True) * 1e9:7.0f} ns")
    print(f"prefilter, UPDATE ({len(update)} chars)           {per_call(update, 200_000, True) * 1e9:7.0f} ns")
    print(f"parse, every verdict, SELECT ({len(select)} chars) {per_call(select, 20_000, False) * 1e6:7.1f} µs")


if __name__ == "__main__":
    _benchmark()
