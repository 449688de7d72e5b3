"""Flow control between a client connection and the server connection attached to it.

Owns one rule: reading from one side is paused exactly while that side is linked to a peer whose
transport cannot take more (it called pause_writing and has not yet called resume_writing). The
rule is a level, recomputed at every edge that can change it: either transport filling up or
draining, and a link made (attach) or broken (detach, hand-over, internal statements, loss).
So an edge can never be lost: a drain that comes while nothing is linked is simply the state the
next link reads, and breaking a link resumes whatever it had paused. (Pausing the server on the
client's pause_writing and resuming whichever server was attached at resume_writing lost the
resume when the transaction ended in between: the paused server went back to its pool and the
next client to get it waited for it forever.)

It only calls pause_reading/resume_reading on the transports it is given: no asyncio, no sockets,
no decision about what is forwarded.
"""

from __future__ import annotations

from typing import Protocol


class ReadingTransport(Protocol):
    """What of a transport flow control needs (asyncio and uvloop transports have it)."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_closing(self) -> bool: ...


class FlowSide:
    """One connection's side of a client-server link: whether its own output is backed up, and
    whether its reading is paused because its peer's output is."""

    __slots__ = ("_backed_up", "_peer", "_reading_paused", "_transport")

    def __init__(self) -> None:
        self._transport: ReadingTransport | None = None
        self._backed_up = False  # our transport's write buffer is above its high-water mark
        self._reading_paused = False  # we paused our transport's reading (and have not resumed it)
        self._peer: FlowSide | None = None

    def opened(self, transport: ReadingTransport) -> None:
        self._transport = transport

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    @property
    def linked(self) -> bool:
        return self._peer is not None

    # --- edges from our own transport (asyncio.Protocol.pause_writing / resume_writing) ----------

    def writing_paused(self) -> None:
        self._backed_up = True
        if self._peer is not None:
            self._peer._follow()

    def writing_resumed(self) -> None:
        self._backed_up = False
        if self._peer is not None:
            self._peer._follow()

    # --- links -------------------------------------------------------------------------------------

    def link(self, peer: FlowSide) -> None:
        """From now on, what one side reads is written to the other."""
        if self._peer is peer:
            return
        self.unlink()
        peer.unlink()
        self._peer = peer
        peer._peer = self
        self._follow()
        peer._follow()

    def unlink(self) -> None:
        """Nothing is forwarded between the two sides any more: neither holds the other back."""
        peer = self._peer
        if peer is None:
            return
        self._peer = None
        peer._peer = None
        self._follow()
        peer._follow()

    def _follow(self) -> None:
        """Make our reading match the level: paused exactly while our peer is backed up."""
        peer = self._peer
        pause = peer is not None and peer._backed_up
        transport = self._transport
        if pause == self._reading_paused or transport is None or transport.is_closing():
            return
        self._reading_paused = pause
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()
