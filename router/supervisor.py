"""The supervisor: runs the router as N worker processes that share the listen port.

It starts the workers (spawned, so each is a clean interpreter), restarts one that dies, passes
SIGHUP on, stops them all on SIGINT/SIGTERM, and serves the HTTP endpoint with every worker's
metrics summed (it asks each worker over a private unix socket: exact, not sampled). It holds no
routing logic and opens no database connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from multiprocessing.process import BaseProcess
from pathlib import Path

from router.config import RouterConfig
from router.ops.http import NOT_FOUND, Response, get_only, json_response, merge_holds
from router.ops.metrics import merge_expositions

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
            http = await asyncio.start_server(get_only(self._route), self.config.http.host, self.config.http.port)
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
                http.close()
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

    async def _worker_text(self, index: int, resource: str = "/metrics") -> str | None:
        """What worker `index` answers on its private HTTP socket for `resource`; None if it does not."""
        path = self.run_dir / f"worker-{index}.metrics"
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_unix_connection(str(path))
                writer.write(f"GET {resource} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
                await writer.drain()
                raw = await reader.read()
                writer.close()
        except (OSError, TimeoutError):
            return None
        _head, _, body = raw.partition(b"\r\n\r\n")
        return body.decode()

    async def _route(self, path: str) -> Response:
        if path == "/holds":
            bodies = await asyncio.gather(*(self._worker_text(i, "/holds") for i in range(self.count)))
            return json_response(True, merge_holds(json.loads(b) for b in bodies if b is not None))
        texts = await asyncio.gather(*(self._worker_text(i) for i in range(self.count)))
        answered = [t for t in texts if t is not None]
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", merge_expositions(answered).encode()
        if path in ("/health", "/healthz"):
            healthy = len(answered) == self.count
            return json_response(
                healthy,
                {
                    "status": "ok" if healthy else "degraded",
                    "workers": self.count,
                    "workers_answering": len(answered),
                    "worker_restarts": self.restarts,
                },
            )
        return NOT_FOUND

    @property
    def worker_pids(self) -> dict[int, int | None]:
        return {index: process.pid for index, process in self._workers.items()}
