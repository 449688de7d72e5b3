"""One tenant move, online: its data copied to the target shard while it is served on its source,
then a cutover of a fraction of a second, then the source cleaned up.

Owns the move's state machine. Every stage is recorded in the catalog before its work starts
(router/catalog/moves.py), so whichever process runs the move next (after a crash, a SIGKILL, a
Ctrl-C) knows what may exist and either finishes the move or rolls it back:

- planned: nothing exists yet. The prerequisites are checked (both shards can replicate, the
  tenant is where the move says, a shared table's replica identity covers its tenant column).
- copying: the target is (re)prepared from scratch: whatever an earlier attempt left there is
  dropped first; the tenant's namespace is provisioned, its objects restored with pg_dump and
  pg_restore (schema_copy.py), and the target subscribes to a publication of the tenant's data
  (replication.py), which starts the initial copy.
- catching_up: the initial copy ends and replication follows the source's writes. When the
  target is close, a short hold (every router worker and instance acknowledges it through the
  catalog: the tenant's running transactions end, new ones wait) lets the mover see the target
  apply the source's last commit (the marker) and take a snapshot on each side; the hold is
  released at once and the two snapshots are compared table by table (rows and checksums)
  while the tenant is served on its source. A difference rolls the move back: the tenant never
  left its source.
- verified -> holding: the cutover. Hold the tenant again (bounded by `rebalance.max_hold`: if
  it is not acknowledged in time, or the target does not apply the marker in time, the hold is
  released, the tenant served on its source, and the cutover tried again later), wait for the
  marker, set the target's sequences past the source's, switch the tenant's placement in the
  catalog in a transaction that checks the hold is still in force (a hold expires: a dead
  mover cannot hold a tenant forever), release. Held transactions then run on the target:
  their clients saw a delay, never an error.
- switched: the replication is taken down (subscription first, so nothing done to the source
  reaches the target), then the tenant's data on the source is removed (rows, schema, or
  database and role), after checking the catalog places the tenant on the target.
- cleaned / aborted: over.

Verification runs before the cutover, not after: compared at a held point, the two sides must
be equal, and a difference then costs nothing (the tenant is still on its source), whereas after
the switch the target changes at once and a crash would lose the snapshot to compare with.

Must not: choose what to move (plan.py, apply.py), or print (it reports through `on_progress`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from router.admin.provisioning import drop_tenant, provision_tenant
from router.admin.shard_access import Login, admin_login, shard_primary
from router.admin.tenant_admin import TenantView, catalog_store
from router.admin.tenant_lifecycle.shard import session_login
from router.catalog.cluster import HoldCoordinator
from router.catalog.moves import Move, MoveStore
from router.catalog.schema import Tenant
from router.config import RouterConfig
from router.core.hashing import Ring
from router.core.routing import place_tenant
from router.core.topology import Topology
from router.errors import (
    ClusterError,
    CutoverTooSlow,
    HoldExpired,
    MoveConflict,
    MoveError,
    MoveVerificationFailed,
    RouterError,
)
from router.isolation import database_name, quote_ident
from router.rebalance import replication, schema_copy, verify
from router.rebalance.replication import ReplicationNames, Side

log = logging.getLogger(__name__)

# Fault injection for tests: "<stage>=<seconds>" sleeps that long right after <stage> is recorded
# ("held": once the cutover's hold is acknowledged, the tenant held).
PAUSE_ENV: Final = "TENANT_ROUTER_MOVE_PAUSE"
# How long past the cutover's own bound its hold lives if the mover dies holding it: the switch
# needs the hold for _SWITCH_MARGIN after max_hold at most; a dead mover's hold should end before
# the held clients' own wait (pool.wait_timeout, 5 s by default) fails them.
_HOLD_TTL_SLACK: Final = 1.0
# The hold must stay in force at least this long after the placement switch commits.
_SWITCH_MARGIN: Final = 0.2
_PROGRESS_INTERVAL: Final = 0.5
# Replication errors that stop growing for this long count as over (a transient conflict).
_RECOVERED_AFTER: Final = 30.0
_RECORD_INTERVAL: Final = 2.0


class MoveRetry(Exception):
    """The cutover (or the verification's hold) could not happen now; the tenant is served on its
    source and the move stays where it is, to be tried again after `after` seconds."""

    def __init__(self, move: Move, reason: str, after: float) -> None:
        super().__init__(reason)
        self.move = move
        self.reason = reason
        self.after = after


@dataclass(frozen=True)
class MoveProgress:
    """What a move is doing, for a progress display."""

    move: Move
    activity: str  # what it does right now, e.g. "copying 3/4 tables", "holding"
    bytes_copied: int
    lag_bytes: int | None = None


ProgressCallback = Callable[[MoveProgress], None]


def hold_reason(move: Move) -> str:
    """What the move's holds say in the catalog (`holds.reason`), so a later run finds its own."""
    return f"move {move.move_id} of tenant {move.tenant_id}"


class Mover:
    """Runs moves of one catalog and topology; `run` drives one move as far as it can go."""

    def __init__(
        self,
        config: RouterConfig,
        topology: Topology,
        *,
        store: MoveStore | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.config = config
        self.topology = topology
        self.ring = Ring.from_topology(topology)
        self.store = store or MoveStore(config.catalog.dsn, config.catalog.schema)
        self.settings = config.rebalance
        self.admin = admin_login(config, "moving tenants")
        self.holds = HoldCoordinator(config.catalog.dsn, config.catalog.schema)
        self._on_progress = on_progress
        # Per move: the target's replication errors last seen, failing since, last grown (loop time).
        self._failures: dict[int, tuple[int | None, float | None, float]] = {}

    # -- the state machine --

    async def run(self, move: Move) -> Move:
        """Drive `move` to cleaned (or aborted, rolled back); MoveRetry if its cutover must wait."""
        while not move.finished:
            step = {
                "planned": self._start,
                "copying": self._copy,
                "catching_up": self._catch_up,
                "verified": self._cut_over,
                "holding": self._recover_hold,
                "switched": self._clean_up,
            }[move.stage]
            move = await step(move)
        return move

    async def _to(self, move: Move, stage: str, *, expect: tuple[str, ...], **fields: Any) -> Move:
        moved = await self.store.set_stage(move.move_id, stage, expect=expect, **fields)
        log.info(
            "move %d: tenant %s (%s) %s -> %s: %s",
            move.move_id,
            move.tenant_id,
            move.isolation,
            move.source,
            move.target,
            stage.replace("_", " "),
        )
        self._report(moved, stage.replace("_", " "), moved.bytes_copied)
        await _pause_if_asked(stage)
        return moved

    async def _start(self, move: Move) -> Move:
        await self._check(move)
        return await self._to(move, "copying", expect=("planned",))

    async def _copy(self, move: Move) -> Move:
        await self._check(move)
        source, target = self.sides(move)
        names = ReplicationNames(move.move_id)
        # Whatever an earlier attempt left on the target goes first: the copy starts afresh.
        await self._discard_copy(move, keep=move.source)
        self._report(move, "preparing the target", 0)
        await provision_tenant(
            self.config, self.topology, move.tenant_id, move.isolation, move.target, schema_files=False
        )
        await schema_copy.copy_objects(move.isolation, move.tenant_id, source, target, self.admin)
        async with replication.opened(source, self.admin) as conn:
            tables = await replication.shared_tables(conn) if move.isolation == "shared" else []
            await replication.ensure_markers(conn, move.move_id, row=True)
            sql = replication.publication_sql(names, move.isolation, move.tenant_id, tables)
            await replication.create_publication(conn, sql, names)
        async with replication.opened(target, self.admin) as conn:
            await replication.ensure_markers(conn, move.move_id, row=False)
            await replication.create_subscription(conn, names, source, self.admin)
        return await self._to(move, "catching_up", expect=("copying",))

    async def _catch_up(self, move: Move) -> Move:
        source, target = self.sides(move)
        names = ReplicationNames(move.move_id)
        await self._drop_dead_runs_hold(move)
        if not await self._replicating(move, source, target):
            log.warning("move %d: the subscription is gone or broken; copying again", move.move_id)
            return await self._to(move, "copying", expect=("catching_up",), last_error="subscription lost; recopied")
        await self._wait_until_close(move, source, target, names)
        try:
            digests = await self._held_snapshots(move, source, target)
        except MoveRetry as retry:
            return await self._retry(move, retry.reason, verifying=True)
        problems = verify.compare(*digests)
        if problems:
            await self.roll_back(move, reason="verification failed: " + "; ".join(problems))
            raise MoveVerificationFailed(
                f"move {move.move_id} of tenant {move.tenant_id!r}: the target's copy differs from the source's:"
                f" {'; '.join(problems)}; the move was rolled back, the tenant stays on {move.source}"
            )
        rows = sum(d.rows for d in digests[0])
        size = sum(d.size for d in digests[0])
        return await self._to(move, "verified", expect=("catching_up",), rows_copied=rows, bytes_copied=size)

    async def _cut_over(self, move: Move) -> Move:
        source, target = self.sides(move)
        names = ReplicationNames(move.move_id)
        await self._drop_dead_runs_hold(move)
        if not await self._replicating(move, source, target):
            return await self._to(move, "copying", expect=("verified",), last_error="subscription lost; recopied")
        await self._wait_until_close(move, source, target, names)
        move = await self._to(move, "holding", expect=("verified",), attempts=move.attempts + 1)
        hold_id: str | None = None
        try:
            async with (
                replication.opened(source, self.admin) as src,
                replication.opened(target, self.admin) as dst,
                self.holds.connection() as catalog,
            ):
                # Everything the hold waits for is connected before it starts.
                tables = await replication.shared_tables(src) if move.isolation == "shared" else []
                sequences = await replication.tenant_sequences(src, move.isolation, move.tenant_id, tables)
                started = time.monotonic()
                deadline = asyncio.get_running_loop().time() + self.settings.max_hold
                hold = await self.holds.request_hold(
                    move.tenant_id,
                    hold_reason(move),
                    timeout=self.settings.max_hold,
                    ttl=self.settings.max_hold + _HOLD_TTL_SLACK,
                    conn=catalog,
                )
                hold_id = hold.hold_id
                t_acked = time.monotonic()
                await _pause_if_asked("held")  # fault injection: a mover that dies holding the tenant
                marker = await replication.bump_marker(src, move.move_id)
                if not await replication.wait_for_marker(dst, move.move_id, marker, deadline):
                    raise CutoverTooSlow(
                        f"the target did not catch up within rebalance.max_hold ({self.settings.max_hold:g}s)"
                    )
                await replication.copy_sequences(src, dst, sequences)
                t_caught = time.monotonic()
                if asyncio.get_running_loop().time() > deadline:
                    raise CutoverTooSlow(
                        f"the cutover took longer than rebalance.max_hold ({self.settings.max_hold:g}s)"
                    )
                move = await self.store.switch(move, hold_id, _SWITCH_MARGIN, conn=catalog)
                t_switched = time.monotonic()
                await _release_quietly(self.holds, hold_id, catalog)
        except (ClusterError, HoldExpired, CutoverTooSlow) as exc:
            if hold_id is not None:
                await _release_quietly(self.holds, hold_id)
            return await self._retry(move, str(exc))
        except BaseException:
            if hold_id is not None:
                await asyncio.shield(_release_quietly(self.holds, hold_id))
            raise
        held = time.monotonic() - started
        log.debug(
            "move %d: cutover: acknowledged %.1f ms, caught up %.1f ms, switched %.1f ms, released %.1f ms",
            move.move_id,
            (t_acked - started) * 1e3,
            (t_caught - t_acked) * 1e3,
            (t_switched - t_caught) * 1e3,
            (time.monotonic() - t_switched) * 1e3,
        )
        log.info(
            "move %d: tenant %s now served on %s (held %.0f ms)", move.move_id, move.tenant_id, move.target, held * 1e3
        )
        move = await self.store.record(move.move_id, hold_seconds=held, last_error=None)
        self._report(move, "switched", move.bytes_copied)
        await _pause_if_asked("switched")
        return move

    async def _retry(self, move: Move, reason: str, *, verifying: bool = False) -> Move:
        """A hold (the cutover's, or the verification's with `verifying`) did not do its work: the
        tenant is on its source; try again later, or roll back once the attempts are used up.
        The cutover counted its attempt when it began; the verification counts it here."""
        if verifying:
            move = await self.store.record(move.move_id, attempts=move.attempts + 1, last_error=reason)
        if move.attempts >= self.settings.max_attempts:
            await self.roll_back(move, reason=f"gave up after {move.attempts} attempts: {reason}")
            raise MoveError(
                f"move {move.move_id} of tenant {move.tenant_id!r} gave up after {move.attempts} attempts"
                f" ({reason}); it was rolled back, the tenant stays on {move.source}"
            )
        log.warning(
            "move %d: tenant %s: %s attempt %d of %d did not happen (%s); the tenant stays on %s, retrying in %gs",
            move.move_id,
            move.tenant_id,
            "verification" if verifying else "cutover",
            move.attempts,
            self.settings.max_attempts,
            reason,
            move.source,
            self.settings.retry_interval,
        )
        if not verifying:
            move = await self.store.set_stage(move.move_id, "verified", expect=("holding",), last_error=reason)
        raise MoveRetry(move, reason, self.settings.retry_interval)

    async def _recover_hold(self, move: Move) -> Move:
        """A run died in the cutover (the placement was not switched: that is one transaction with
        the stage). Its hold expires by itself; remove it now, and try the cutover again."""
        await self._drop_dead_runs_hold(move)
        return await self._to(move, "verified", expect=("holding",), last_error="resumed after the mover died holding")

    async def _drop_dead_runs_hold(self, move: Move) -> None:
        """A hold of this move that a run which died left (this run owns the move now)."""
        if await self.store.drop_holds(move.tenant_id, hold_reason(move)):
            log.warning("move %d: removed the hold a dead run left on tenant %s", move.move_id, move.tenant_id)

    async def _clean_up(self, move: Move) -> Move:
        self._report(move, "removing the source copy", move.bytes_copied)
        await self._discard_copy(move, keep=move.target)
        return await self._to(move, "cleaned", expect=("switched",))

    # -- rolling back --

    async def roll_back(self, move: Move, *, reason: str) -> Move:
        """Undo a move that has not switched: nothing of it stays on either shard, the tenant is
        served on its source throughout. MoveConflict once it has switched (it can only finish)."""
        if move.switched:
            raise MoveConflict(
                f"move {move.move_id} of tenant {move.tenant_id!r} has switched to {move.target} already;"
                " it can only be finished",
                hint="run `tenant-router rebalance apply`",
            )
        await self.store.drop_holds(move.tenant_id, hold_reason(move))
        await self._discard_copy(move, keep=move.source)
        log.warning("move %d of tenant %s rolled back: %s", move.move_id, move.tenant_id, reason)
        expect = ("planned", "copying", "catching_up", "verified", "holding")
        return await self.store.set_stage(move.move_id, "aborted", expect=expect, last_error=reason)

    async def _discard_copy(self, move: Move, *, keep: str) -> None:
        """Take the move's replication down, then remove the tenant's data from the side that is
        not `keep`, once the catalog is seen to serve the tenant from `keep`."""
        source, target = self.sides(move)
        names = ReplicationNames(move.move_id)
        await replication.teardown(names, source, target, self.admin, own_database=move.isolation == "database")
        discard = target if keep == move.source else source
        served = await self.placement(move.tenant_id)
        if served != keep:
            raise MoveError(
                f"move {move.move_id}: the catalog places tenant {move.tenant_id!r} on {served}, not on {keep};"
                f" its data on {discard.shard} is kept",
                hint="see `tenant-router tenants show`",
            )
        await self._remove_copy(move, discard, discard.shard)

    async def _remove_copy(self, move: Move, side: Side, shard: str) -> None:
        """Remove the tenant's data from `side`, which the caller checked the tenant is not served on."""
        if move.isolation != "shared":
            await drop_tenant(self.config, self.topology, move.tenant_id, move.isolation, shard)
            return
        async with replication.opened(side, self.admin) as conn:
            for table in await replication.shared_tables(conn):
                await conn.execute(
                    f"DELETE FROM {table.sql} WHERE {quote_ident(table.tenant_column)} = $1", move.tenant_id
                )

    # -- helpers --

    def sides(self, move: Move) -> tuple[Side, Side]:
        return self._side(move, move.source), self._side(move, move.target)

    def _side(self, move: Move, shard: str) -> Side:
        address = shard_primary(self.topology, shard, move.tenant_id)
        database = database_name(move.tenant_id) if move.isolation == "database" else address.dbname
        return Side(shard, address, database)

    async def tenant(self, tenant_id: str) -> Tenant | None:
        async with catalog_store(self.config) as store:
            return await store.get(tenant_id)

    async def placement(self, tenant_id: str) -> str | None:
        """The shard the catalog and shards.yaml place the tenant on now (None: not in the catalog)."""
        tenant = await self.tenant(tenant_id)
        if tenant is None:
            return None
        return place_tenant(tenant_id, tenant.shard, self.topology, self.ring).shard

    async def _check(self, move: Move) -> None:
        """What must hold before anything is created for the move; MoveError otherwise."""
        from router.rebalance.prereq import require_move_prerequisites

        now = await self.placement(move.tenant_id)
        if now is None:
            raise MoveError(f"move {move.move_id}: tenant {move.tenant_id!r} is not in the catalog any more")
        if now != move.source:
            raise MoveError(
                f"move {move.move_id}: tenant {move.tenant_id!r} is on {now}, not on {move.source} as the move expects"
            )
        source, target = self.sides(move)
        if (source.address.host, source.address.port) == (target.address.host, target.address.port):
            raise MoveError(
                f"shards {move.source} and {move.target} are on the same server"
                f" ({source.address.host}:{source.address.port}); a move copies between servers"
            )
        await require_move_prerequisites(self.config, self.topology, move.source, move.target)
        if move.isolation == "shared":
            async with replication.opened(source, self.admin) as conn:
                tables = await replication.shared_tables(conn)
                problems = await replication.identity_problems(conn, tables, source)
            async with replication.opened(target, self.admin) as conn:
                problems += [
                    p for p in await replication.identity_problems(conn, tables, target) if "does not exist" in p
                ]
            if problems:
                raise MoveError(f"tenant {move.tenant_id!r} cannot be moved: " + "; ".join(problems))

    async def _replicating(self, move: Move, source: Side, target: Side) -> bool:
        """Whether the move's subscription exists on the target and its slot on the source."""
        names = ReplicationNames(move.move_id)
        async with replication.opened(target, self.admin) as conn:
            state = await replication.sync_state(conn, names)
        if not state.exists:
            return False
        async with replication.opened(source, self.admin) as conn:
            return await replication.lag_bytes(conn, names) is not None

    async def _wait_until_close(self, move: Move, source: Side, target: Side, names: ReplicationNames) -> None:
        """Until every table finished its initial copy and the target is within
        `rebalance.cutover_lag_bytes` of the source; reports progress meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.catchup_timeout
        recorded = 0.0
        copies: dict[int, int] = {}  # table oid -> bytes its initial copy loaded, as last seen
        # The target's replication errors as last seen, since when they keep growing, and when they
        # last grew: kept across the calls for one move (a verification retried comes back here).
        errors, failing_since, last_failure = self._failures.get(move.move_id, (None, None, 0.0))
        async with replication.opened(source, self.admin) as src, replication.opened(target, self.admin) as dst:
            while True:
                state = await replication.sync_state(dst, names)
                now = loop.time()
                if errors is not None and state.errors > errors:
                    failing_since = now if failing_since is None else failing_since
                    last_failure = now
                elif failing_since is not None and now - last_failure > _RECOVERED_AFTER:
                    failing_since = None
                errors = state.errors
                self._failures[move.move_id] = (errors, failing_since, last_failure)
                if failing_since is not None and now - failing_since > self.settings.failing_for:
                    reason = (
                        f"replication to {target.describe()} kept failing for {now - failing_since:.0f}s"
                        f" ({state.errors} errors; the reason is in that server's log), typically DDL on the"
                        " tenant during its move, which is not replicated"
                    )
                    await self.roll_back(move, reason=reason)
                    raise MoveError(
                        f"move {move.move_id} of tenant {move.tenant_id!r}: {reason}; the move was rolled back,"
                        f" the tenant stays on {move.source}",
                        hint="move it again: the new copy takes the tenant's objects as they are now",
                    )
                lag = await replication.lag_bytes(src, names)
                for relid, loaded in (await replication.copy_progress(dst, names)).items():
                    copies[relid] = max(loaded, copies.get(relid, 0))
                copied = sum(copies.values())
                # Not while replication fails: the target stays behind whatever the slot's lag says.
                synced = (
                    state.synced
                    and lag is not None
                    and lag <= self.settings.cutover_lag_bytes
                    and failing_since is None
                )
                activity = "catching up" if state.synced else f"copying ({state.ready} of {state.tables} tables done)"
                self._report(move, activity, max(copied, move.bytes_copied), lag)
                if loop.time() - recorded >= _RECORD_INTERVAL:
                    recorded = loop.time()
                    move = await self.store.record(
                        move.move_id, lag_bytes=lag, bytes_copied=max(copied, move.bytes_copied)
                    )
                if synced:
                    return
                if loop.time() > deadline:
                    raise MoveError(
                        f"move {move.move_id} of tenant {move.tenant_id!r}: the target did not catch up within"
                        f" rebalance.catchup_timeout ({self.settings.catchup_timeout:g}s);"
                        f" {state.ready} of {state.tables} tables copied, {lag} bytes behind"
                        + (
                            f", {state.errors} replication errors (see {target.describe()}'s log)"
                            if state.errors
                            else ""
                        )
                    )
                await asyncio.sleep(_PROGRESS_INTERVAL if not state.synced else 0.05)

    async def _held_snapshots(
        self, move: Move, source: Side, target: Side
    ) -> tuple[list[verify.TableDigest], list[verify.TableDigest]]:
        """Hold the tenant just long enough to see the target apply the source's last commit and
        take a snapshot on each side; then, with the tenant served again, read both snapshots."""
        tenant = await self.tenant(move.tenant_id)
        if tenant is None:
            raise MoveError(f"move {move.move_id}: tenant {move.tenant_id!r} is not in the catalog any more")
        reader = verify.reader_login(self.admin, self._tenant_login(tenant))
        async with contextlib.AsyncExitStack() as stack:
            src = await stack.enter_async_context(replication.opened(source, self.admin))
            dst = await stack.enter_async_context(replication.opened(target, self.admin))
            src_read = await stack.enter_async_context(replication.opened(source, reader))
            dst_read = await stack.enter_async_context(replication.opened(target, reader))
            source_snapshot, target_snapshot = verify.Snapshot(src_read), verify.Snapshot(dst_read)
            stack.push_async_callback(source_snapshot.close)
            stack.push_async_callback(target_snapshot.close)
            deadline = asyncio.get_running_loop().time() + self.settings.max_hold
            try:
                hold = await self.holds.request_hold(
                    move.tenant_id,
                    hold_reason(move),
                    timeout=self.settings.max_hold,
                    ttl=self.settings.max_hold + _HOLD_TTL_SLACK,
                )
            except ClusterError as exc:
                raise MoveRetry(move, f"verification hold: {exc}", self.settings.retry_interval) from exc
            try:
                marker = await replication.bump_marker(src, move.move_id)
                if not await replication.wait_for_marker(dst, move.move_id, marker, deadline):
                    raise MoveRetry(
                        move,
                        "verification: the target did not catch up within rebalance.max_hold"
                        f" ({self.settings.max_hold:g}s)",
                        self.settings.retry_interval,
                    )
                await source_snapshot.take()
                await target_snapshot.take()
            finally:
                await asyncio.shield(_release_quietly(self.holds, hold.hold_id))
            self._report(move, "verifying", move.bytes_copied)
            view = TenantView(tenant, move.source, "moving")
            tables = await verify.tenant_tables(src, view)
            # Both sides at once: each is read on its own server.
            return await asyncio.gather(
                verify.digests(source_snapshot, tables, move.tenant_id),
                verify.digests(target_snapshot, tables, move.tenant_id),
            )

    def _tenant_login(self, tenant: Tenant) -> Login | None:
        if tenant.isolation == "shared" or self.config.tenant.context_secret is None:
            return None
        return session_login(self.config, TenantView(tenant, "", ""))

    def _report(self, move: Move, activity: str, copied: int, lag: int | None = None) -> None:
        if self._on_progress is not None:
            self._on_progress(MoveProgress(move, activity, copied, lag))


async def _release_quietly(holds: HoldCoordinator, hold_id: str, conn: Any = None) -> None:
    try:
        await holds.release_hold(hold_id, conn=conn)
    except RouterError as exc:
        # It expires by itself; until then the tenant's new transactions wait.
        log.error("could not release hold %s (%s); it expires by itself", hold_id, exc.message)


async def _pause_if_asked(stage: str) -> None:
    wanted = os.environ.get(PAUSE_ENV, "")
    name, _, seconds = wanted.partition("=")
    if name == stage and seconds:
        log.warning("%s: pausing %ss after stage %s", PAUSE_ENV, seconds, stage)
        await asyncio.sleep(float(seconds))
