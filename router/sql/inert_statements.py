"""What a SQL text may leave behind in the server session, for the exact hand-over: the residue view
of the one statement analysis (router.sql.analysis).

Owns the caller's words: `residue(sql)` and `residue_text(text)` (the text as the client sent it),
one of LEAVES_NOTHING (the text is inert), LEAVES_SEQUENCES (it may leave currval()/lastval():
DISCARD SEQUENCES clears that) or LEAVES_ANYTHING (the full wipe); `is_inert(sql)`; and, from
router.sql.session_residue, which has the rules and says what they trust, `trusted_search_path`
and the allowlists. A server connection that ran only inert texts under a trusted search_path can
pass to another client as it is, one that wrote rows after DISCARD SEQUENCES, any other after the
full wipe (router/protocol/pg/handover.py). Pure.

Must not: do I/O, keep per-session state, or decide when to wipe: the caller does.

Cost: `residue_text` is asked on every Query in the exact hand-over, so this module is compiled
with mypyc (router/native.py): a text seen before but for its digits is one `bytes.translate` and
one dict lookup (router.sql.analysis). Run `python -m router.sql.analysis` for the numbers.
"""

from __future__ import annotations

from router.sql.analysis import analyse, analyse_text
from router.sql.session_residue import (
    INERT_FUNCTIONS,
    LEAVES_ANYTHING,
    LEAVES_NOTHING,
    LEAVES_SEQUENCES,
    SEQUENCE_FUNCTIONS,
    TRUSTED_SCHEMAS,
    trusted_search_path,
)

__all__ = [
    "INERT_FUNCTIONS",
    "LEAVES_ANYTHING",
    "LEAVES_NOTHING",
    "LEAVES_SEQUENCES",
    "SEQUENCE_FUNCTIONS",
    "TRUSTED_SCHEMAS",
    "is_inert",
    "residue",
    "residue_text",
    "trusted_search_path",
]


def residue(sql: str) -> int:
    """What running `sql` may leave in the server session: LEAVES_NOTHING (it is inert),
    LEAVES_SEQUENCES or LEAVES_ANYTHING, which is also the answer for a text without a statement or
    one PostgreSQL's parser rejects. Never raises."""
    return analyse(sql).residue


def is_inert(sql: str) -> bool:
    """True if no statement in `sql` can leave anything in the server session."""
    return analyse(sql).residue == LEAVES_NOTHING


def residue_text(text: bytes) -> int:
    """`residue` of a text as the client sent it (UTF-8), answered without decoding it once a text
    equal to it but for its digits has been analysed (router.sql.analysis.analyse_text)."""
    return analyse_text(text).residue
