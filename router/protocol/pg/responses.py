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

    __slots__ = ("before", "ends", "setup", "statement", "swallow", "synthetic")

    def __init__(
        self,
        ends: frozenset[int],
        swallow: bool = False,
        synthetic: bytes | None = None,
        statement: str | None = None,
        before: int | None = None,
        setup: bool = False,
    ) -> None:
        self.ends = ends
        self.swallow = swallow
        self.synthetic = synthetic
        # The router's own statement that makes the session the client's (settings, the entered
        # tenant): if it fails, the session is not what the router believes it is.
        self.setup = setup
        # For a Parse of a named server statement: its name, and the epoch of the copy the server
        # held before (None: none), so that what the Parse did not do is undone in the record.
        self.statement = statement
        self.before = before


# The entry of a plain request (forwarded, not swallowed, no statement to account for), one per
# terminator: entries are never changed once made, so every plan shares these rather than making
# one per request.
_PLAIN: Final = {
    ends: Expected(ends) for ends in (ENDS_PARSE, ENDS_BIND, ENDS_CLOSE, ENDS_DESCRIBE, ENDS_EXECUTE, ENDS_SYNC)
}


class ResponsePlan:
    """The ordered list of responses a server connection still owes."""

    __slots__ = ("_queue", "_skipping", "parsed", "prepared", "ready", "setup_failed")

    def __init__(self, prepared: dict[str, int] | None = None) -> None:
        self._queue: deque[Expected] = deque()
        # An error made the server discard messages up to a Sync the router has not sent yet: until
        # that Sync is queued, requests get no response (a pipelining client may still be sending them).
        self._skipping = False
        # Synthetic responses whose turn has come; the caller writes them to the client.
        self.ready = bytearray()
        # The server connection's record of its named statements (prepared.ServerStatements). The
        # router writes a Parse's outcome there when it sends it; the plan corrects the record when
        # the server says otherwise: a failed Parse leaves no statement (the Close before it ran), a
        # skipped one (after an earlier error) leaves the copy that was there before.
        self.prepared: dict[str, int] = prepared if prepared is not None else {}
        # Names of statements the server parsed successfully (the pool's, shared by its connections).
        self.parsed: set[str] = set()
        # A setup statement failed (see Expected.setup): the connection must not serve again.
        self.setup_failed = False

    def __len__(self) -> int:
        return len(self._queue)

    def setting_up(self) -> bool:
        """Whether a set-up statement of the router's own (Expected.setup) has not finished yet."""
        return any(entry.setup for entry in self._queue)

    def swallowing(self) -> bool:
        """Whether the response now arriving goes to the router, not the client."""
        queue = self._queue
        return bool(queue) and queue[0].swallow

    def expect(
        self,
        ends: frozenset[int],
        *,
        swallow: bool = False,
        statement: str | None = None,
        before: int | None = None,
        setup: bool = False,
    ) -> None:
        """Await the response to a request just sent. For a Parse of a named server statement,
        `statement` and `before` (see Expected) let the plan correct the record of the statements;
        `setup` marks the router's own statements that make the session the client's."""
        if self._skipping and ends is not ENDS_SYNC:
            if statement is not None:
                self._restore(statement, before)  # the server skips it: nothing changed there
            return
        self._skipping = False
        plain = _PLAIN.get(ends) if not swallow and statement is None else None
        self._queue.append(plain if plain is not None else Expected(ends, swallow, None, statement, before, setup))

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
            if head.setup:
                self.setup_failed = True
            if head.ends is not ENDS_SYNC:
                self._skip_to_sync()
            return True
        if mtype in head.ends:
            queue.popleft()
            if head.statement is not None:
                self.parsed.add(head.statement)
            if queue and queue[0].synthetic is not None:
                self._release_synthetic()
        return not head.swallow

    def _skip_to_sync(self) -> None:
        """After an error the server ignores everything up to Sync: so do we (synthetics too). The
        request that failed is the first one dropped; the others were skipped."""
        queue = self._queue
        failed: Expected | None = None
        skipped: list[Expected] = []
        first = True
        while queue and (queue[0].synthetic is not None or queue[0].ends is not ENDS_SYNC):
            entry = queue.popleft()
            if entry.statement is not None:
                if first:
                    failed = entry
                else:
                    skipped.append(entry)
            first = False
        self._skipping = not queue
        # Undone latest first, so that each name ends as the earliest skipped entry found it; then
        # the failed Parse, which ran before them all, leaves no statement (its Close ran).
        for entry in reversed(skipped):
            assert entry.statement is not None
            self._restore(entry.statement, entry.before)
        if failed is not None:
            assert failed.statement is not None
            self._restore(failed.statement, None)

    def _restore(self, name: str, epoch: int | None) -> None:
        if epoch is None:
            self.prepared.pop(name, None)
        else:
            self.prepared[name] = epoch

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
