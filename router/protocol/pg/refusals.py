"""The statements the router refuses, and what it runs instead so the server raises the error.

Owns the policy on a statement's session effects (router.sql.statements): who the session acts as
is the router's (SET ROLE, SET SESSION AUTHORIZATION, statements on roles), large objects are
refused to shared tenants (they belong to the role every shared tenant acts as), and the session
state a router's configuration refuses in transaction pooling. A refused statement is replaced by
one that raises the same error on the server, so a transaction or pipeline fails exactly as
PostgreSQL would fail it. Pure: effects in, SQL out.
"""

from __future__ import annotations

from typing import Final

from router.sql.session_sql import raise_sql
from router.sql.statements import Effects

_ROLE_STATEMENTS_REFUSED: Final = (
    "statements on roles (CREATE, ALTER, DROP ROLE or USER, GRANT or REVOKE of a role) are not allowed"
    " through tenant-router: the router logs in to the shards as these roles for every tenant that uses them"
)
_LARGE_OBJECTS_REFUSED: Final = (
    "large objects are not available to shared tenants: they belong to the server role that every shared"
    " tenant acts as, and row-level security does not cover them, so other tenants could read them;"
    " store the data in a bytea column of a protected table"
)
_FUNCTION_CALLS_REFUSED: Final = (
    "the fast-path function call protocol (used for large objects, e.g. psql's \\lo_import) is not available"
    " to shared tenants: large objects belong to the server role that every shared tenant acts as"
)
# Run in place of a fast-path FunctionCall: the server answers a query as it would the call.
FUNCTION_CALL_REFUSAL: Final = raise_sql("0A000", _FUNCTION_CALLS_REFUSED)


def refusal(effects: Effects, shares_role: bool, refused_state: frozenset[str]) -> str | None:
    """A statement to run instead of one with these effects, or None when it may run. `shares_role`:
    the session acts as the router's own role, shared by tenants (router.core.target)."""
    if effects.session_authorization:
        return raise_sql("42501", "SET ROLE and SET SESSION AUTHORIZATION are not allowed through tenant-router")
    if effects.role_change:
        return raise_sql("42501", _ROLE_STATEMENTS_REFUSED)
    if effects.large_objects and shares_role:
        return raise_sql("0A000", _LARGE_OBJECTS_REFUSED)
    refused = effects.pins & refused_state
    if refused:
        kinds = ", ".join(sorted(refused))
        return raise_sql("0A000", f"session state ({kinds}) is refused by this router in transaction pooling")
    return None
