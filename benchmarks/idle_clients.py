"""Memory per idle client: 10 000 logged-in, idle client connections held on one router instance
while pgbench runs through the same instance.

Owns: a router process per worker count (trust auth, so 10 000 logins cost no SCRAM rounds), the
raw-socket clients (a StartupMessage for `app.bench`, read until ReadyForQuery, then nothing), the
router's resident memory from /proc (VmRSS of the supervisor and every worker, summed) before and
after the clients log in, and a pgbench -S run through the same router with and without them.

Must not: speak anything but the startup exchange and one probe query on the idle sockets, or leave
a socket or a router behind.

    python -m benchmarks.idle_clients [--clients 10000] [--workers 1,2] [--duration 10] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # `python benchmarks/idle_clients.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    FAILED_LINE,
    PGBENCH_GRACE,
    QUIET_LOAD,
    TPS_LINE,
    BenchError,
    Target,
    Workspace,
    error_lines,
    find_pgbouncer,
    load_average,
    machine_info,
    number,
    pgbench,
    raise_nofile,
    seed_catalog,
    start_router,
    wait_until_quiet,
    write_router_config,
)
from router.protocol.pg.framing import read_header
from router.protocol.pg.frontend import query
from router.protocol.pg.startup import build_startup_message
from router.testing.pgcluster import HOST

BAR_KIB: Final = 20.0
LOGIN_TIMEOUT: Final = 30.0
LOGIN_CONCURRENCY: Final = 200  # logins in flight at once (the listen backlog is 4096)
PROBE_SAMPLE: Final = 50  # idle clients that run one query after the load, to show they still work
SETTLE: Final = 2.0  # seconds between the last login and the memory reading
PGBENCH_CLIENTS: Final = 16


class LoginFailed(Exception):
    pass


@dataclass
class IdleResult:
    """One router configuration holding `requested` idle clients."""

    workers: int
    requested: int
    opened: int = 0
    login_seconds: float | None = None
    login_errors: list[str] = field(default_factory=list)
    rss_before_kib: dict[int, int] = field(default_factory=dict)  # pid -> VmRSS, supervisor and workers
    rss_idle_kib: dict[int, int] = field(default_factory=dict)
    rss_loaded_kib: dict[int, int] = field(default_factory=dict)
    rss_closed_kib: dict[int, int] = field(default_factory=dict)
    baseline_tps: float | None = None  # pgbench through the same router before the idle clients
    loaded_tps: float | None = None  # ...and while they are held
    pgbench_errors: list[str] = field(default_factory=list)
    still_open: int | None = None  # idle sockets the router had not closed after the load
    probes_ok: int | None = None
    probes: int = 0
    probe_errors: list[str] = field(default_factory=list)
    router_alive: bool = True
    # Kernel TCP buffer memory (/proc/net/sockstat "mem", system-wide, both ends of every socket):
    # not part of any process's RSS, so reported beside it.
    tcp_mem_before_kib: int | None = None
    tcp_mem_idle_kib: int | None = None

    @property
    def per_client_kib(self) -> float | None:
        if not self.opened or not self.rss_before_kib or not self.rss_idle_kib:
            return None
        return (sum(self.rss_idle_kib.values()) - sum(self.rss_before_kib.values())) / self.opened

    @property
    def holds(self) -> bool:
        per = self.per_client_kib
        return (
            per is not None
            and per < BAR_KIB
            and self.opened == self.requested
            and not self.pgbench_errors
            and self.loaded_tps is not None
            and self.still_open == self.opened
            and self.router_alive
        )


# --- the clients ---------------------------------------------------------------------------------


def _error_text(body: bytes) -> str:
    """`SEVERITY SQLSTATE: message` of an ErrorResponse body."""
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '?????')}: {fields.get('M', '')}"


async def _read_until_ready(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Read messages until ReadyForQuery; raise LoginFailed on ErrorResponse or an auth request."""
    buf = bytearray()
    while True:
        header = read_header(buf, 0)
        if header is not None and len(buf) >= header[1]:
            mtype, size = header
            body = bytes(buf[5:size])
            del buf[:size]
            if mtype == ord("E"):
                raise LoginFailed(_error_text(body))
            if mtype == ord("R") and body[:4] != b"\x00\x00\x00\x00":
                raise LoginFailed(f"the router asked for authentication (code {int.from_bytes(body[:4], 'big')})")
            if mtype == ord("Z"):
                return
            continue
        chunk = await loop.sock_recv(sock, 8192)
        if not chunk:
            raise LoginFailed("connection closed by the router")
        buf += chunk


