"""The `tenant-router` command line: parsing and wiring only, no logic.

tenant-router [--config FILE] serve | check | reload | catalog init | demo
tenant-router [--config FILE] tenants add|list|show|suspend|resume|remove ...
tenant-router [--config FILE] rls enable TABLE [--column COLUMN]
tenant-router [--config FILE] tenants export ID -o FILE | import ID FILE [--replace] | erase ID --confirm ID
tenant-router [--config FILE] tenants move ID --to SHARD
tenant-router [--config FILE] instances [--stale-after SECONDS]
tenant-router [--config FILE] rebalance plan [--json] | apply [--concurrency N] [--tenant ID] [--dry-run]
tenant-router [--config FILE] rebalance status [--json] | abort MOVE_ID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from router import native
from router.config import RouterConfig
from router.core.topology import Topology, load_both
from router.errors import ConfigError, ConfigProblem, RouterError

DEFAULT_CONFIG = "config/router.yaml"


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep the CLI usable without it
        return asyncio.run(coro)


def _check(args: argparse.Namespace, *, server_role: bool = False) -> tuple[RouterConfig, Topology]:
    """Validate router.yaml and shards.yaml and say so; a ConfigError lists every problem (exit 2).

    With `server_role`, then connect to every shard primary as server.user: a role row-level
    security does not apply to (superuser, BYPASSRLS) is a problem too; an unreachable shard or a
    weaker spot is a warning on stderr, so the check still works offline."""
    config, topology = load_both(args.config)
    print(f"{config.path}: ok")
    print(f"{topology.source}: ok ({len(topology.shards)} shards: {', '.join(topology.shards)})")
    if server_role:
        _check_server_role(config, topology)
    return config, topology


def _check_server_role(config: RouterConfig, topology: Topology) -> None:
    from router.admin.role_audit import audit_server_role
    from router.admin.shard_access import describe

    problems = []
    for audit in _run(audit_server_role(config, topology)):
        where = f"shard {audit.shard} ({describe(audit.address)})"
        for warning in audit.warnings:
            print(f"warning: {where}: {warning}", file=sys.stderr)
        problems += [ConfigProblem(str(config.path), "server.user", f"{where}: {p}") for p in audit.problems]
        if not audit.problems and not any(w.startswith("could not connect") for w in audit.warnings):
            print(f"{where}: server role {config.server.user}: ok (subject to row-level security)")
    if problems:
        raise ConfigError(problems)


def cmd_check(args: argparse.Namespace) -> int:
    config, topology = _check(args, server_role=True)
    _check_moves(config, topology)
    return 0


def _check_moves(config: RouterConfig, topology: Topology) -> None:
    """Per shard, whether tenants can move to and from it; what is missing is a warning, because a
    router that never moves tenants does not need it."""
    from router.admin.shard_access import describe
    from router.rebalance.prereq import all_move_prerequisites

    for shard, problems in _run(all_move_prerequisites(config, topology)).items():
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        if not problems:
            print(f"shard {shard} ({describe(topology.shards[shard].primary)}): moves: ok")


def cmd_reload(args: argparse.Namespace) -> int:
    from router.ops.reload import ReloadSignalError, signal_reload

    config, _topology = _check(args)
    try:
        pid = signal_reload(config)
    except ReloadSignalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"reload signalled to pid {pid}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config, topology = load_both(args.config)
    logging.getLogger().setLevel(config.log_level)
    logging.getLogger(__name__).info("%s", native.describe())
    if config.worker_count == 1:
        from router.app import serve

        _run(serve(config, topology))
        return 0
    from router.supervisor import Supervisor

    return int(_run(Supervisor(config, config.worker_count).run()))


def cmd_catalog_init(args: argparse.Namespace) -> int:
    from router.admin.tenant_admin import init_catalog

    config, _topology = load_both(args.config)
    _run(init_catalog(config))
    print(f"catalog schema {config.catalog.schema!r} is ready")
    return 0


def cmd_tenants(args: argparse.Namespace) -> int:
    from router.admin import tenant_admin as admin

    config, topology = load_both(args.config)
    action = args.tenants_action
    if action == "add":
        labels = json.loads(args.labels) if args.labels else None
        view = _run(admin.add_tenant(config, topology, args.id, args.isolation, args.shard, labels))
        print(view.describe())
    elif action == "list":
        for view in _run(admin.list_tenants(config, topology)):
            print(view.render())
    elif action == "show":
        print(_run(admin.show_tenant(config, topology, args.id)).describe())
    elif action == "suspend":
        print(_run(admin.suspend_tenant(config, topology, args.id)).render())
    elif action == "resume":
        print(_run(admin.resume_tenant(config, topology, args.id)).render())
    elif action == "remove":
        _run(admin.remove_tenant(config, topology, args.id, drop_data=args.drop_data))
        print(f"removed tenant {args.id}" + (" and its data" if args.drop_data else ""))
    elif action in ("export", "import", "erase"):
        return _tenants_lifecycle(args, config, topology)
    elif action == "move":
        return _move(config, topology, args.id, args.to)
    return 0


def _move(config: RouterConfig, topology: Topology, tenant_id: str, shard: str) -> int:
    import time

    from router.rebalance.apply import move_tenant
    from router.rebalance.progress import ProgressBoard, TerminalProgress

    printer = TerminalProgress(ProgressBoard(1, None, time.monotonic()))
    report = _run(move_tenant(config, topology, tenant_id, shard, on_progress=printer.progress, on_event=printer.event))
    printer.finish()
    return _moves_outcome(report)


def _moves_outcome(report: Any) -> int:
    """Print what a run of moves did; exit 1 if any failed or was rolled back."""
    for move in report.finished:
        held = f", held {move.hold_seconds * 1e3:.0f} ms" if move.hold_seconds is not None else ""
        print(
            f"moved tenant {move.tenant_id} ({move.isolation}) from {move.source} to {move.target}:"
            f" {move.rows_copied} rows, verified{held}"
        )
    for move in report.aborted:
        print(f"move of tenant {move.tenant_id} rolled back, it stays on {move.source}: {move.last_error}")
    for move, why in report.failed:
        print(f"move of tenant {move.tenant_id} stopped at {move.stage.replace('_', ' ')}: {why}", file=sys.stderr)
    for tenant in report.unpinned:
        print(f"cleared the reload pin of tenant {tenant} (its data is where shards.yaml places it)")
    return 0 if report.ok else 1


def _tenants_lifecycle(args: argparse.Namespace, config: RouterConfig, topology: Topology) -> int:
    from router.admin import tenant_lifecycle as lifecycle

    if args.tenants_action == "export":
        manifest = _run(lifecycle.export_tenant(config, topology, args.id, Path(args.output)))
        print("\n".join(manifest.summary()))
        print(f"written to {args.output}")
    elif args.tenants_action == "import":
        manifest = _run(lifecycle.import_tenant(config, topology, args.id, Path(args.file), replace=args.replace))
        print("\n".join(manifest.summary()))
        print(f"imported tenant {args.id}: row counts and checksums verified")
    else:
        deleted = _run(lifecycle.erase_tenant(config, topology, args.id, args.confirm))
        print("\n".join(lifecycle.erase_summary(args.id, deleted)))
    return 0


def cmd_rls(args: argparse.Namespace) -> int:
    from router.admin.rls_enable import enable_rls

    config, topology = load_both(args.config)
    if args.rls_action == "enable":
        for report in _run(enable_rls(config, topology, args.table, args.column)):
            print(report)
    return 0


def cmd_instances(args: argparse.Namespace) -> int:
    from router.catalog.cluster import DEFAULT_STALE_AFTER, list_instances

    config, _topology = load_both(args.config)
    stale_after = DEFAULT_STALE_AFTER if args.stale_after is None else args.stale_after
    instances = _run(list_instances(config.catalog.dsn, config.catalog.schema, stale_after=stale_after))
    for info in instances:
        print(info.render())
    if not instances:
        print("no router instances are registered")
    return 0


def cmd_rebalance_plan(args: argparse.Namespace) -> int:
    from router.rebalance.sizes import load_plan

    config, topology = load_both(args.config)
    plan = _run(load_plan(config, topology))
    print(plan.render_json() if args.json else plan.render_text())
    return 0


def cmd_rebalance_apply(args: argparse.Namespace) -> int:
    import time

    from router.rebalance.apply import apply_plan
    from router.rebalance.progress import ProgressBoard, TerminalProgress

    config, topology = load_both(args.config)
    board = ProgressBoard(0, None, time.monotonic())
    printer = TerminalProgress(board)

    def planned(plan: Any) -> None:
        print(plan.render_text())
        board.total = len(plan.moves)
        board.total_bytes = sum(m.bytes or 0 for m in plan.moves) or None

    report = _run(
        apply_plan(
            config,
            topology,
            concurrency=args.concurrency,
            tenant=args.tenant,
            dry_run=args.dry_run,
            on_progress=printer.progress,
            on_event=printer.event,
            on_plan=planned,
        )
    )
    if args.dry_run:
        print("dry run: nothing was changed")
        return 0
    printer.finish()
    outcome = _moves_outcome(report)
    print(
        f"{len(report.finished)} moved, {len(report.aborted)} rolled back, {len(report.failed)} stopped"
        f" in {report.seconds:.1f}s"
    )
    return outcome


def cmd_rebalance_status(args: argparse.Namespace) -> int:
    from router.rebalance.status import gather_status

    config, topology = load_both(args.config)
    report = _run(gather_status(config, topology))
    print(json.dumps(report.as_json(), indent=2) if args.json else report.render())
    return 0


def cmd_rebalance_abort(args: argparse.Namespace) -> int:
    from router.rebalance.apply import abort_move

    config, topology = load_both(args.config)
    move = _run(abort_move(config, topology, args.move_id))
    print(f"move {move.move_id} of tenant {move.tenant_id} rolled back; it stays on {move.source}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from router.demo import run_demo

    return run_demo(Path(args.dir), port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenant-router", description="A tenant-aware PostgreSQL router.")
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get("TENANT_ROUTER_CONFIG", DEFAULT_CONFIG),
        help=f"router.yaml (default: $TENANT_ROUTER_CONFIG or {DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the router").set_defaults(func=cmd_serve)
    commands.add_parser(
        "check", help="validate router.yaml and shards.yaml, and that row-level security applies to server.user"
    ).set_defaults(func=cmd_check)
    commands.add_parser(
        "reload", help="validate, then make the running router re-read shards.yaml (SIGHUP)"
    ).set_defaults(func=cmd_reload)
    catalog = commands.add_parser("catalog", help="the tenant catalog")
    catalog_actions = catalog.add_subparsers(dest="catalog_action", required=True)
    catalog_actions.add_parser("init", help="create or migrate the catalog schema").set_defaults(func=cmd_catalog_init)

    tenants = commands.add_parser("tenants", help="manage tenants")
    tenants.set_defaults(func=cmd_tenants)
    actions = tenants.add_subparsers(dest="tenants_action", required=True)
    add = actions.add_parser("add", help="register a tenant and provision its schema/database")
    add.add_argument("id")
    add.add_argument("--isolation", choices=["shared", "schema", "database"])
    add.add_argument("--shard", help="pin the tenant to this shard")
    add.add_argument("--labels", help='JSON object, e.g. \'{"region": "eu"}\'')
    actions.add_parser("list", help="list tenants with their shard")
    for name, text in (
        ("show", "show one tenant"),
        ("suspend", "refuse its connections"),
        ("resume", "serve it again"),
    ):
        actions.add_parser(name, help=text).add_argument("id")
    remove = actions.add_parser("remove", help="remove a tenant from the catalog")
    remove.add_argument("id")
    remove.add_argument("--drop-data", action="store_true", help="also drop its schema or database")
    export = actions.add_parser("export", help="write all of a tenant's rows to one archive (tar.gz)")
    export.add_argument("id")
    export.add_argument("-o", "--output", required=True, help="the archive to write")
    restore = actions.add_parser("import", help="load an export archive onto the tenant's shard, verified")
    restore.add_argument("id")
    restore.add_argument("file", help="an archive written by `tenants export`")
    restore.add_argument("--replace", action="store_true", help="delete the tenant's existing rows first")
    erase = actions.add_parser("erase", help="delete all of a tenant's data and its catalog entry, for good")
    erase.add_argument("id")
    erase.add_argument("--confirm", required=True, metavar="ID", help="the tenant id again")
    move = actions.add_parser("move", help="move a tenant and its data to another shard, online; it ends pinned there")
    move.add_argument("id")
    move.add_argument("--to", required=True, metavar="SHARD", help="the shard to move it to")

    rls = commands.add_parser("rls", help="row-level security on shared tables")
    rls.set_defaults(func=cmd_rls)
    rls_actions = rls.add_subparsers(dest="rls_action", required=True)
    enable = rls_actions.add_parser(
        "enable", help="protect TABLE on every shard: only the rows of the tenant the router entered (uses admin)"
    )
    enable.add_argument("table", help="the shared table, optionally schema-qualified")
    enable.add_argument("--column", default="tenant_id", help="its tenant id column (default tenant_id)")

    instances = commands.add_parser("instances", help="list router instances registered in the catalog, live and stale")
    instances.add_argument(
        "--stale-after",
        type=float,
        help="seconds without a heartbeat after which an instance counts as stale (default 5)",
    )
    instances.set_defaults(func=cmd_instances)

    # Each rebalance action sets its own func.
    rebalance = commands.add_parser("rebalance", help="move tenants, with their data, to where shards.yaml places them")
    rebalance_actions = rebalance.add_subparsers(dest="rebalance_action", required=True)
    plan = rebalance_actions.add_parser(
        "plan", help="print every tenant whose data is not where shards.yaml places it, with sizes; changes nothing"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON, for tools")
    plan.set_defaults(func=cmd_rebalance_plan)
    apply = rebalance_actions.add_parser(
        "apply", help="carry out the plan online, with a progress bar; resumes moves an earlier run left"
    )
    apply.add_argument("--concurrency", type=int, default=1, metavar="N", help="moves at once (default 1)")
    apply.add_argument("--tenant", metavar="ID", help="only this tenant's move")
    apply.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    apply.set_defaults(func=cmd_rebalance_apply)
    status = rebalance_actions.add_parser(
        "status", help="moves in progress, the last ones that ended, and anything left behind on the shards"
    )
    status.add_argument("--json", action="store_true", help="as JSON, for tools")
    status.set_defaults(func=cmd_rebalance_status)
    abort = rebalance_actions.add_parser("abort", help="roll back a move that has not switched yet")
    abort.add_argument("move_id", type=int, metavar="MOVE_ID")
    abort.set_defaults(func=cmd_rebalance_abort)

    demo = commands.add_parser("demo", help="start local PostgreSQL shards, a catalog and the router")
    demo.add_argument("--dir", default=".demo", help="where the demo keeps its clusters (default .demo)")
    demo.add_argument("--port", type=int, default=6432, help="router port (default 6432)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found; nothing was started", file=sys.stderr)
        return 2
    except RouterError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
