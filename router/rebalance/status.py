"""`rebalance status`: the moves in progress, the last ones that ended, and anything a move left
behind on the shards (replication slots, subscriptions, publications, marker rows of moves that
are over), which a healthy run never does.

Owns gathering and rendering that report (text, and JSON for tools).

Must not: change anything.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from router.admin.shard_access import SHARD_ERRORS, admin_login, close, connect
from router.catalog.moves import Move, MoveStore
from router.config import RouterConfig
from router.core.topology import Topology
from router.rebalance.plan import human_bytes
from router.rebalance.replication import MARKER_SCHEMA

_RECENT: Final = 10
_NAME: Final = re.compile(r"tenant_router_move_(\d+)$")


@dataclass
class StatusReport:
    open: list[Move] = field(default_factory=list)
    recent: list[Move] = field(default_factory=list)  # the last moves that ended
    left_behind: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        def move(m: Move) -> dict[str, Any]:
            data = asdict(m)
            for key in ("owner_seen_at", "created_at", "updated_at", "finished_at"):
                data[key] = data[key].isoformat() if data[key] is not None else None
            return data

        return {
            "open": [move(m) for m in self.open],
            "recent": [move(m) for m in self.recent],
            "left_behind": self.left_behind,
            "unreachable": self.unreachable,
        }

    def render(self) -> str:
        lines = []
        if self.open:
            lines.append(f"{len(self.open)} move(s) in progress:")
            lines += [f"  {_line(m)}" for m in self.open]
        else:
            lines.append("no move in progress")
        if self.recent:
            lines.append("last moves that ended:")
            lines += [f"  {_line(m)}" for m in self.recent]
        if self.left_behind:
            lines.append("left behind on the shards (remove by hand, or run `rebalance apply` if a move is open):")
            lines += [f"  {item}" for item in self.left_behind]
        else:
            lines.append("nothing left behind on the shards")
        lines += [f"not checked: {item}" for item in self.unreachable]
        return "\n".join(lines)


def _line(move: Move) -> str:
    text = (
        f"#{move.move_id} {move.tenant_id} ({move.isolation}) {move.source} -> {move.target}:"
        f" {move.stage.replace('_', ' ')}, {human_bytes(move.bytes_copied)}"
    )
    if move.attempts:
        text += f", {move.attempts} cutover attempt(s)"
    if move.hold_seconds is not None:
        text += f", held {move.hold_seconds * 1e3:.0f} ms"
    if move.owner and not move.finished:
        text += f", run by {move.owner}"
    if move.last_error:
        text += f" ({move.last_error})"
    return text


async def gather_status(config: RouterConfig, topology: Topology) -> StatusReport:
    store = MoveStore(config.catalog.dsn, config.catalog.schema)
    moves = await store.list()
    report = StatusReport(
        open=[m for m in moves if not m.finished],
        recent=sorted((m for m in moves if m.finished), key=lambda m: m.move_id)[-_RECENT:],
    )
    open_ids = {m.move_id for m in report.open}
    admin = admin_login(config, "looking for what moves left on the shards")
    for name, shard in sorted(topology.shards.items()):
        try:
            conn = await connect(shard.primary, admin)
        except SHARD_ERRORS as exc:
            report.unreachable.append(f"shard {name}: {exc}")
            continue
        try:
            found = [
                (kind, row[0])
                for kind, sql in (
                    ("replication slot", "SELECT slot_name::text FROM pg_replication_slots"),
                    ("subscription", "SELECT subname::text FROM pg_subscription"),
                    ("publication", "SELECT pubname::text FROM pg_publication"),
                )
                for row in await conn.fetch(sql)
            ]
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{MARKER_SCHEMA}.markers"):
                found += [
                    ("marker row", f"tenant_router_move_{row[0]}")
                    for row in await conn.fetch(f"SELECT move_id FROM {MARKER_SCHEMA}.markers")
                ]
        finally:
            await close(conn)
        for kind, object_name in found:
            match = _NAME.match(object_name)
            if match and int(match.group(1)) not in open_ids:
                report.left_behind.append(f"shard {name}: {kind} {object_name}")
    return report
