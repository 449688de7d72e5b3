"""The live progress of `rebalance apply` and `tenants move`: moves done and total, bytes copied,
each running move's stage, and an ETA.

Owns `ProgressBoard` (what is known: fed by the runner's events and the movers' progress
reports; `render` is pure, so it is unit-tested on text) and `TerminalProgress`, which draws the
board on a terminal in place (a few times a second at most) or, when the output is not a
terminal (a log, CI), prints one line per change of a move's stage instead.

Must not: run or decide anything, or read the catalog.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Final, TextIO

from router.catalog.moves import Move
from router.rebalance.mover import MoveProgress
from router.rebalance.plan import human_bytes

_BAR_WIDTH: Final = 24
_REDRAW_INTERVAL: Final = 0.2


@dataclass
class _Running:
    move: Move
    activity: str
    copied: int
    lag: int | None


class ProgressBoard:
    """Moves done, failed and running, bytes copied, and the rate since `started`."""

    def __init__(self, total: int, total_bytes: int | None, started: float) -> None:
        self.total = total
        self.total_bytes = total_bytes
        self.started = started
        self.done = 0
        self.failed = 0
        self.bytes_done = 0  # of moves that are over
        self.running: dict[int, _Running] = {}

    def progress(self, report: MoveProgress) -> bool:
        """A mover's report; True if a move's activity changed (worth a line in a log)."""
        current = self.running.get(report.move.move_id)
        changed = current is None or current.activity != report.activity
        self.running[report.move.move_id] = _Running(
            report.move, report.activity, report.bytes_copied, report.lag_bytes
        )
        return changed

    def event(self, kind: str, move: Move) -> None:
        """The runner's events: started, retry, finished, aborted, failed, skipped."""
        if kind in ("finished", "aborted", "failed", "skipped"):
            running = self.running.pop(move.move_id, None)
            if kind == "finished":
                self.done += 1
                self.bytes_done += max(move.bytes_copied, running.copied if running else 0)
            else:
                self.failed += 1
        elif kind == "started" and move.move_id not in self.running:
            self.running[move.move_id] = _Running(move, move.stage.replace("_", " "), move.bytes_copied, None)
        self.total = max(self.total, self.done + self.failed + len(self.running))

    @property
    def bytes_copied(self) -> int:
        return self.bytes_done + sum(r.copied for r in self.running.values())

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate so far, by bytes when the plan estimated them, else by moves."""
        elapsed = now - self.started
        if elapsed <= 0:
            return None
        if self.total_bytes:
            copied = self.bytes_copied
            if copied <= 0:
                return None
            return max(0.0, (self.total_bytes - copied) * elapsed / copied)
        finished = self.done + self.failed
        if finished == 0:
            return None
        return max(0.0, (self.total - finished) * elapsed / finished)

    def render(self, now: float) -> list[str]:
        """The board as lines: a bar with the totals, then one line per running move."""
        finished = self.done + self.failed
        filled = _BAR_WIDTH * finished // self.total if self.total else _BAR_WIDTH
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        copied = human_bytes(self.bytes_copied)
        of = f" of ~{human_bytes(self.total_bytes)}" if self.total_bytes else ""
        elapsed = now - self.started
        rate = f", {human_bytes(int(self.bytes_copied / elapsed))}/s" if elapsed > 0 and self.bytes_copied else ""
        eta = self.eta(now)
        head = (
            f"[{bar}] {self.done}/{self.total} moves done"
            + (f", {self.failed} failed" if self.failed else "")
            + f" | {copied}{of} copied{rate} | "
            + (f"ETA {format_duration(eta)}" if eta is not None and finished < self.total else "ETA -")
        )
        lines = [head]
        for running in sorted(self.running.values(), key=lambda r: r.move.move_id):
            move = running.move
            lag = f", {human_bytes(running.lag)} behind" if running.lag else ""
            lines.append(
                f"  {move.tenant_id:<24} {move.isolation:<8} {move.source} -> {move.target}:"
                f" {running.activity} ({human_bytes(running.copied)}{lag})"
            )
        return lines


def format_duration(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class TerminalProgress:
    """Draws a ProgressBoard on `out`: in place on a terminal, as lines elsewhere."""

    def __init__(self, board: ProgressBoard, out: TextIO | None = None) -> None:
        self.board = board
        self.out = out or sys.stderr
        self.live = self.out.isatty()
        self._drawn = 0
        self._last = 0.0

    def progress(self, report: MoveProgress) -> None:
        changed = self.board.progress(report)
        if self.live:
            self._draw()
        elif changed:
            move = report.move
            self._line(f"{move.tenant_id}: {move.source} -> {move.target}: {report.activity}")

    def event(self, kind: str, move: Move, text: str = "") -> None:
        self.board.event(kind, move)
        if kind in ("finished", "aborted", "failed", "retry", "skipped"):
            what = {
                "finished": f"moved to {move.target}"
                + (f" (held {move.hold_seconds * 1e3:.0f} ms)" if move.hold_seconds is not None else ""),
                "aborted": "rolled back",
                "failed": "failed",
                "retry": "cutover postponed",
                "skipped": "skipped",
            }[kind]
            self._line(f"{move.tenant_id}: {what}" + (f": {text}" if text else ""), force=True)
        elif self.live:
            self._draw()

    def finish(self) -> None:
        if self.live:
            self._draw(force=True)

    def _line(self, text: str, *, force: bool = False) -> None:
        if self.live:
            self._clear()
            self.out.write(text + "\n")
            self._draw(force=True)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < _REDRAW_INTERVAL:
            return
        self._last = now
        self._clear()
        lines = self.board.render(now)
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)
