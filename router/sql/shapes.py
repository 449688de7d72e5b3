"""Statement shapes: a SQL text with its literals replaced, under which texts share one analysis.

Owns `statement_shape(sql)` (string and number literals made 0), `digits_only_in_literals(sql)`
(whether texts equal but for their digits share a shape), and `first_word(sql)`, the keyword a
text starts with, from which some verdicts follow without a parse. Literals never change a verdict
the router takes from a statement's structure (its kind, the functions it calls, the names it
uses): texts of one shape share a parse (router.sql.analysis). Verdicts that read a literal's value
(a SET's value) are kept per text by the analysis, not here.

Must not: parse, cache or decide anything; text in, text out.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["FIRST_WORD", "LITERAL", "digits_only_in_literals", "first_word", "statement_shape"]

# A regular expression finds every literal only in texts with no double-quoted identifiers, dollar
# quotes, backslashes (escape strings) or comments, where quotes or digits would mean otherwise
# (statement_shape tests for those). Shapes are computed for every statement on the hot path:
# substring tests, and a pattern that opens with a look-ahead for a character class, which `re`
# scans for quickly; about twice as fast as a regular expression for the marks and a plain
# alternation for the literals.
LITERAL: Final = re.compile(r"(?=['\d])(?:'[^']*(?:''[^']*)*'|(?<![\w.])\d+(?:\.\d+)?(?![\w.]))")
# A minus sign that follows white space, "(", "," or "=" goes with the literal after it (pgbench's
# `abalance + -203` and `abalance + 2979` are one shape): whether it is a sign or an operator, no
# verdict depends on it, and a text in which it was an operator, with the literal alone in its
# place, is one the server rejects without running (`a -5` and `a 5`). Looked for in the shape, and
# only when it has one: cheaper than a sign in `LITERAL`, which every text goes through.
_SIGNED: Final = re.compile(r"(?<=[\s(,=])-0(?![\w.])")
_ASCII_DIGIT: Final = re.compile(r"[0-9]")
# PostgreSQL's scanner: white space, then an identifier or keyword ({ident_start}{ident_cont}*, with
# the non-ASCII letters left out: a keyword is ASCII, so a word running on into one is no keyword).
FIRST_WORD: Final = re.compile(r"[ \t\n\r\f\v]*([A-Za-z_][A-Za-z0-9_$]*)")


def statement_shape(sql: str) -> str:
    """`sql` with its string and number literals replaced by 0, or `sql` itself when it has quoting
    a regular expression cannot follow. Literals never change whether a statement only reads, so
    texts of one shape share a verdict: `WHERE aid = 17` and `WHERE aid = 42` are parsed once."""
    if _hard_to_follow(sql):
        return sql
    shape = LITERAL.sub("0", sql)
    if "-0" in shape:
        shape = _SIGNED.sub("0", shape)
    return shape if shape != sql else sql


def _hard_to_follow(sql: str) -> bool:
    """Quoting in which quotes or digits mean something else than `LITERAL` assumes: quoted
    identifiers, dollar quotes, backslashes (escape strings) and comments."""
    return '"' in sql or "$" in sql or "\\" in sql or "--" in sql or "/*" in sql


def digits_only_in_literals(sql: str) -> bool:
    """Whether every ASCII digit in `sql` is in a literal that `statement_shape` replaces: none in a
    name (`t1`, `md5`), a quoted identifier or an escape. Then a text that differs from `sql` only in
    its digits has the same shape (the characters around each digit, which decide how it is read,
    are the same), so whatever holds for the shape holds for both."""
    if _hard_to_follow(sql):
        return False
    return _ASCII_DIGIT.search(LITERAL.sub("", sql)) is None


def first_word(sql: str) -> str | None:
    """The first word of `sql`, lower-cased, or None when it starts with no word (a comment, a
    parenthesis): a statement's first keyword, or no statement at all."""
    match = FIRST_WORD.match(sql)
    return match.group(1).lower() if match is not None else None
