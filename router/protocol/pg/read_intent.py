"""Whether a client's next request may run on a read replica. Sans-IO: bytes and a policy in, a verdict out.

Owns the reading of a transaction's first request for read/write splitting: a simple Query is
judged by its text; an extended-protocol batch only when every message up to its Sync is in hand
and every statement in it qualifies (a batch without Sync is one implicit transaction whose end
we cannot see yet, so it goes to the primary). Anything unrecognised goes to the primary.

Must not: choose a replica (router.core.replicas), parse SQL itself (the one statement analysis,
router.sql.analysis, through its read view router.sql.read_statements), or keep state between requests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from router.protocol.pg import framing as f
from router.protocol.pg import frontend as fe
from router.protocol.pg.prepared import ClientStatements
from router.sql.read_statements import ReadClassifier, begins_read_only

# One transaction-control statement: it writes nothing itself (COMMIT PREPARED, which commits a
# prepared transaction's writes, is not among them).
_TRANSACTION_CONTROL = re.compile(
    r"\s*(?:BEGIN|START\s+TRANSACTION|END|ABORT|SAVEPOINT|RELEASE|ROLLBACK(?!\s+PREPARED)"
    r"|COMMIT(?!\s+PREPARED))\b[^;]*;?\s*\Z",
    re.IGNORECASE,
)
# Messages of an extended-protocol batch that neither add a statement nor end the batch.
_NEUTRAL = frozenset({f.DESCRIBE, f.EXECUTE, f.CLOSE, f.FLUSH})
_EXTENDED_START = frozenset({f.PARSE, f.BIND, f.DESCRIBE, f.EXECUTE})
# How PostgreSQL spells "on" for a boolean setting.
_ON = frozenset({"on", "true", "yes", "1", "t", "y"})


@dataclass(frozen=True, slots=True)
class ReadPolicy:
    """A session's read/write splitting: `mode` explicit or auto; `read_only` sessions (a user marked
    read-only, or default_transaction_read_only at login) send every transaction to a replica."""

    mode: str
    read_only: bool
    classifier: ReadClassifier

    @property
    def plain(self) -> ReadPolicy:
        """The auto policy of a writable session: whether a request only reads, wherever it runs."""
        return ReadPolicy("auto", False, self.classifier)

    def statement_reads(self, sql: str) -> bool:
        if self.read_only or begins_read_only(sql):
            return True
        return self.mode == "auto" and self.classifier.is_plain_read(sql)


def read_only_session(user_read_only: bool, settings: Mapping[str, str]) -> bool:
    """Whether a session is read-only: its user is, or its default_transaction_read_only is on (at
    login, or SET since)."""
    return user_read_only or settings.get("default_transaction_read_only", "").lower() in _ON


def message_reads(policy: ReadPolicy, msg: bytes, statements: ClientStatements) -> bool:
    """Whether one message, on its own, only reads: a statement it carries or binds is a plain read
    under `policy`, or it carries none (Describe, Execute, Sync...). For following a transaction
    message by message once it runs, where the batch's extent no longer matters."""
    mtype = msg[0]
    sql: str | None
    if mtype == f.QUERY:
        sql = fe.parse_query(msg)
    elif mtype == f.PARSE:
        sql = fe.parse_parse(msg).query
    elif mtype == f.BIND:
        name = fe.split_bind(msg)[1]
        if name:
            sql = statements.query_of(name)
        else:
            last = statements.last_unnamed
            sql = fe.parse_parse(last).query if last is not None else None
    else:
        return mtype in _NEUTRAL or mtype == f.SYNC
    return sql is not None and (_TRANSACTION_CONTROL.match(sql) is not None or policy.statement_reads(sql))


def request_reads(policy: ReadPolicy, data: bytes, pos: int, statements: ClientStatements) -> bool:
    """Whether the request starting at `data[pos]` (the first of a transaction) may go to a replica."""
    if policy.read_only:
        return True
    mtype = data[pos]
    if mtype == f.QUERY:
        end = pos + 1 + f.UINT32.unpack_from(data, pos + 1)[0]
        return policy.statement_reads(fe.parse_query(data[pos:end]))
    if mtype not in _EXTENDED_START:
        return False
    unnamed_parsed = False
    size = len(data)
    while True:
        header = f.read_header(data, pos)
        if header is None or pos + header[1] > size:
            return False  # the batch's Sync has not arrived: its extent is unknown
        mtype, length = header
        msg = data[pos : pos + length]
        if mtype == f.SYNC:
            return True
        if mtype == f.PARSE:
            parse = fe.parse_parse(msg)
            if not policy.statement_reads(parse.query):
                return False
            unnamed_parsed = unnamed_parsed or not parse.name
        elif mtype == f.BIND:
            name = fe.split_bind(msg)[1]
            if name:
                sql = statements.query_of(name)
                if sql is None or not policy.statement_reads(sql):
                    return False
            elif not unnamed_parsed:
                return False  # an unnamed statement parsed in an earlier batch: not worth tracking
        elif mtype not in _NEUTRAL:
            return False
        pos += length