async def _login(port: int, startup: bytes, gate: asyncio.Semaphore) -> socket.socket | str:
    loop = asyncio.get_running_loop()
    async with gate:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(LOGIN_TIMEOUT):
                await loop.sock_connect(sock, (HOST, port))
                await loop.sock_sendall(sock, startup)
                await _read_until_ready(loop, sock)
        except (OSError, TimeoutError, LoginFailed) as exc:
            sock.close()
            return f"{type(exc).__name__}: {exc}" if not isinstance(exc, LoginFailed) else str(exc)
        return sock


async def open_clients(target: Target, count: int) -> tuple[list[socket.socket], list[str], float]:
    """`count` logged-in idle sockets, the distinct login errors, and the seconds it all took."""
    startup = build_startup_message({"user": target.user, "database": target.dbname, "application_name": "idle"})
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)
    started = time.monotonic()
    outcomes = await asyncio.gather(*(_login(target.port, startup, gate) for _ in range(count)))
    elapsed = time.monotonic() - started
    sockets = [o for o in outcomes if isinstance(o, socket.socket)]
    errors = Counter(o for o in outcomes if isinstance(o, str))
    return sockets, [f"{text}  (x{n})" for text, n in errors.most_common(6)], elapsed


def count_open(sockets: list[socket.socket]) -> int:
    """Sockets the router has neither closed nor written to since login (an idle client gets nothing)."""
    still = 0
    for sock in sockets:
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            still += 1  # nothing to read and not closed: idle, as it should be
        except OSError:
            pass  # reset by the router
        # otherwise b"" (closed by the router) or an unsolicited message (an error before a close)
    return still


async def probe(sockets: list[socket.socket]) -> tuple[int, list[str]]:
    """One `SELECT 1` on each of `sockets`, in turn: how many answered cleanly, and the distinct errors."""
    loop = asyncio.get_running_loop()
    ok, errors = 0, Counter[str]()
    message = query("SELECT 1")
    for sock in sockets:
        try:
            async with asyncio.timeout(10):
                await loop.sock_sendall(sock, message)
                await _read_until_ready(loop, sock)
            ok += 1
        except (OSError, TimeoutError, LoginFailed) as exc:
            errors[f"{type(exc).__name__}: {exc}"] += 1
    return ok, [f"{text}  (x{n})" for text, n in errors.most_common(3)]


