"""The SQL the router itself sends to make a server session match a client's. Pure: strings only.

Owns the hand-over reset, the statement that applies a client's settings, the read-back of the
settings in force after a transaction changed them, the statement that raises a router error
inside the server's transaction, and the look-up of session defaults a server role set itself.
Must not send anything: the client session does.
"""

from __future__ import annotations

from collections.abc import Iterable

from router.isolation import quote_literal
from router.sql.tenant_entry import CARRIER

# What a hand-over wipes, in one statement list (DISCARD ALL would need a message of its own), when
# the previous client ran anything not proven inert (router.sql.inert_statements).
# Session state that RESET ALL does not cover (LISTEN, temp tables, advisory locks, cursors WITH
# HOLD, SQL PREPARE) pins its client, and a pinned connection is wiped with DISCARD ALL on release.
# Temporary objects are dropped anyway: one created where the router cannot see it (EXECUTE in a
# DO block or a function) would otherwise outlive its client, and a temporary table shadows the
# table of the same name for the next tenant, whose rows would go into it (tests/integration/
# test_escape.py). DISCARD TEMP costs nothing in a session that never had temporary objects.
# LISTENs and cursors go too: set up inside a DO block or a function, the router does not see them,
# and a LISTEN left behind would pass another tenant's notifications to the next client.
HANDOVER_RESET = "RESET ALL; DISCARD SEQUENCES; DISCARD TEMP; UNLISTEN *; CLOSE ALL"
# A hand-over without the wipe (the session ran only inert statements) still makes prepared
# statements private; this, like any simple query, also drops the unnamed statement.
HANDOVER_DEALLOCATE = "DEALLOCATE ALL"
# ... and after a session that also wrote rows, the only state that may be left (currval/lastval).
HANDOVER_DISCARD_SEQUENCES = "DISCARD SEQUENCES"
# Session defaults attached to the role a new server connection logged in as (ALTER ROLE ... SET,
# for every database or this one) that the role could have set itself: PostgreSQL lets every role
# change its own defaults of user-settable parameters. With shared tenants, all acting as the
# router's role, such a default may be a tenant's trap rather than the operator's configuration: a
# search_path naming a schema an accomplice tenant opened up sends other tenants' unqualified
# statements to its tables. RESET ALL returns to them, so the router removes them through the admin
# or refuses such connections (router/net/role_guard.py). Defaults only a superuser can set
# (track_activities = off, say) are the operator's and allowed. Rows: the database (NULL: every
# database), the setting's name as stored, and `name=value`.
# The defaults under suspicion are in force while this runs: a statement_timeout of 1 ms or a
# search_path with a tenant's schema first must not fail or steer the check, hence its own settings
# for its transaction and names qualified with pg_catalog.
ROLE_DEFAULTS_SQL = (
    "BEGIN; SET LOCAL statement_timeout = 0; SET LOCAL search_path = pg_catalog;"
    " SELECT d.datname, pg_catalog.split_part(c.setting, '=', 1), c.setting"
    " FROM pg_catalog.pg_db_role_setting s"
    " CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) AS c(setting)"
    " LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase"
    " LEFT JOIN pg_catalog.pg_settings p ON p.name = pg_catalog.lower(pg_catalog.split_part(c.setting, '=', 1))"
    " WHERE s.setrole = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)"
    " AND (s.setdatabase = 0 OR d.datname = pg_catalog.current_database())"
    " AND (p.context IS NULL OR p.context = 'user'); COMMIT"
)
# The router's own statements on a server connection (a client's protocol-level statements all go by
# the router's names): read back after a client's DEALLOCATE or DISCARD ALL that may have dropped them.
PREPARED_NAMES_SQL = "SELECT name FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql"
# What the router asks a server after a transaction changed session settings: the exact values now
# in force, so that they travel with the client to its next server connection. Not the carrier of
# the entered tenant (router/admin/rls.py): the router's to write, never a client's setting.
SESSION_SETTINGS_SQL = (
    f"SELECT name, current_setting(name) FROM pg_settings WHERE source = 'session' AND name <> '{CARRIER}'"
)


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
