"""An admin console connection, after login: the loop between its socket and the console.

Feeds what the admin sends to its `ConsoleProtocol` (router/protocol/pg/console.py, sans-IO),
has each command carried out by the router (`RouterContext.console_command`, router/console/),
and writes the answers. Reached only from login, when the client asked for the virtual database
`tenant_router` and its user has `console: true`: the forwarding path never comes here.

Must not: decide what a command does, or open any server connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from router.errors import RouterError
from router.protocol.pg.console import Close, ConsoleProtocol, Reply, render_failure, render_table
from router.protocol.pg.session import PgSession

if TYPE_CHECKING:
    from router.net.context import RouterContext

log = logging.getLogger(__name__)


class ConsoleClient(Protocol):
    """The client connection as the console sees it (router.net.login.LoginClient is one)."""

    router: RouterContext[Any]
    peer: str
    session: PgSession

    def write_to_client(self, data: bytes | bytearray | memoryview) -> None: ...

    def take_buffer(self) -> bytearray: ...

    async def wait_for_data(self) -> None: ...

    def close(self) -> None: ...


async def serve_console(client: ConsoleClient) -> None:
    """Answer the admin's commands until it says Terminate (or goes away: this task is cancelled)."""
    console = ConsoleProtocol()
    buf = client.take_buffer()
    user = client.session.user
    while True:
        if buf:
            console.receive(buf)
            buf.clear()
        event = console.next_event()
        if event is None:
            await client.wait_for_data()
        elif isinstance(event, Reply):
            client.write_to_client(event.data)
        elif isinstance(event, Close):
            client.close()
            return
        else:
            command = event.command
            log.info(
                "console: %s from %s runs %s%s",
                user,
                client.peer,
                command.kind.value,
                f" {command.tenant}" if command.tenant is not None else "",
            )
            try:
                table = await client.router.console_command(command)
            except RouterError as exc:
                client.router.count_error(exc.sqlstate)
                log.info("console: %s failed: %s", command.kind.value, exc.message)
                client.write_to_client(render_failure(exc))
            else:
                client.write_to_client(render_table(table))
