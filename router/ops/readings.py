"""What one health check of a server reads, and the pure math on it.

Owns: one probe's answer (`Reading`) about a server (router.core.topology.ServerKey), a replica's
lag from a reading and its primary's position (`compute_lag`), and the wait before the
next check of a failing server (`backoff_delay`).

Must not: do any I/O, read a clock or keep state: values in, values out (unit-tested without
servers or an event loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Reading:
    """One probe's answer. LSNs are byte positions (see parse_lsn); timestamps are the server's."""

    in_recovery: bool
    current_lsn: int | None = None  # pg_current_wal_lsn(); None in recovery
    replay_lsn: int | None = None  # pg_last_wal_replay_lsn()
    receive_lsn: int | None = None  # pg_last_wal_receive_lsn()
    replay_timestamp: datetime | None = None  # pg_last_xact_replay_timestamp()
    now: datetime | None = None  # the server's now()


def backoff_delay(failures: int, interval: float, max_backoff: float) -> float:
    """Seconds until the next check of a server after `failures` consecutive failures.

    interval * 2**failures, capped at max_backoff; `interval` itself with no failures.
    """
    if failures <= 0:
        return interval
    # Cap the exponent first: 2.0**2000 overflows, and any cap is reached long before 2**64.
    return min(max_backoff, interval * 2.0 ** min(failures, 64))


def compute_lag(
    reading: Reading, primary_lsn: int | None, caught_up_at: datetime | None = None
) -> tuple[int | None, float | None]:
    """(lag_bytes, lag_seconds) of a replica from its reading and its primary's current LSN.

    The reference is the newest WAL position known to exist: the primary's LSN from the same round
    (None when the primary could not be checked) or what the replica has received, whichever is
    greater. Caught up with it -> (0, 0.0): an idle primary does not make its replicas look behind.
    Behind -> the byte difference, and the age of the last replayed commit (None when the replica
    has replayed none), but no more than the time since it was last seen caught up (`caught_up_at`,
    the replica's clock): after a quiet hour the last commit is an hour old, yet a replica that was
    caught up a second ago is a second behind at most. None for both when the server is not in
    recovery or reports no position.
    """
    replay = reading.replay_lsn
    if not reading.in_recovery or replay is None:
        return None, None
    known = [lsn for lsn in (primary_lsn, reading.receive_lsn) if lsn is not None]
    if not known:
        return None, None
    reference = max(known)
    if replay >= reference:
        return 0, 0.0
    seconds: float | None = None
    if reading.replay_timestamp is not None and reading.now is not None:
        seconds = max(0.0, (reading.now - reading.replay_timestamp).total_seconds())
    if caught_up_at is not None and reading.now is not None:
        since = max(0.0, (reading.now - caught_up_at).total_seconds())
        seconds = since if seconds is None else min(seconds, since)
    return reference - replay, seconds
