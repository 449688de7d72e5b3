"""What the router expects back from a server, in order: the response plan of one server connection.

Every message the router sends that elicits a response adds an entry here; each server message is
checked against the head entry to decide whether the client sees it. Entries can swallow responses
(to requests the router injected, such as tenant context or re-preparing a statement) and can be
synthetic (a response the router answers itself, such as ParseComplete for a statement the server
already has), emitted exactly at their place in the stream.

It mirrors the server's rules: after an ErrorResponse in the extended protocol, the server skips
everything up to the next Sync, so the plan drops those entries too. Sans-IO; no sockets here.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from router.protocol.pg import framing as f

# Terminators: the server message that completes the response to each kind of request.
ENDS_PARSE: Final = frozenset({f.PARSE_COMPLETE})
ENDS_BIND: Final = frozenset({f.BIND_COMPLETE})
ENDS_CLOSE: Final = frozenset({f.CLOSE_COMPLETE})
ENDS_DESCRIBE: Final = frozenset({f.ROW_DESCRIPTION, f.NO_DATA})
ENDS_EXECUTE: Final = frozenset({f.COMMAND_COMPLETE, f.EMPTY_QUERY, f.PORTAL_SUSPENDED})
ENDS_SYNC: Final = frozenset({f.READY_FOR_QUERY})  # Sync, Query and FunctionCall
ENDS_NOTHING: Final[frozenset[int]] = frozenset()  # synthetic entries: no server message ends them

# Messages a server may send at any time, outside the response to a request.
ASYNCHRONOUS: Final = frozenset({f.NOTICE_RESPONSE, f.PARAMETER_STATUS, f.NOTIFICATION_RESPONSE})


class Expected:
    """One awaited response (or one synthetic response, when `synthetic` is set). Never changed
    once made (plans share the plain ones)."""

    __slots__ = ("ends", "statement", "swallow", "synthetic")

    def __init__(
        self,
        ends: frozenset[int],
        swallow: bool = False,
        synthetic: bytes | None = None,
        statement: str | None = None,
    ) -> None:
        self.ends = ends
        self.swallow = swallow
        self.synthetic = synthetic
        # For a Parse of a named server statement: the name, so a failed Parse un-registers it.
        self.statement = statement


# The entry of a plain request (forwarded, not swallowed, no statement to account for), one per
# terminator: entries are never changed once made, so every plan shares these rather than making
# one per request.
_PLAIN: Final = {
    ends: Expected(ends) for ends in (ENDS_PARSE, ENDS_BIND, ENDS_CLOSE, ENDS_DESCRIBE, ENDS_EXECUTE, ENDS_SYNC)
}


class ResponsePlan:
    """The ordered list of responses a server connection still owes."""

    __slots__ = ("_queue", "_skipping", "failed_statements", "parsed_statements", "ready")

    def __init__(self) -> None:
        self._queue: deque[Expected] = deque()
        # An error made the server discard messages up to a Sync the router has not sent yet: until
        # that Sync is queued, requests get no response (a pipelining client may still be sending them).
        self._skipping = False
        # Synthetic responses whose turn has come; the caller writes them to the client.
        self.ready = bytearray()
        # Statement names whose Parse failed; the caller forgets them on the server connection.
        self.failed_statements: list[str] = []
        # Statement names whose Parse succeeded; the caller records them as known to be valid.
        self.parsed_statements: list[str] = []

    def __len__(self) -> int:
        return len(self._queue)

    def swallowing(self) -> bool:
        """Whether the response now arriving goes to the router, not the client."""
        queue = self._queue
        return bool(queue) and queue[0].swallow

    def expect(self, ends: frozenset[int], *, swallow: bool = False, statement: str | None = None) -> None:
        if self._skipping and ends is not ENDS_SYNC:
            if statement is not None:
                self.failed_statements.append(statement)
            return
        self._skipping = False
        plain = _PLAIN.get(ends) if not swallow and statement is None else None
        self._queue.append(plain if plain is not None else Expected(ends, swallow, None, statement))

    def synthesize(self, response: bytes) -> None:
        """Answer a request ourselves, in its place: at once if nothing is outstanding."""
        if self._skipping:
            return  # the server discards the request this would answer
        if self._queue:
            self._queue.append(Expected(ENDS_NOTHING, synthetic=response))
        else:
            self.ready += response

    def on_message(self, mtype: int) -> bool:
        """Account for one complete server message; return whether the client should see it."""
        queue = self._queue
        if not queue or mtype in ASYNCHRONOUS:
            return True
        head = queue[0]
        if mtype == f.ERROR_RESPONSE:
            if head.ends is not ENDS_SYNC:
                self._skip_to_sync()
            return True
        if mtype in head.ends:
            queue.popleft()
            if head.statement is not None:
                self.parsed_statements.append(head.statement)
            if queue and queue[0].synthetic is not None:
                self._release_synthetic()
        return not head.swallow

    def _skip_to_sync(self) -> None:
        """After an error the server ignores everything up to Sync: so do we (synthetics too)."""
        queue = self._queue
        while queue and (queue[0].synthetic is not None or queue[0].ends is not ENDS_SYNC):
            dropped = queue.popleft()
            if dropped.statement is not None:
                self.failed_statements.append(dropped.statement)
        self._skipping = not queue

    def _release_synthetic(self) -> None:
        queue = self._queue
        while queue and queue[0].synthetic is not None:
            synthetic = queue.popleft().synthetic
            assert synthetic is not None
            self.ready += synthetic

    def clear(self) -> None:
        self._queue.clear()
        self._skipping = False
        self.ready.clear()
        self.failed_statements.clear()
        self.parsed_statements.clear()
