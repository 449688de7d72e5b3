"""Processes seen through /proc (Linux): children, whole trees, liveness, command lines.

For tests and benchmarks that start the router as a subprocess and must find its workers and be
sure none outlives it. Read-only: nothing here signals or waits.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def children(pid: int) -> list[int]:
    """The direct children of `pid`, from every one of its threads (threads can fork too)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children(current)
    return found


def alive(pid: int) -> bool:
    """Running: a zombie has exited (whoever adopted it may just not have reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    """The command line of `pid`, arguments joined by spaces; empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
