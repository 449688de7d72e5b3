"""The pure part of reading and writing a tenant's tables: which rows, in what order, as SQL text.

Owns: the query whose COPY output is a table's export (`select_rows_sql`: the tenant's rows only,
ordered so the bytes are the same on any server), the filter that keeps a shared table to one
tenant's rows (`rows_filter`), and the order to load tables in so that foreign keys hold
(`load_order`).

Must not: do I/O or import a driver: names in, SQL text (or an order) out. Which tables a tenant
has is found on the shard (router/admin/tenant_lifecycle/shard.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from router.isolation import quote_ident, quote_literal

T = TypeVar("T")


def rows_filter(tenant_column: str | None, tenant_id: str) -> str:
    """` WHERE <tenant_column> = '<tenant_id>'` for a shared table, nothing for a table that holds
    only the tenant's rows (its own schema or database)."""
    if tenant_column is None:
        return ""
    return f" WHERE {quote_ident(tenant_column)} = {quote_literal(tenant_id)}"


def select_rows_sql(
    schema: str, table: str, columns: Sequence[str], tenant_column: str | None = None, tenant_id: str | None = None
) -> str:
    """The query whose COPY output is a table's export: its `columns`, only `tenant_id`'s rows when
    `tenant_column` is given, ordered by every column's text under the "C" collation so the bytes
    are the same on any server (types without a btree order, such as json, sort too)."""
    listed = ", ".join(quote_ident(c) for c in columns)
    sql = f"SELECT {listed} FROM {quote_ident(schema)}.{quote_ident(table)}"
    if tenant_column is not None:
        if tenant_id is None:
            raise ValueError("tenant_column needs tenant_id")
        sql += rows_filter(tenant_column, tenant_id)
    if columns:
        sql += " ORDER BY " + ", ".join(f'{quote_ident(c)}::text COLLATE "C"' for c in columns)
    return sql


def load_order(tables: Sequence[T], references: Mapping[T, Iterable[T]]) -> list[T]:
    """`tables` with every table after the tables it references (foreign keys), else in the given
    order: the order to load in (delete in reverse). Self-references are ignored (one COPY checks
    them at its end); tables caught in a cycle keep their given order after the others."""
    position = {t: i for i, t in enumerate(tables)}
    waiting = {t: {r for r in references.get(t, ()) if r in position and r != t} for t in tables}
    ordered: list[T] = []
    while waiting:
        ready = [t for t, needs in waiting.items() if not needs]
        if not ready:  # a cycle: its constraints must be deferrable for the load to work
            ready = list(waiting)
        ready.sort(key=position.__getitem__)
        for t in ready:
            del waiting[t]
            ordered.append(t)
        for needs in waiting.values():
            needs.difference_update(ready)
    return ordered
