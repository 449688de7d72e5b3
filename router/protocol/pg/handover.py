"""Making a server session the client's: the exact hand-over's reset, and the settings and tenant sync.

Owns what the router sends ahead of a client's first message on a server connection (in the same
write, responses swallowed): what the last client's statements may have left cleared (the exact
hand-over, router.sql.inert_statements), the tenant the session had entered left, the client's
settings applied, the client's tenant entered (router/admin/rls.py), and the record of all that in
the server-session model (router.protocol.pg.server_session). Sans-IO: it appends messages to the
caller's list and changes the model; it never sends, and knows no pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from router.core.handover import Handover
from router.protocol.pg import frontend as fe
from router.protocol.pg import responses as r
from router.sql.inert_statements import LEAVES_ANYTHING, LEAVES_NOTHING, LEAVES_SEQUENCES, trusted_search_path
from router.sql.session_sql import HANDOVER_DEALLOCATE, HANDOVER_DISCARD_SEQUENCES, HANDOVER_RESET, session_sync_sql
from router.sql.tenant_entry import ENTER_TENANT_SQL, LEAVE_TENANT_SQL

if TYPE_CHECKING:
    from router.core.target import Entry
    from router.protocol.pg.server_session import ServerSession

# Leaving the entered tenant: a statement of its own, so that it holds whatever fails after it.
_LEAVE_TENANT: Final = fe.query(LEAVE_TENANT_SQL)
_ENTER_TENANT_PARSE: Final = fe.build_parse("", ENTER_TENANT_SQL, b"\x00\x00")

_SHARED_SETTINGS: dict[frozenset[tuple[str, str]], dict[str, str]] = {}
_SHARED_SETTINGS_LIMIT: Final = 4096


# Enum members as C statics: compiled, `Handover.WIPED` is a lookup through the enum's metaclass.
_HANDOVER_AS_IS: Final = Handover.AS_IS
_HANDOVER_SEQUENCES_RESET: Final = Handover.SEQUENCES_RESET
_HANDOVER_WIPED: Final = Handover.WIPED


def shared_settings(settings: dict[str, str]) -> dict[str, str]:
    """One dict for all sessions that want the same settings: a server connection handed from one
    such client to another is then found in sync by identity, not by comparing the dicts on every
    transaction. The dicts are never changed in place (a change makes a new one)."""
    key = frozenset(settings.items())
    shared = _SHARED_SETTINGS.get(key)
    if shared is None:
        if len(_SHARED_SETTINGS) >= _SHARED_SETTINGS_LIMIT:
            _SHARED_SETTINGS.clear()  # bounded: clients varying their settings cannot grow it
        shared = _SHARED_SETTINGS[key] = settings
    return shared


def handover_reset(conn: ServerSession, tenant: str | None) -> tuple[str | None, Handover]:
    """What the exact hand-over sends ahead of the new client's first message: what the session's
    residue (router.sql.inert_statements) says may be left. The full wipe when the previous client ran
    anything not judged, or under a search_path the router cannot vouch for: settings changed inside
    functions, temporary tables made by EXECUTE... are invisible to the router. DISCARD SEQUENCES
    when it also wrote rows: a serial column's currval() would otherwise tell the next client the
    last key. Nothing when it was inert: `applied` stays true, so only the settings that differ are
    sent. Prepared statements are private to their tenant: they go when the session passes to
    another tenant, and stay (prepared once per server, not per hand-over) within one, whose clients
    name them by content anyway."""
    left = conn.residue
    own_statements = bool(conn.prepared or conn.unnamed)
    deallocate = own_statements and conn.owner_tenant != tenant
    if left == LEAVES_NOTHING and not deallocate:
        return None, _HANDOVER_AS_IS  # the common case: an inert session within one tenant passes as it is
    conn.residue = LEAVES_NOTHING
    handover = _HANDOVER_AS_IS
    statements: list[str] = []
    if left == LEAVES_ANYTHING:
        handover = _HANDOVER_WIPED
        conn.applied = {}
        conn.entered = None  # the wipe's RESET ALL empties it, if it runs: leave before it
        statements.append(HANDOVER_RESET)
        deallocate = own_statements
    elif left == LEAVES_SEQUENCES:
        handover = _HANDOVER_SEQUENCES_RESET
        statements.append(HANDOVER_DISCARD_SEQUENCES)
    if deallocate:
        statements.append(HANDOVER_DEALLOCATE)
        conn.prepared.clear()
        conn.unnamed = None
    return "; ".join(statements), handover


def sync_session(
    conn: ServerSession,
    desired: dict[str, str],
    entry: Entry | None,
    reset: str | None,
    client_settings: dict[str, str],
    out: list[bytes],
) -> None:
    """Make the server session match a client (`desired`: its settings and its target's context;
    `entry`: the tenant to enter), appending the statements to `out`; their responses are
    swallowed. In order, each in a transaction of its own: leave the tenant the session had entered
    (unless it had none), the reset and settings as one statement list, then enter the client's
    tenant (router/admin/rls.py). A failing enter thus leaves no tenant, never the previous
    client's; and the settings, which the client chose, run after the leave and cannot make it
    fail. A failure marks the connection to be dropped on release (ResponsePlan.setup_failed)."""
    settings_in_sync = reset is None and (conn.applied is desired or conn.applied == desired)
    if settings_in_sync and (entry is None or conn.entered == entry.tenant):
        return
    plan = conn.plan
    if entry is not None and conn.entered != entry.tenant and conn.entered != "":
        out.append(_LEAVE_TENANT)
        plan.expect(r.ENDS_SYNC, swallow=True, setup=True)
        conn.entered = ""
    sql = None if settings_in_sync else session_sync_sql(conn.applied, desired)
    if reset is not None:
        sql = f"{reset}; {sql}" if sql else reset
    if sql is not None:
        out.append(fe.query(sql))
        plan.expect(r.ENDS_SYNC, swallow=True, setup=True)
        conn.unnamed = None
    if entry is not None and entry.tenant and conn.entered != entry.tenant:
        out.append(_ENTER_TENANT_PARSE + fe.bind("", "", (entry.tenant, entry.signature)) + fe.execute("") + fe.SYNC)
        plan.expect(r.ENDS_SYNC, swallow=True, setup=True)
        conn.unnamed = None
        conn.entered = entry.tenant
    conn.applied = desired  # shared, never changed in place: replaced when the settings change
    if conn.residue != LEAVES_ANYTHING and not trusted_search_path(client_settings):
        # The client's search_path may resolve a name in an inert text to a tenant's object,
        # whose code may leave state: as long as it is applied, the session is not clean.
        conn.residue = LEAVES_ANYTHING
