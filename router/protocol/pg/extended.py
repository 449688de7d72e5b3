"""The extended-protocol messages of one client's PostgreSQL session, sans-IO.

Owns Parse, Bind, Describe, Execute, Close, Sync, Flush, the Copy messages and FunctionCall:
prepared statements renamed to their server names (one per content and search_path, parsed lazily
on each server connection, router.protocol.pg.prepared), the statements' effects and refusals
judged at Parse and accounted for at Bind, what they may leave noted for the exact hand-over, and
what the server will answer recorded in the attached server session's response plan. A handler
returns False when its message needs a server connection first (or was refused: then it is
discarded up to the Sync).

Must not: do I/O, import asyncio or the network layer, or take connections (router.core.lease does).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Final

from router.errors import DuplicatePreparedStatement, RouterError
from router.protocol.pg import backend as be
from router.protocol.pg import frontend as fe
from router.protocol.pg import responses as r
from router.protocol.pg.prepared import ClientStatement, ServerStatement, needs_parse
from router.protocol.pg.refusals import FUNCTION_CALL_REFUSAL
from router.protocol.pg.session_core import SessionCore, SessionRouter
from router.sql.analysis import analyse
from router.sql.inert_statements import LEAVES_ANYTHING
from router.sql.statements import Effects, classify

if TYPE_CHECKING:
    from router.protocol.pg.server_session import ServerSession

# Parse epochs (router.protocol.pg.prepared): one counter for the process, whose server connections
# are the only ones it compares epochs on.
_PARSES = itertools.count(1)
_REMEMBERED_PARSE_LIMIT: Final = 4096  # bytes of the last Parse message a session keeps decoded


class ExtendedProtocol(SessionCore):
    """The extended-protocol handlers of a client's session (router.protocol.pg.session)."""

    __slots__ = ("_last_parse",)

    def __init__(self, router: SessionRouter, serial: int) -> None:
        super().__init__(router, serial)
        self._last_parse: tuple[bytes, fe.Parse, Effects | None, int] | None = None  # the last Parse, judged

    def _on_parse(self, msg: bytes) -> bool:
        remembered = self._last_parse
        if remembered is not None and remembered[0] == msg:
            # The same Parse as last time (a driver re-sending its unnamed statement for every
            # transaction, as pgbench -M extended does): decoded and judged already.
            _msg, parse, effects, left = remembered
        else:
            parse = fe.parse_parse(msg)
            if self._exact_handover:
                # One analysis gives both verdicts (router.sql.analysis).
                analysis = analyse(parse.query)
                classified, left = analysis.effects, analysis.residue
            else:
                classified, left = classify(parse.query), LEAVES_ANYTHING
            effects = None if classified.empty else classified  # None: nothing to account for
            # Small ones only: an idle client should not hold on to a megabyte of SQL.
            small = len(msg) <= _REMEMBERED_PARSE_LIMIT
            self._last_parse = (msg, parse, effects, left) if small else None
        if self._exact_handover:
            self._note_residue(parse.name, left)
        as_sent = True
        if effects is not None:
            # Refused statements are never prepared; the others take effect when executed (Bind).
            refusal = self._refusal(effects)
            if refusal is not None:
                parse = fe.Parse(parse.name, refusal, b"\x00\x00")
                as_sent = False
            else:
                if self._effects is None:
                    self._effects = {}
                self._effects[parse.name] = effects
        elif self._effects is not None:
            self._effects.pop(parse.name, None)
        if not parse.name:
            server = self._server()
            if server is None:
                return False
            server.synced = False
            # An unnamed statement keeps its name: the client's own message goes, unless refused.
            message = msg if as_sent else fe.build_parse("", parse.query, parse.param_types)
            self.statements.last_unnamed = message
            server.unnamed = message
            self.out.append(message)
            server.plan.expect(r.ENDS_PARSE)
            return True
        if parse.name in self.statements:
            # As PostgreSQL: a name is defined once until closed (drivers rely on the error).
            duplicate = DuplicatePreparedStatement(f'prepared statement "{parse.name}" already exists')
            return self._raise_in_pipeline(duplicate)
        if self._names_protocol_statement(parse.query):
            return False
        if self.server is None:
            known = self._known_valid(parse)
            if known is not None:
                # Between transactions, a statement that parsed on this database before is answered
                # at once (pgbench -M prepared waits for its Parse, blocking its other clients, which
                # may hold connections); its epoch is now's, so it is parsed again where it is used.
                self.statements.add(parse.name, known)
                self.to_client.append(be.PARSE_COMPLETE)
                return True
        server = self._server()
        if server is None:
            return False
        server.synced = False
        # Parsed now, on this server, whatever copies exist: DDL may have changed what it means.
        statement = self.statements.define(parse.name, parse, next(_PARSES))
        namespace = server.applied.get("search_path", "")
        self._parse_on_server(server, statement.on(namespace), statement.epoch, False)
        return True

    def _known_valid(self, parse: fe.Parse) -> ClientStatement | None:
        """This statement, stamped now, if it parsed on the tenant's database under the same
        search_path; None otherwise. Its server statement is worked out once, here, and kept for
        the Bind that follows."""
        try:
            target = self.target()
        except RouterError:
            return None  # let the acquire path report it
        statement = ClientStatement(parse, next(_PARSES))
        namespace = self._desired_settings(target).get("search_path", "")
        return statement if statement.on(namespace).name in target.pool.valid_statements else None

    def _parse_on_server(self, server: ServerSession, statement: ServerStatement, epoch: int, swallow: bool) -> None:
        """Parse a server statement on `server`, in place of any copy it has (Close first, in the
        same write: PostgreSQL refuses a Parse of a name it has), and record its epoch."""
        name = statement.name
        before = server.prepared.get(name)
        if before is not None or server.prepared_unsure:
            self.out.append(fe.close(b"S", name))
            server.plan.expect(r.ENDS_CLOSE, swallow=True)
        self.out.append(statement.parse_message)
        server.prepared[name] = epoch
        server.plan.expect(r.ENDS_PARSE, swallow=swallow, statement=name, before=before)

    def _prepare_on_server(self, server: ServerSession, client_name: str) -> str | None:
        """Make sure the statement a client names exists on this server connection; return the
        server's name for it (None: unknown to us, let the server report the error)."""
        if not client_name:
            last = self.statements.last_unnamed
            if last is not None and server.unnamed is not last:
                self.out.append(last)
                server.unnamed = last
                server.plan.expect(r.ENDS_PARSE, swallow=True)
            return ""
        statement = self.statements.get(client_name)
        if statement is None:
            return None
        target = statement.on(server.applied.get("search_path", ""))
        if needs_parse(server.prepared, target.name, statement.epoch):
            # No copy here, or one older than the client's Parse: parse it now (a newer epoch).
            self._parse_on_server(server, target, next(_PARSES), True)
        return target.name

    def _on_bind(self, msg: bytes) -> bool:
        server = self._server()
        if server is None:
            return False
        server.synced = False
        portal, client_name, rest_at = fe.split_bind(msg)
        if server.residue != LEAVES_ANYTHING and self._exact_handover:
            # A statement not judged, or one this client never defined, may leave anything.
            residues = self._residues
            left = residues.get(client_name, LEAVES_ANYTHING) if residues is not None else LEAVES_ANYTHING
            if left > server.residue:
                server.residue = left
        server_name = self._prepare_on_server(server, client_name)
        if self._effects is not None:
            effects = self._effects.get(client_name)
            if effects is not None:
                self._session_effects(effects, server)
        if server_name is None or server_name == client_name:
            self.out.append(msg)
        else:
            self.out.append(fe.rename_bind(msg, portal, server_name, rest_at))
        server.plan.expect(r.ENDS_BIND)
        return True

    def _on_describe(self, msg: bytes) -> bool:
        server = self._server()
        if server is None:
            return False
        server.synced = False
        kind, name = fe.parse_target(msg)
        if kind == ord("S"):
            server_name = self._prepare_on_server(server, name)
            if server_name is not None and server_name != name:
                msg = fe.describe(b"S", server_name)  # the server knows the statement by another name
        self.out.append(msg)  # otherwise as the client sent it
        server.plan.expect(r.ENDS_DESCRIBE)
        return True

    def _on_execute(self, msg: bytes) -> bool:
        return self._forward(msg, r.ENDS_EXECUTE)

    def _forward(self, msg: bytes, ends: frozenset[int]) -> bool:
        """An extended-protocol message to the server as the client sent it, answered by `ends`."""
        server = self._server()
        if server is None:
            return False
        server.synced = False
        self.out.append(msg)
        server.plan.expect(ends)
        return True

    def _on_close(self, msg: bytes) -> bool:
        kind, name = fe.parse_target(msg)
        if kind == ord("S") and name:
            # The server keeps the statement for other clients; this client forgets it.
            self.statements.forget(name)
            if self._residues is not None:
                self._residues.pop(name, None)
            if self.server is None:
                self.to_client.append(be.CLOSE_COMPLETE)
            else:
                self.server.synced = False
                self.server.plan.synthesize(be.CLOSE_COMPLETE)
            return True
        return self._forward(msg, r.ENDS_CLOSE)

    def _on_sync(self, msg: bytes) -> bool:
        server = self.server
        if server is None:
            # Nothing outstanding anywhere: answer ourselves rather than take a connection.
            self.to_client.append(be.READY_IDLE)
            return True
        self.out.append(fe.SYNC)
        server.plan.expect(r.ENDS_SYNC)
        server.synced = True
        return True

    def _on_flush(self, msg: bytes) -> bool:
        if self.server is not None:
            self.out.append(fe.FLUSH)
        return True

    def _on_copy(self, msg: bytes) -> bool:
        # COPY data only means something while a COPY runs, i.e. while a server is attached.
        if self.server is not None:
            self.out.append(msg)
        return True

    def _on_function_call(self, msg: bytes) -> bool:
        server = self._server()
        if server is None:
            return False
        server.residue = LEAVES_ANYTHING  # a function called by its oid: anything may have happened
        if self._shares_role():
            # Fast-path calls serve large objects (libpq's lo_*, psql's \lo_import); the function is
            # named by oid, unseen. The server answers a query as it would the call: error, then ready.
            msg = fe.query(FUNCTION_CALL_REFUSAL)
        self.out.append(msg)
        server.plan.expect(r.ENDS_SYNC)
        server.synced = True
        return True
