"""The supervisor: runs the router as N worker processes that share the listen port.

It starts the workers (spawned, so each is a clean interpreter), restarts one that dies, passes
SIGHUP on, stops them all on SIGINT/SIGTERM, and serves the HTTP endpoint for the instance
(router/ops/http_workers.py: every worker's metrics summed, asked over its private unix socket,
exact, not sampled; the API passed on to the workers). It holds no routing logic and opens no
database connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from multiprocessing.process import BaseProcess
from pathlib import Path

from router.config import RouterConfig
from router.ops.http import start_http
from router.ops.http_workers import Workers, build_supervisor_app

log = logging.getLogger(__name__)

RESTART_DELAY = 0.5


def worker_main(config_path: str, index: int, count: int, run_dir: str, log_level: str) -> None:
    """Entry point of one worker process."""
    import uvloop

    from router.app import WorkerIdentity, serve
    from router.core.topology import load_both

    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s worker{index} %(name)s: %(message)s")
    config, topology = load_both(config_path)
    parent = os.getppid()

    async def main() -> None:
        serving = asyncio.get_running_loop().create_task(
            serve(config, topology, WorkerIdentity(index, count, Path(run_dir)))
        )
        # Leave with the supervisor, whatever killed it.
        while not serving.done():
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.warning("supervisor is gone; worker %d exits", index)
                os.kill(os.getpid(), signal.SIGTERM)
        await serving

    uvloop.run(main())


class Supervisor:
    def __init__(self, config: RouterConfig, count: int) -> None:
        self.config = config
        self.count = count
        self.run_dir = Path(tempfile.mkdtemp(prefix="tenant-router-"))
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}
        self._stopping = asyncio.Event()
        self.restarts = 0

    def _spawn(self, index: int) -> None:
        for suffix in ("cancel", "metrics"):
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / f"worker-{index}.{suffix}").unlink()
        process = self._context.Process(
            target=worker_main,
            args=(str(self.config.path), index, self.count, str(self.run_dir), self.config.log_level),
            name=f"tenant-router-worker-{index}",
            daemon=False,
        )
        # The worker is born with SIGHUP blocked (the mask survives spawn's exec): a reload forwarded
        # before its handler is in place stays pending, for serve() to unblock, instead of killing it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._workers[index] = process
        log.info("started worker %d (pid %s)", index, process.pid)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        for index in range(self.count):
            self._spawn(index)
        from router.ops.reload import pid_file_path, remove_pid_file, write_pid_file

        pid_file = pid_file_path(self.config)  # the process `tenant-router reload` signals
        write_pid_file(pid_file)
        http = None
        if self.config.http.enabled:
            sockets = [self.run_dir / f"worker-{index}.metrics" for index in range(self.count)]
            app = build_supervisor_app(Workers(sockets), self.config.http.tokens, lambda: self.restarts)
            http = await start_http(app, self.config.http.host, self.config.http.port)
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=RESTART_DELAY)
                for index, process in list(self._workers.items()):
                    if not process.is_alive() and not self._stopping.is_set():
                        log.error(
                            "worker %d (pid %s) died with exit code %s; restarting it",
                            index,
                            process.pid,
                            process.exitcode,
                        )
                        self.restarts += 1
                        self._spawn(index)
        finally:
            if http is not None:
                await http.close()
            await self._stop_workers()
            remove_pid_file(pid_file)
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 0

    def _forward_hup(self) -> None:
        for process in self._workers.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGHUP)

    async def _stop_workers(self) -> None:
        for process in self._workers.values():
            if process.is_alive():
                process.terminate()
        deadline = asyncio.get_running_loop().time() + 10
        for process in self._workers.values():
            while process.is_alive() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            if process.is_alive():
                process.kill()
            process.join(1)

    @property
    def worker_pids(self) -> dict[int, int | None]:
        return {index: process.pid for index, process in self._workers.items()}
