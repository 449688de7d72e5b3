"""What the router reads back from a server session after a client's transaction, before letting it go.

Owns the three read-backs and the meaning of their rows: the settings a transaction changed (exact,
whatever form the change took: SET, set_config, RESET ALL, a function's SET clause), the names of
the statements a DEALLOCATE or DISCARD ALL may have dropped, and the WAL position a write on a
primary reached (read-your-writes). The session (router.protocol.pg.session) decides which to run;
the network adapter runs them. Sans-IO: SQL out, rows in.
"""

from __future__ import annotations

import enum

from router.errors import BackendUnavailable
from router.protocol.pg.prepared import UNKNOWN_EPOCH, ServerStatements
from router.protocol.pg.wal import parse_lsn, record_end

Rows = list[list[str | None]]


class ReadBack(enum.Enum):
    """One read-back; its value says what it does, for the error when it fails."""

    SETTINGS = "read session settings back"
    PREPARED = "read prepared statements back"
    COMMIT_POSITION = "read the WAL position"


def settings_in_force(rows: Rows) -> dict[str, str]:
    """The settings the server reports in force (settings_in_force_sql), the empty ones left out."""
    return {str(row[0]): str(row[1]) for row in rows if row[1]}


def statements_found(rows: Rows, held: ServerStatements) -> None:
    """Make the record `held` the names the server really has (PREPARED_NAMES_SQL). One whose epoch
    the record lost is older than any client's parse, so it is parsed again where used."""
    found = {str(row[0]): held.get(str(row[0]), UNKNOWN_EPOCH) for row in rows}
    held.clear()
    held.update(found)


def commit_position(rows: Rows) -> int:
    """The end of the primary's WAL after the commit (COMMIT_POSITION_SQL): any replica that has
    replayed up to it has the commit."""
    if not rows:
        raise BackendUnavailable(f"could not {ReadBack.COMMIT_POSITION.value}: no row")
    row = rows[0]
    return record_end(parse_lsn(str(row[0])), int(str(row[1])), int(str(row[2])))
