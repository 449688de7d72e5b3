"""What passing a server connection from one client to another took: data the protocol layer fills
in (its session decides what to clear, router.protocol.pg.session) and the lease counts on the pool.

Must not import any protocol, network or driver code: every front end reports its hand-overs in
these terms.
"""

from __future__ import annotations

import enum


class Handover(enum.IntEnum):
    KEPT = 0  # the client that used the connection last has it again: nothing passed
    AS_IS = 1  # another client's: nothing to clear (or the exact hand-over is off)
    SEQUENCES_RESET = 2  # another client's, which wrote rows: sequence state cleared first
    WIPED = 3  # another client's, which may have left anything: the session wiped first
