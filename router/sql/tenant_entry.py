"""Entering a shared tenant on a server session (router/admin/rls.py installs the functions): the
SQL the router sends when a server session passes to a shared tenant, and the setting that carries
the entered tenant. Text only.
"""

from __future__ import annotations

from typing import Final

RLS_SCHEMA: Final = "router"
# The setting that carries the entered tenant (see router/admin/rls.py).
CARRIER: Final = "backtrace_functions"
LEAVE_TENANT: Final = f"{RLS_SCHEMA}.leave_tenant()"
ENTER_TENANT_SQL: Final = f"SELECT {RLS_SCHEMA}.enter_tenant($1, $2)"
LEAVE_TENANT_SQL: Final = f"SELECT {LEAVE_TENANT}"
