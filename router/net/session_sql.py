"""The SQL the router itself sends to make a server session match a client's. Pure: strings only.

Owns the hand-over reset, the statement that applies a client's settings, the read-back of the
settings in force after a transaction changed them, and the statement that raises a router error
inside the server's transaction. Must not send anything: the client session does.
"""

from __future__ import annotations

from collections.abc import Iterable

from router.isolation import quote_literal

# What a hand-over wipes, in one statement list (DISCARD ALL would need a message of its own).
# Session state that RESET ALL does not cover (LISTEN, temp tables, advisory locks, cursors WITH
# HOLD, SQL PREPARE) pins its client, and a pinned connection is wiped with DISCARD ALL on release.
HANDOVER_RESET = "RESET ALL; DISCARD SEQUENCES"
HANDOVER_RESET_PREPARED = "RESET ALL; DISCARD SEQUENCES; DEALLOCATE ALL"
# What the router asks a server after a transaction changed session settings: the exact values now
# in force, so that they travel with the client to its next server connection.
SESSION_SETTINGS_SQL = "SELECT name, current_setting(name) FROM pg_settings WHERE source = 'session'"


def session_sync_statements(
    applied: dict[str, str], desired: dict[str, str], hidden: frozenset[str] = frozenset()
) -> tuple[str | None, tuple[str, tuple[str, ...]] | None]:
    """What turns a server session's settings from `applied` into `desired`: a statement list for
    a simple Query, and, when a setting in `hidden` changes, a parameterized statement with its
    values. A hidden value (the tenant context's signature) must never be in a statement's text,
    which other sessions of the same role can read in pg_stat_activity."""
    changes = [(name, value) for name, value in desired.items() if applied.get(name) != value]
    if not any(name in hidden for name, _ in changes):
        return session_sync_sql(applied, desired), None
    resets = [f"RESET {name}" for name in applied if name not in desired]
    calls = ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(changes)))
    values = tuple(item for change in changes for item in change)
    return ("; ".join(resets) or None), (f"SELECT {calls}", values)


def session_sync_sql(applied: dict[str, str], desired: dict[str, str]) -> str | None:
    """The statement that turns a server session's settings from `applied` into `desired`.

    set_config() takes each value as the server reported it (list values such as search_path
    included), which SET with a quoted literal would not."""
    changes = [
        f"set_config({quote_literal(name)}, {quote_literal(value)}, false)"
        for name, value in desired.items()
        if applied.get(name) != value
    ]
    resets = [f"RESET {name}" for name in applied if name not in desired]
    statements = ([f"SELECT {', '.join(changes)}"] if changes else []) + resets
    return "; ".join(statements) if statements else None


def raise_sql(sqlstate: str, message: str) -> str:
    """A statement that makes the server raise our error, inside whatever transaction is open, so
    the transaction is aborted exactly as PostgreSQL would abort it."""
    return f"DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = {quote_literal(message)}; END$$"


def settings_in_force_sql(known: Iterable[str]) -> str:
    """Every session-level setting now in force. Placeholder settings (`myapp.x`) are not in
    pg_settings, so those the client is known to use are named explicitly."""
    sql = SESSION_SETTINGS_SQL
    custom = sorted({name for name in known if "." in name})
    if custom:
        names = ", ".join(quote_literal(n) for n in custom)
        sql += f" UNION ALL SELECT n, current_setting(n, true) FROM unnest(ARRAY[{names}]::text[]) AS n"
    return sql
