"""Running moves: `rebalance apply` (the plan, several moves at once), `tenants move` (one directed
move), `rebalance abort` (roll one back), and the status of moves in progress.

Owns: turning a plan into catalog move rows (and clearing the reload pins that need no move),
running open moves with bounded concurrency, each claimed by this process (an owner with a
heartbeat in the catalog, so two `rebalance apply` runs share the work instead of running a move
twice, and a dead run's moves are taken over), retrying a cutover that could not happen after
`rebalance.retry_interval`, and the report of what happened (`ApplyReport`).

Must not: know how a move is carried out (mover.py), or print (progress goes to `on_progress`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from router.admin.shard_access import SHARD_ERRORS
from router.catalog.moves import Move, MoveStore
from router.config import RouterConfig
from router.core.topology import Topology
from router.errors import MoveConflict, MoveError, RouterError, UnknownMove
from router.rebalance.mover import MoveProgress, Mover, MoveRetry

log = logging.getLogger(__name__)

# The owner's heartbeat on the moves it runs, and when another run may take them over.
_HEARTBEAT: Final = 2.0
STALE_OWNER: Final = 15.0


def owner_id() -> str:
    """This process, as the owner of the moves it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_gone(owner: str | None) -> bool:
    """Whether `owner` was a process on this host that has exited (killed, say): its moves need
    not wait for its heartbeat to go stale."""
    if owner is None:
        return True
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stale_after(move: Move) -> float:
    """How old the move's owner's heartbeat must be before another run takes the move over."""
    return 0.0 if owner_gone(move.owner) else STALE_OWNER


@dataclass
class ApplyReport:
    """What a run did: moves finished, rolled back or failed (with why), pins cleared."""

    planned: int = 0
    finished: list[Move] = field(default_factory=list)
    aborted: list[Move] = field(default_factory=list)
    failed: list[tuple[Move, str]] = field(default_factory=list)
    unpinned: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # open moves another live run owns
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.aborted


