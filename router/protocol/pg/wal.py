"""PostgreSQL WAL positions, pure: their text form, and where the last record ends (for
read-your-writes, which compares a replica's replay position with a primary's commit).

Must not do I/O: the health monitor and the client session run the queries, these read the answers.
"""

from __future__ import annotations

import re
from typing import Final

_LSN_RE: Final = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
# Sizes of WAL page headers (SizeOfXLogShortPHD, SizeOfXLogLongPHD on 64-bit platforms).
_SHORT_PAGE_HEADER: Final = 24
_LONG_PAGE_HEADER: Final = 40
# Where the last WAL record ends on the primary, for read-your-writes (see record_end).
COMMIT_POSITION_SQL: Final = (
    "SELECT w.lsn, (pg_walfile_name_offset(w.lsn)).file_offset, current_setting('wal_block_size')"
    " FROM (SELECT pg_current_wal_insert_lsn() AS lsn) AS w"
)


def parse_lsn(text: str) -> int:
    """PostgreSQL's "16/B374D848" text form of a WAL position -> its byte position."""
    match = _LSN_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid LSN {text!r}: expected two hexadecimal numbers like 16/B374D848")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def record_end(insert_lsn: int, segment_offset: int, block_size: int) -> int:
    """The end of the last WAL record, from pg_current_wal_insert_lsn() and its offset in its WAL
    segment (pg_walfile_name_offset). At a page boundary that function points past the new page's
    header, where no record ends: a replica that has replayed everything reports the boundary
    itself (pg_last_wal_replay_lsn()), and would never seem to reach the insert position."""
    if segment_offset == _LONG_PAGE_HEADER:  # the first page of a segment
        return insert_lsn - _LONG_PAGE_HEADER
    if segment_offset % block_size == _SHORT_PAGE_HEADER:
        return insert_lsn - _SHORT_PAGE_HEADER
    return insert_lsn


def format_lsn(lsn: int) -> str:
    """The inverse of parse_lsn, as PostgreSQL prints it."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
