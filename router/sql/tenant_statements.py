"""The router's own statements about a session's tenant. Pure: text in, a command out.

Owns the grammar of `SET [SESSION] router.tenant = 'acme'` (or `TO acme`, or a quoted identifier),
`RESET router.tenant` and `SHOW router.tenant`: the router answers these itself and never sends
them to a server. Must not: decide whether a switch is allowed or carry it out (the client session
does, with the router's rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

# Cheap test on the raw message before any decoding: every tenant statement names the setting.
MARKER: Final = b"router.tenant"

_STATEMENT: Final = re.compile(
    r"""^\s*(?:
        (?P<set>SET)\s+(?:SESSION\s+)?router\.tenant\s*(?:=|\bTO\b)\s*
            (?:'(?P<quoted>(?:[^']|'')*)'|"(?P<ident>[^"]+)"|(?P<bare>[A-Za-z0-9_-]+))
      | (?P<reset>RESET)\s+router\.tenant
      | (?P<show>SHOW)\s+router\.tenant
    )\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class TenantStatement:
    """`kind` set (with the tenant id in `tenant`), reset (back to the login tenant) or show."""

    kind: Literal["set", "reset", "show"]
    tenant: str | None = None


def parse_tenant_statement(sql: str) -> TenantStatement | None:
    """The tenant statement `sql` is, or None when it is anything else (sent to the server)."""
    match = _STATEMENT.match(sql)
    if match is None:
        return None
    if match.group("show"):
        return TenantStatement("show")
    if match.group("reset"):
        return TenantStatement("reset")
    quoted = match.group("quoted")
    tenant = quoted.replace("''", "'") if quoted is not None else (match.group("ident") or match.group("bare"))
    return TenantStatement("set", tenant)
