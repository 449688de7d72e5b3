"""Tenant isolation levels and the names and quoting they imply.

Owns: the `Isolation` vocabulary, the rule for what a tenant id may look like, the schema,
database and role names a tenant gets, the signature of its context and the derived password of
its role, and PostgreSQL identifier/literal quoting for building DDL.

Must not: do I/O, import asyncio or a driver, or know about the catalog, shards or routing.
Everything here is pure; values in, values out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final, Literal, get_args

Isolation = Literal["shared", "schema", "database"]
ISOLATIONS: Final[tuple[Isolation, ...]] = get_args(Isolation)

TENANT_ID_MAX_LEN: Final = 48
# PostgreSQL silently truncates identifiers to NAMEDATALEN - 1 bytes; we refuse instead.
IDENTIFIER_MAX_BYTES: Final = 63

# Also what the shards' router.enter_tenant() accepts (router/admin/rls.py).
TENANT_ID_PATTERN: Final = "[a-z0-9][a-z0-9_-]*"
_TENANT_ID_RE: Final = re.compile(TENANT_ID_PATTERN)
_PREFIX: Final = "tenant_"


def validate_tenant_id(tenant_id: str) -> None:
    """Raise ValueError unless `tenant_id` is 1..48 chars of [a-z0-9_-] starting with a letter or digit."""
    if not isinstance(tenant_id, str):
        raise ValueError(f"tenant id must be a string, got {type(tenant_id).__name__}")
    if not tenant_id:
        raise ValueError("tenant id must not be empty")
    if len(tenant_id) > TENANT_ID_MAX_LEN:
        raise ValueError(
            f"tenant id {tenant_id[:TENANT_ID_MAX_LEN]!r}... is {len(tenant_id)} characters long;"
            f" at most {TENANT_ID_MAX_LEN} are allowed"
        )
    if _TENANT_ID_RE.fullmatch(tenant_id) is None:
        raise ValueError(
            f"invalid tenant id {tenant_id!r}: use lowercase letters, digits, '_' and '-',"
            " starting with a letter or digit"
        )


def validate_isolation(isolation: str) -> Isolation:
    """Return `isolation` as an Isolation, or raise ValueError naming the allowed values."""
    for known in ISOLATIONS:
        if isolation == known:
            return known
    raise ValueError(f"invalid isolation {isolation!r}: expected one of {', '.join(ISOLATIONS)}")


def schema_name(tenant_id: str) -> str:
    """The (unquoted) schema a `schema`-isolated tenant lives in."""
    validate_tenant_id(tenant_id)
    return _PREFIX + tenant_id


def database_name(tenant_id: str) -> str:
    """The (unquoted) database a `database`-isolated tenant lives in."""
    validate_tenant_id(tenant_id)
    return _PREFIX + tenant_id


def tenant_role(tenant_id: str) -> str:
    """The (unquoted) login role a `schema` or `database` tenant's server connections act as: it
    owns the tenant's schema or database and is granted nothing of any other tenant."""
    validate_tenant_id(tenant_id)
    return _PREFIX + tenant_id


def tenant_role_password(secret: str, tenant_id: str) -> str:
    """The password of a tenant's role, derived from the context secret: stored nowhere."""
    return hmac.new(secret.encode(), b"role:" + tenant_id.encode(), hashlib.sha256).hexdigest()


def sign_tenant(secret: str, tenant_id: str) -> str:
    """The signature with which the router enters a shared tenant (router/admin/rls.py): hex HMAC-SHA256 of
    the id under the context secret, which the shard's verifying function recomputes."""
    return hmac.new(secret.encode(), tenant_id.encode(), hashlib.sha256).hexdigest()


def quote_ident(name: str) -> str:
    """Quote `name` as a PostgreSQL identifier: always double-quoted, inner quotes doubled.

    Always quoting keeps case and characters such as '-' exactly as given. Empty names, NUL
    characters and names PostgreSQL would truncate are refused rather than silently altered.
    """
    if not name:
        raise ValueError("identifier must not be empty")
    if "\x00" in name:
        raise ValueError("identifier must not contain NUL characters")
    if len(name.encode("utf-8")) > IDENTIFIER_MAX_BYTES:
        raise ValueError(
            f"identifier {name!r} is longer than {IDENTIFIER_MAX_BYTES} bytes; PostgreSQL would truncate it"
        )
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote `value` as a PostgreSQL string literal (standard_conforming_strings = on).

    With standard conforming strings a backslash is an ordinary character, so only single
    quotes need doubling. NUL cannot be represented in a PostgreSQL text value and is refused.
    """
    if "\x00" in value:
        raise ValueError("string literal must not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"