def tcp_memory_kib() -> int | None:
    """The kernel's TCP buffer memory in KiB (system-wide), from /proc/net/sockstat."""
    try:
        with open("/proc/net/sockstat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("mem") + 1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        pass
    return None


# --- one router configuration --------------------------------------------------------------------


def _pgbench_tps(target: Target, duration: float, result: IdleResult) -> float | None:
    args = ["-S", "-n", "-T", f"{duration:g}", "-c", str(PGBENCH_CLIENTS), "-j", "2", "-M", "simple"]
    proc = pgbench(target, args, timeout=duration + PGBENCH_GRACE)
    tps = number(TPS_LINE, proc.stdout)
    failed = number(FAILED_LINE, proc.stdout)
    if proc.returncode != 0 or tps is None or failed:
        result.pgbench_errors += error_lines(proc) or [f"pgbench exit code {proc.returncode}, {failed} failed"]
        return None
    return tps


def measure(ws: Workspace, workers: int, clients: int, duration: float, pool_size: int) -> IdleResult:
    """Start a trust-auth router with `workers` workers, hold `clients` idle clients on it, stop it."""
    assert ws.env is not None
    name = f"idle-router-{workers}"
    pool = {"size": pool_size, "max_client_connections": clients + 1000}
    service, target = start_router(name, ws.dir / name, ws.env, workers=workers, pool=pool, auth_method="trust")
    ws.add(service)
    result = IdleResult(workers=workers, requested=clients)
    sockets: list[socket.socket] = []
    try:
        # The baseline run also fills the server pool, so pool memory is not counted per client.
        result.baseline_tps = _pgbench_tps(target, duration, result)
        time.sleep(1)
        result.rss_before_kib = service.rss_kib()
        result.tcp_mem_before_kib = tcp_memory_kib()
        sockets, result.login_errors, result.login_seconds = asyncio.run(open_clients(target, clients))
        result.opened = len(sockets)
        print(
            f"  {name}: {result.opened}/{clients} idle clients logged in in {result.login_seconds:.1f}s",
            flush=True,
        )
        time.sleep(SETTLE)
        result.rss_idle_kib = service.rss_kib()
        result.tcp_mem_idle_kib = tcp_memory_kib()
        result.loaded_tps = _pgbench_tps(target, duration, result)
        result.rss_loaded_kib = service.rss_kib()
        result.still_open = count_open(sockets)
        sample = sockets[:: max(1, len(sockets) // PROBE_SAMPLE)][:PROBE_SAMPLE]
        result.probes = len(sample)
        result.probes_ok, result.probe_errors = asyncio.run(probe(sample))
    finally:
        for sock in sockets:
            sock.close()
        result.router_alive = service.alive()
        if result.router_alive:
            time.sleep(SETTLE)
            result.rss_closed_kib = service.rss_kib()
        else:
            print(f"  {name} exited (code {service.process.returncode}):\n{service.tail()}", flush=True)
        ws.stop(service)
    return result


# --- the report ----------------------------------------------------------------------------------


def _mib(sizes: dict[int, int]) -> str:
    return f"{sum(sizes.values()) / 1024:,.1f}" if sizes else "-"


def _delta(before: int | None, after: int | None) -> str:
    return "-" if before is None or after is None else f"{after - before:+,}"


def _tps(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "FAILED"


def table(results: list[IdleResult]) -> str:
    rows = [
        [
            "workers",
            "idle clients",
            "logins/s",
            "RSS before MiB",
            "RSS idle MiB",
            "KiB per idle client",
            "RSS under load MiB",
            "RSS after close MiB",
            "pgbench tps without",
            "pgbench tps with",
            "still open",
            "probe SELECT 1",
            "kernel TCP KiB",
        ]
    ]
    for r in results:
        per = r.per_client_kib
        logins = f"{r.opened / r.login_seconds:,.0f}" if r.login_seconds else "-"
        rows.append(
            [
                str(r.workers),
                f"{r.opened:,}/{r.requested:,}",
                logins,
                _mib(r.rss_before_kib),
                _mib(r.rss_idle_kib),
                f"{per:.1f}" if per is not None else "-",
                _mib(r.rss_loaded_kib),
                _mib(r.rss_closed_kib),
                _tps(r.baseline_tps),
                _tps(r.loaded_tps),
                "-" if r.still_open is None else f"{r.still_open:,}",
                "-" if r.probes_ok is None else f"{r.probes_ok}/{r.probes}",
                _delta(r.tcp_mem_before_kib, r.tcp_mem_idle_kib),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def problems(results: list[IdleResult]) -> list[str]:
    lines = []
    for r in results:
        for label, errors in (("login", r.login_errors), ("pgbench", r.pgbench_errors), ("probe", r.probe_errors)):
            lines += [f"workers={r.workers} {label}: {e}" for e in errors]
        if not r.router_alive:
            lines.append(f"workers={r.workers}: the router exited during the measurement")
    return lines


def verdicts(results: list[IdleResult]) -> list[tuple[bool | None, str]]:
    out: list[tuple[bool | None, str]] = []
    for r in results:
        per = r.per_client_kib
        bar = f"{r.requested:,} idle clients cost < {BAR_KIB:g} KiB each (workers={r.workers})"
        if per is None:
            out.append((None, f"bar ({bar}): NOT EVALUATED (no clients opened or no memory reading)"))
            continue
        detail = (
            f"{per:.1f} KiB per client; {r.opened:,}/{r.requested:,} logged in; pgbench alongside "
            + (f"{r.loaded_tps:,.0f} tps, no errors" if r.loaded_tps is not None and not r.pgbench_errors else "FAILED")
            + f"; {r.still_open}/{r.opened} still open afterwards"
        )
        out.append((r.holds, f"bar ({bar}): {'HOLDS' if r.holds else 'DOES NOT HOLD'}: {detail}"))
    return out


def report(results: list[IdleResult]) -> None:
    if not results:
        return
    print(
        f"\n## Idle clients: {results[0].requested:,} logged-in idle clients on one router, "
        f"pgbench -S -c {PGBENCH_CLIENTS} alongside\n"
    )
    print("RSS: VmRSS of the router's supervisor and workers, summed. KiB per idle client = (idle - before) / clients.")
    print(
        "pgbench tps without / with: the same pgbench run before the idle clients logged in and while they are held.\n"
    )
    print(table(results))
    for line in problems(results):
        print(f"  {line}")


def run(ws: Workspace, worker_counts: list[int], clients: int, duration: float, pool_size: int) -> list[IdleResult]:
    limit = raise_nofile(2 * clients + 4096)
    if limit < clients + 1024:
        raise BenchError(f"open-file limit is {limit}; {clients} idle clients need more (raise it with ulimit -n)")
    print(
        f"\nidle clients: {clients:,} per router (trust auth), pgbench -S -c {PGBENCH_CLIENTS} -T {duration:g} "
        f"alongside; open-file limit {limit}",
        flush=True,
    )
    return [measure(ws, workers, clients, duration, pool_size) for workers in worker_counts]


def _worker_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(c < 1 for c in counts):
        raise ValueError("--workers takes positive integers")
    return list(dict.fromkeys(counts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000, help="idle clients per router (%(default)s)")
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}", help="router worker counts (%(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per pgbench run (%(default)s)")
    parser.add_argument("--pool-size", type=int, default=20, help="router server pool size, instance total (20)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs) afterwards")
    args = parser.parse_args(argv)
    try:
        counts = _worker_counts(args.workers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ws = Workspace(keep=args.keep)
    code = 1
    results: list[IdleResult] = []
    try:
        wait_until_quiet(QUIET_LOAD, 180)
        print("machine: " + ", ".join(f"{k} {v}" for k, v in machine_info(find_pgbouncer()).items()), flush=True)
        env = ws.start_environment()
        ws.init_pgbench(1)
        config_path, _port = write_router_config(ws.dir / "seed", env, workers=1, pool={}, auth_method="trust")
        asyncio.run(seed_catalog(config_path, env))
        results = run(ws, counts, args.clients, args.duration, args.pool_size)
        report(results)
        print(f"\nload average at end: {load_average()}")
        checks = verdicts(results)
        for _holds, line in checks:
            print(line)
        code = 0 if all(r.router_alive and r.loaded_tps is not None for r in results) else 1
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        code = 130
    except Exception as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        ws.dump_logs()
    finally:
        code = ws.close() or code
    if args.json:
        payload: dict[str, Any] = {"idle_clients": [asdict(r) | {"per_client_kib": r.per_client_kib} for r in results]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