class MoveRunner:
    """Runs open moves of one catalog, `concurrency` at a time, until each is over or failed."""

    def __init__(
        self,
        config: RouterConfig,
        topology: Topology,
        *,
        concurrency: int = 1,
        on_progress: Callable[[MoveProgress], None] | None = None,
        on_event: Callable[[str, Move, str], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store = MoveStore(config.catalog.dsn, config.catalog.schema)
        self.mover = Mover(config, topology, store=self.store, on_progress=on_progress)
        self.concurrency = concurrency
        self.owner = owner_id()
        self._on_event = on_event
        self._running: set[int] = set()

    def _event(self, kind: str, move: Move, text: str = "") -> None:
        if self._on_event is not None:
            self._on_event(kind, move, text)

    async def run(self, moves: list[Move], report: ApplyReport) -> None:
        queue: asyncio.Queue[Move] = asyncio.Queue()
        for move in moves:
            queue.put_nowait(move)
        pending = len(moves)
        done = asyncio.Event()
        if pending == 0:
            return

        def finished_one() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                done.set()

        async def retry_later(move: Move, after: float) -> None:
            await asyncio.sleep(after)
            queue.put_nowait(move)

        retries: set[asyncio.Task[None]] = set()

        async def worker() -> None:
            while True:
                move = await queue.get()
                outcome = await self._run_one(move, report)
                if isinstance(outcome, MoveRetry):
                    task = asyncio.create_task(retry_later(outcome.move, outcome.after))
                    retries.add(task)
                    task.add_done_callback(retries.discard)
                else:
                    finished_one()

        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(worker()) for _ in range(self.concurrency)]
            heartbeat = group.create_task(self._heartbeat())
            await done.wait()
            for task in (*workers, heartbeat, *retries):
                task.cancel()

    async def _run_one(self, move: Move, report: ApplyReport) -> MoveRetry | None:
        latest = await self.store.get(move.move_id) or move
        if not await self.store.claim(move.move_id, self.owner, stale_after(latest)):
            report.skipped.append(move.tenant_id)
            self._event("skipped", move, "another live `rebalance apply` runs it")
            return None
        self._running.add(move.move_id)
        current = await self.store.get(move.move_id) or move
        self._event("started", current)
        try:
            ended = await self.mover.run(current)
        except MoveRetry as retry:
            self._event("retry", retry.move, retry.reason)
            return retry
        except (RouterError, *SHARD_ERRORS) as exc:
            message = exc.message if isinstance(exc, RouterError) else f"{type(exc).__name__}: {exc}"
            latest = await self.store.get(move.move_id) or current
            if latest.stage == "planned":
                # Refused before anything was created: nothing to roll back.
                latest = await self.store.set_stage(latest.move_id, "aborted", expect=("planned",), last_error=message)
                report.aborted.append(latest)
            else:
                latest = await self.store.record(latest.move_id, last_error=message)
                report.failed.append((latest, message))
            self._event("failed", latest, message)
            return None
        finally:
            self._running.discard(move.move_id)
            with contextlib.suppress(RouterError):
                await self.store.release(move.move_id, self.owner)
        if ended.stage == "aborted":
            report.aborted.append(ended)
        else:
            report.finished.append(ended)
        self._event("finished" if ended.stage == "cleaned" else "aborted", ended)
        return None

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(_HEARTBEAT)
            if self._running:
                try:
                    await self.store.touch(sorted(self._running), self.owner)
                except RouterError as exc:
                    log.warning("could not refresh the heartbeat of the moves this run owns: %s", exc.message)


async def apply_plan(
    config: RouterConfig,
    topology: Topology,
    *,
    concurrency: int = 1,
    tenant: str | None = None,
    dry_run: bool = False,
    on_progress: Callable[[MoveProgress], None] | None = None,
    on_event: Callable[[str, Move, str], None] | None = None,
    on_plan: Callable[[object], None] | None = None,
) -> ApplyReport:
    """Carry out the plan (only `tenant`'s part of it with `tenant`): clear the pins that need no
    move, record a move for each planned one, then run every open move (those of earlier,
    interrupted runs included). `dry_run`: compute and report the plan, change nothing."""
    from router.rebalance.sizes import load_plan

    started = time.monotonic()
    plan = await load_plan(config, topology)
    if tenant is not None:
        plan.moves = [m for m in plan.moves if m.tenant == tenant]
        plan.unpins = [t for t in plan.unpins if t == tenant]
    if on_plan is not None:
        on_plan(plan)
    report = ApplyReport(planned=len(plan.moves))
    if dry_run:
        return report
    store = MoveStore(config.catalog.dsn, config.catalog.schema)
    for tenant_id in plan.unpins:
        if await store.clear_pin(tenant_id):
            report.unpinned.append(tenant_id)
    for planned in plan.moves:
        with contextlib.suppress(MoveConflict):  # an open move of the tenant: it runs below
            await store.create(planned.tenant, planned.isolation, planned.source, planned.target, planned.pin)
    moves = [m for m in await store.list(open_only=True) if tenant is None or m.tenant_id == tenant]
    await MoveRunner(config, topology, concurrency=concurrency, on_progress=on_progress, on_event=on_event).run(
        moves, report
    )
    report.seconds = time.monotonic() - started
    return report


async def open_directed_move(
    config: RouterConfig, topology: Topology, tenant_id: str, to_shard: str, *, pin: bool = True
) -> Move:
    """The catalog's move of `tenant_id` to `to_shard`: the open one (if it goes there), else a new
    one, recorded but not yet run. Refuses an unknown shard or tenant, a tenant on `to_shard`
    already, and an open move elsewhere (MoveConflict)."""
    from router.admin.shard_access import shard_primary

    shard_primary(topology, to_shard)  # UnknownShard if shards.yaml lacks it
    store = MoveStore(config.catalog.dsn, config.catalog.schema)
    move = await store.open_move(tenant_id)
    if move is None:
        mover = Mover(config, topology, store=store)
        tenant = await mover.tenant(tenant_id)
        if tenant is None:
            raise MoveError(f"tenant {tenant_id!r} is not in the catalog")
        source = await mover.placement(tenant_id)
        assert source is not None
        if source == to_shard:
            raise MoveError(f"tenant {tenant_id!r} is on {to_shard} already")
        return await store.create(tenant_id, tenant.isolation, source, to_shard, to_shard if pin else None)
    if move.target != to_shard:
        raise MoveConflict(
            f"tenant {tenant_id!r} is being moved to {move.target} already (move {move.move_id})",
            hint=f"let it finish (`rebalance apply`) or roll it back (`rebalance abort {move.move_id}`)",
        )
    return move


async def move_tenant(
    config: RouterConfig,
    topology: Topology,
    tenant_id: str,
    to_shard: str,
    *,
    pin: bool = True,
    on_progress: Callable[[MoveProgress], None] | None = None,
    on_event: Callable[[str, Move, str], None] | None = None,
) -> ApplyReport:
    """Move one tenant to `to_shard` (a directed move); it ends pinned there unless `pin` is off.
    An open move of the tenant is resumed instead, if it goes to the same shard."""
    started = time.monotonic()
    move = await open_directed_move(config, topology, tenant_id, to_shard, pin=pin)
    report = ApplyReport(planned=1)
    runner = MoveRunner(config, topology, concurrency=1, on_progress=on_progress, on_event=on_event)
    await runner.run([move], report)
    report.seconds = time.monotonic() - started
    return report


async def abort_move(config: RouterConfig, topology: Topology, move_id: int) -> Move:
    """Roll back an open move that has not switched (MoveConflict once it has, or while another
    live run owns it)."""
    store = MoveStore(config.catalog.dsn, config.catalog.schema)
    move = await store.get(move_id)
    if move is None:
        raise UnknownMove(f"there is no move {move_id}", hint="see `tenant-router rebalance status`")
    if move.finished:
        raise MoveConflict(f"move {move_id} is over already ({move.stage})")
    owner = owner_id()
    if not await store.claim(move_id, owner, stale_after(move)):
        raise MoveConflict(
            f"move {move_id} is being run by {move.owner}",
            hint="stop that `rebalance apply` first, or wait until its heartbeat is stale",
        )
    try:
        return await Mover(config, topology, store=store).roll_back(move, reason="aborted by an operator")
    finally:
        with contextlib.suppress(RouterError):
            await store.release(move_id, owner)
