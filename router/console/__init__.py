"""The admin console: what each console command does on a running router.

An admin (a user with `console: true`) connected to the virtual database `tenant_router` sends
commands; router/protocol/pg/console.py parses them and renders the answers (sans-IO),
router/net/console.py is the connection's loop, and `Console` (router/console/commands.py) carries
each command out here, reading the router through `ConsoleSource` (router/console/source.py;
router.app.Router satisfies it):
SHOW POOLS / CLIENTS / SERVERS / TENANTS / STATS / HOLDS, RELOAD, PAUSE / RESUME (a hold through
the catalog, so every router instance holds the tenant) and SUSPEND (the catalog status, as
`tenants suspend`).

Must not: import the network layer or the composition root, forward anything to a server, or
parse wire bytes.
"""

from router.console.commands import PAUSE_REASON, PAUSE_TTL, Console
from router.console.source import ConsoleSource

__all__ = ["PAUSE_REASON", "PAUSE_TTL", "Console", "ConsoleSource"]
